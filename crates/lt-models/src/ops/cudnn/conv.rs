//! Convolution forward, backward data and backward filter through cuDNN.
//!
//! For each shape and direction a [`ConvPlan`] holds the descriptors and cuDNN's candidate
//! algorithms (heuristics order; those cuDNN reports as usable, deterministic ones first, the
//! math type of the configured precision first). A launch that cuDNN refuses moves on to the next
//! candidate, and the one that worked is remembered.

use candle_core::{CudaStorage, Layout};
use cudarc::driver::DevicePtrMut;

use super::algos::{data_algo, filter_algo, fwd_algo, known, math_of, Candidate, RawPerf};
use super::{
    check, ints, mptr, one, two_to_one, with_ctx, zero, CResult, ConvDesc, Ctx, Dt, FilterDesc, TensorDesc,
};
use crate::ops::conv::ConvShape;
use crate::ops::elementwise::Nhwc;
use cudarc::cudnn::sys;

/// Which pass of the convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dir {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx` from `dy` and `w`.
    Data,
    /// `dw` from `x` and `dy`.
    Filter,
}

/// The arithmetic of a convolution: its element type and whether TF32 tensor-core math is
/// allowed for `f32` (bf16 always runs on the tensor cores, accumulating in `f32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Math {
    pub dt: Dt,
    pub tf32: bool,
}

impl Math {
    /// The arithmetic of `dt` under the current TF32 setting ([`crate::ops::set_cudnn_tf32`]).
    pub fn current(dt: Dt) -> Self {
        Self { dt, tf32: crate::ops::cudnn_tf32() }
    }

    /// Whether cuDNN may pick its tensor-core math; otherwise full FP32 (`CUDNN_FMA_MATH`).
    fn tensor_cores(self) -> bool {
        self.tf32 || self.dt == Dt::Bf16
    }
}

/// The cache key of a plan: shape, direction and arithmetic.
pub(crate) type Key = (ConvShape, Dir, Math);

/// Workspaces above this are not worth an algorithm.
const MAX_WORKSPACE: usize = 1 << 30;

/// Descriptors and candidate algorithms of one convolution pass.
pub(crate) struct ConvPlan {
    x: TensorDesc,
    y: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    candidates: Vec<Candidate>,
    /// The candidate that last worked.
    chosen: usize,
}

impl ConvPlan {
    fn new(handle: sys::cudnnHandle_t, s: &ConvShape, dir: Dir, math: Math) -> CResult<Self> {
        let x = TensorDesc::nhwc(Nhwc { n: s.n, h: s.h, w: s.w, c: s.cin }, math.dt)?;
        let y = TensorDesc::nhwc(Nhwc { n: s.n, h: s.oh(), w: s.ow(), c: s.cout }, math.dt)?;
        let w = FilterDesc::new()?;
        let [k_out, c_in, kh, kw] = ints([s.cout, s.cin, s.k, s.k])?;
        let nhwc = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
        // SAFETY: `w` is live. NHWC format: the filter's memory is [K, R, S, C] ("KRSC").
        check("cudnnSetFilter4dDescriptor", unsafe {
            sys::cudnnSetFilter4dDescriptor(w.0, math.dt.cudnn(), nhwc, k_out, c_in, kh, kw)
        })?;
        let conv = ConvDesc::new()?;
        let [pad, stride] = ints([s.pad, s.stride])?;
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        // Accumulation in f32 for both element types (bf16 data: cuDNN's "pseudo bf16" setup).
        let compute = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        // SAFETY: `conv` is live.
        check("cudnnSetConvolution2dDescriptor", unsafe {
            sys::cudnnSetConvolution2dDescriptor(conv.0, pad, pad, stride, stride, 1, 1, mode, compute)
        })?;
        let mut plan = Self { x, y, w, conv, candidates: Vec::new(), chosen: 0 };
        plan.set_math(if math.tensor_cores() {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        })?;
        plan.candidates = plan.query(handle, dir, math)?;
        tracing::debug!(
            "cuDNN {dir:?} {s:?} {math:?}: {}",
            plan.candidates
                .iter()
                .map(|c| format!("algo {} {:?} {:.3} ms {} B", c.algo, c.math, c.ms, c.workspace))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(plan)
    }

    fn set_math(&mut self, math: sys::cudnnMathType_t) -> CResult<()> {
        // SAFETY: the descriptor is live.
        check("cudnnSetConvolutionMathType", unsafe { sys::cudnnSetConvolutionMathType(self.conv.0, math) })
    }

    /// Fills `perf` with cuDNN's ranking of the algorithms of `dir`: timed (`measure`, cuDNN's
    /// `Find` calls, fastest first) or heuristic (`Get..._v7`).
    ///
    /// # Safety
    /// Live handle and descriptors; `perf` has room for `perf.len()` entries of the layout cuDNN
    /// writes (checked by the size assertions above).
    unsafe fn rank(
        &self,
        handle: sys::cudnnHandle_t,
        dir: Dir,
        measure: bool,
        perf: &mut [RawPerf],
        count: &mut i32,
    ) -> sys::cudnnStatus_t {
        let n = perf.len() as i32;
        let out = perf.as_mut_ptr();
        let (x, y, w, c) = (self.x.0, self.y.0, self.w.0, self.conv.0);
        // SAFETY: the caller's contract.
        unsafe {
            match (dir, measure) {
                (Dir::Forward, true) => {
                    sys::cudnnFindConvolutionForwardAlgorithm(handle, x, w, c, y, n, count, out.cast())
                }
                (Dir::Forward, false) => {
                    sys::cudnnGetConvolutionForwardAlgorithm_v7(handle, x, w, c, y, n, count, out.cast())
                }
                (Dir::Data, true) => {
                    sys::cudnnFindConvolutionBackwardDataAlgorithm(handle, w, y, c, x, n, count, out.cast())
                }
                (Dir::Data, false) => {
                    sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, w, y, c, x, n, count, out.cast())
                }
                (Dir::Filter, true) => {
                    sys::cudnnFindConvolutionBackwardFilterAlgorithm(handle, x, y, c, w, n, count, out.cast())
                }
                (Dir::Filter, false) => sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                    handle,
                    x,
                    y,
                    c,
                    w,
                    n,
                    count,
                    out.cast(),
                ),
            }
        }
    }

    /// cuDNN's usable algorithms for `dir`, best first: measured by running them (the default;
    /// see [`crate::ops::set_cudnn_measured_search`]), or cuDNN's heuristic ranking when
    /// measuring is off, fails or leaves none usable.
    fn query(&self, handle: sys::cudnnHandle_t, dir: Dir, math: Math) -> CResult<Vec<Candidate>> {
        if crate::ops::cudnn_measured_search() {
            match self.ranked(handle, dir, true, math) {
                Ok(found) if !found.is_empty() => return Ok(found),
                Ok(_) => {
                    tracing::debug!(
                        "cuDNN's timed {dir:?} search left no usable algorithm; taking its heuristic ranking"
                    )
                }
                Err(e) => {
                    tracing::debug!("cuDNN's timed {dir:?} search failed ({e}); taking its heuristic ranking")
                }
            }
        }
        let found = self.ranked(handle, dir, false, math)?;
        if found.is_empty() {
            candle_core::bail!("cuDNN offers no usable {dir:?} algorithm for this convolution");
        }
        Ok(found)
    }

    /// The usable algorithms of cuDNN's ranking for `dir` (timed when `measure`, see
    /// [`ConvPlan::rank`]), best first: those that ran, within [`MAX_WORKSPACE`], of a known
    /// algorithm and math; the preferred math first (any with tensor cores allowed, else exact
    /// FMA), then the deterministic ones, each group in cuDNN's order. Possibly none.
    fn ranked(
        &self,
        handle: sys::cudnnHandle_t,
        dir: Dir,
        measure: bool,
        math: Math,
    ) -> CResult<Vec<Candidate>> {
        const N: usize = 16;
        let mut perf = [RawPerf::default(); N];
        let mut count = 0i32;
        // SAFETY: the plan's handle and descriptors are live and `perf` has room for N entries;
        // when measuring, cuDNN allocates and frees its own trial buffers.
        let status = unsafe { self.rank(handle, dir, measure, &mut perf, &mut count) };
        let call =
            if measure { "cudnnFindConvolution*Algorithm" } else { "cudnnGetConvolution*Algorithm_v7" };
        check(call, status)?;
        let exact = sys::cudnnMathType_t::CUDNN_FMA_MATH as u32;
        let tensor_cores = math.tensor_cores();
        let mut found: Vec<(bool, bool, Candidate)> = perf[..(count.max(0) as usize).min(N)]
            .iter()
            .filter(|p| p.status == 0 && p.memory <= MAX_WORKSPACE && known(dir, p.algo))
            .filter_map(|p| {
                let math = math_of(p.math_type)?;
                let preferred_math = tensor_cores || p.math_type == exact;
                Some((
                    preferred_math,
                    p.determinism == 1,
                    Candidate { algo: p.algo, workspace: p.memory, math, ms: p.time },
                ))
            })
            .collect();
        // Stable: cuDNN's order within each group.
        found.sort_by_key(|&(m, d, _)| (!m, !d));
        Ok(found.into_iter().map(|(_, _, c)| c).collect())
    }
}

impl Ctx {
    /// The plan of `key`, built on first use.
    fn plan(&mut self, key: Key) -> CResult<&mut ConvPlan> {
        if !self.convs.contains_key(&key) {
            let plan = ConvPlan::new(self.handle.0, &key.0, key.1, key.2)?;
            self.convs.insert(key, plan);
        }
        self.convs.get_mut(&key).ok_or_else(|| candle_core::Error::Msg("cuDNN: convolution plan".into()))
    }
}

/// Whether cuDNN offers algorithms for convolution `s` on `dev` with elements of the type of
/// `x` (`f32` or `bf16`; the current TF32 setting): forward, and when `backward` also for the
/// input's and the filter's gradients (inference asks for the forward pass alone, so that
/// cuDNN's timed search runs once per shape, not three times); when it does not, the caller falls
/// back to candle's convolution.
pub(crate) fn usable(
    dev: &candle_core::cuda_backend::CudaDevice,
    s: &ConvShape,
    x: candle_core::DType,
    backward: bool,
) -> bool {
    let Some(dt) = Dt::of_dtype(x) else { return false };
    let math = Math::current(dt);
    let checked = with_ctx(dev, |ctx| {
        if ctx.refused.contains(&(*s, math)) {
            return Ok(false);
        }
        let dirs: &[Dir] = if backward { &[Dir::Forward, Dir::Data, Dir::Filter] } else { &[Dir::Forward] };
        for &dir in dirs {
            if let Err(e) = ctx.plan((*s, dir, math)) {
                if ctx.refused.insert((*s, math)) {
                    tracing::warn!(
                        "cuDNN refused the convolution {s:?} {math:?}, no channels-last algorithm ({e}); using candle's convolution"
                    );
                }
                return Ok(false);
            }
        }
        Ok(true)
    });
    checked.unwrap_or(false)
}

/// Device pointers of one launch: two inputs and the output, in the order of the direction's
/// arguments (forward `x, w -> y`; data `dy, w -> dx`; filter `x, dy -> dw`).
struct Args {
    a: *const std::ffi::c_void,
    b: *const std::ffi::c_void,
    out: *mut std::ffi::c_void,
}

impl Ctx {
    /// Runs one convolution pass, trying cuDNN's candidates from the one that last worked.
    fn convolve(&mut self, s: &ConvShape, dir: Dir, dt: Dt, args: &Args) -> CResult<()> {
        let math = Math::current(dt);
        let key = (*s, dir, math);
        let (n, start) = {
            let plan = self.plan(key)?;
            (plan.candidates.len(), plan.chosen)
        };
        let handle = self.handle.0;
        let mut refused = Vec::new();
        // Whether a candidate was passed over for its workspace (memory short this once): the one
        // that runs instead is not kept as the plan's choice, so that the next call asks for the
        // better one again.
        let mut short = false;
        for i in (0..n).map(|i| (start + i) % n) {
            let cand = self.convs[&key].candidates[i];
            // A workspace that cannot be had (out of memory): the next candidate may need less.
            if let Err(e) = self.ensure_workspace(cand.workspace) {
                refused
                    .push(format!("algorithm {} (a workspace of {} bytes: {e})", cand.algo, cand.workspace));
                short = true;
                continue;
            }
            let (Some(ws), Some(plan)) = (self.workspace.as_mut(), self.convs.get_mut(&key)) else {
                candle_core::bail!("cuDNN: workspace or plan missing");
            };
            let ws_bytes = ws.len();
            let (ws_ptr, _ws_guard) = ws.device_ptr_mut(&self.stream);
            plan.set_math(if math.tensor_cores() {
                cand.math
            } else {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            })?;
            // SAFETY: the descriptors describe the buffers behind `args` (lengths checked by the
            // callers against the shape the plan was built from); the workspace holds at least
            // the candidate's `workspace` bytes; all live until the call has been enqueued.
            let status = unsafe { launch(handle, plan, dir, cand.algo, args, (mptr(ws_ptr), ws_bytes)) };
            if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
                if !short {
                    plan.chosen = i;
                }
                return Ok(());
            }
            refused.push(format!("algorithm {} ({status:?})", cand.algo));
        }
        candle_core::bail!("cuDNN refused every {dir:?} algorithm for {s:?}: {}", refused.join(", "))
    }
}

/// Enqueues one convolution pass with algorithm `algo` of `dir`.
///
/// # Safety
/// As for cuDNN's `cudnnConvolution{Forward,BackwardData,BackwardFilter}`: live descriptors that
/// describe the device buffers behind `args`, and a workspace of `ws.1` bytes at `ws.0`.
unsafe fn launch(
    handle: sys::cudnnHandle_t,
    p: &ConvPlan,
    dir: Dir,
    algo: u32,
    args: &Args,
    ws: (*mut std::ffi::c_void, usize),
) -> sys::cudnnStatus_t {
    let bad = sys::cudnnStatus_t::CUDNN_STATUS_BAD_PARAM;
    // SAFETY: the caller's contract.
    unsafe {
        match dir {
            Dir::Forward => match fwd_algo(algo) {
                Some(a) => sys::cudnnConvolutionForward(
                    handle,
                    one(),
                    p.x.0,
                    args.a,
                    p.w.0,
                    args.b,
                    p.conv.0,
                    a,
                    ws.0,
                    ws.1,
                    zero(),
                    p.y.0,
                    args.out,
                ),
                None => bad,
            },
            Dir::Data => match data_algo(algo) {
                Some(a) => sys::cudnnConvolutionBackwardData(
                    handle,
                    one(),
                    p.w.0,
                    args.b,
                    p.y.0,
                    args.a,
                    p.conv.0,
                    a,
                    ws.0,
                    ws.1,
                    zero(),
                    p.x.0,
                    args.out,
                ),
                None => bad,
            },
            Dir::Filter => match filter_algo(algo) {
                Some(a) => sys::cudnnConvolutionBackwardFilter(
                    handle,
                    one(),
                    p.x.0,
                    args.a,
                    p.y.0,
                    args.b,
                    p.conv.0,
                    a,
                    ws.0,
                    ws.1,
                    zero(),
                    p.w.0,
                    args.out,
                ),
                None => bad,
            },
        }
    }
}

/// Runs `dir` with inputs `a`, `b` of `a_len`, `b_len` values into a new buffer of `out_len`.
fn run(
    dir: Dir,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    lens: (usize, usize, usize),
    s: &ConvShape,
) -> CResult<CudaStorage> {
    let what = ["convolution argument", "convolution argument"];
    two_to_one(a, b, lens, what, |ctx, dt, a, b, out| ctx.convolve(s, dir, dt, &Args { a, b, out }))
}

/// `y = conv(x, w)` for NHWC `x` and a channels-last `[C_out, k, k, C_in]` filter `w` (both
/// `f32` or both `bf16`; the output of the same type).
pub(crate) fn forward(
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    s: &ConvShape,
) -> CResult<CudaStorage> {
    run(Dir::Forward, x, w, (s.input_len(), s.weight_len(), s.output_len()), s)
}

/// `dx` from `dy` and the channels-last filter `w`.
pub(crate) fn backward_data(
    dy: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    s: &ConvShape,
) -> CResult<CudaStorage> {
    run(Dir::Data, dy, w, (s.output_len(), s.weight_len(), s.input_len()), s)
}

/// `dw` (channels-last `[C_out, k, k, C_in]`) from `x` and `dy`.
pub(crate) fn backward_filter(
    x: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
    s: &ConvShape,
) -> CResult<CudaStorage> {
    run(Dir::Filter, x, dy, (s.input_len(), s.output_len(), s.weight_len()), s)
}
