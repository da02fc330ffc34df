//! Register-blocked micro-kernels for the convolution ops (AVX-512, AVX2 + FMA, or portable),
//! chosen once per process from the CPU's features.
//!
//! Every convolution pass of the project reduces to one of two shapes:
//!
//! - **gather GEMM** ([`gather_block`]): an output block of `MR <= 6` rows by `NR = 8 * nb`
//!   columns accumulates, over a list of *taps*, the products of a scalar from each row's own
//!   source pointer with a packed row of weights. Convolution forward (rows = output pixels,
//!   columns = output channels, taps = kernel positions, sources = input pixels) and the input
//!   gradient (rows = input pixels, columns = input channels, sources = output-gradient pixels)
//!   both have this shape, with no im2col buffer: a tap whose source falls in the padding points
//!   at a zero row. On the way out a block can add a per-column bias and a per-row residual and
//!   apply ReLU ([`Epilogue`]): the evaluation pass folds batch norm and the residual add into
//!   the convolution that precedes them.
//! - **outer-product accumulation** ([`outer_block`]): `MR` consecutive input channels by `NR`
//!   output channels accumulate `x[p, c..c+MR]^T * dy[p, co..co+NR]` over a run of pixels: the
//!   weight gradient.
//!
//! The SIMD kernel sets ([`simd`]) share one body, written once as a macro over the vector type:
//! the AVX2 set (8 lanes, `ymm`) and the AVX-512 set (16 lanes, `zmm`, and 32-column blocks,
//! `nb = 4`) differ only in their seven vector primitives. The accumulator block stays in
//! registers. The portable kernels ([`portable`]) compute the same sums in plain Rust: the
//! fallback, and the reference every SIMD set is checked against ([`check::agrees_with_portable`],
//! which also runs before the AVX-512 set is first used: a set that disagrees is not selected).
//! `LT_KERNELS=portable|avx2|avx512` forces a set (when the CPU has it).

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

#[macro_use]
mod blocks;
pub mod check;
pub mod portable;
pub(crate) mod simd;
#[cfg(test)]
mod tests;

/// Maximum rows of a block.
pub const MR_MAX: usize = 6;
/// Maximum columns of a block (`8 * nb` for the widest `nb`).
pub const NR_MAX: usize = 32;

/// One tap of a gather-GEMM block: a source pointer per row and the tap's first weight row.
#[derive(Clone, Copy, Debug)]
pub struct Tap {
    /// `MR` source pointers, each to `depth` contiguous floats (a zero row for padding).
    pub src: [*const f32; MR_MAX],
    /// Index of the tap's first row in the packed weights (rows of `NR` floats).
    pub w: usize,
}

/// What a gather-GEMM block does to its sums on the way out, in this order: add the existing
/// output (`GatherArgs::accumulate`), add `bias`, add the `residual` row, apply ReLU.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue {
    /// `NR` floats added to every row (null: none).
    pub bias: *const f32,
    /// Per row, `NR` floats added to it (`None`: none).
    pub residual: Option<[*const f32; MR_MAX]>,
    /// `max(v, 0)` last.
    pub relu: bool,
}

impl Epilogue {
    /// Stores the sums as they are.
    pub const NONE: Epilogue = Epilogue { bias: std::ptr::null(), residual: None, relu: false };
}

/// Arguments of one gather-GEMM block.
pub struct GatherArgs<'a> {
    /// The taps to accumulate over.
    pub taps: &'a [Tap],
    /// Scalars per source (and weight rows per tap).
    pub depth: usize,
    /// Packed weights of this column block: rows of `NR` floats.
    pub packed: *const f32,
    /// `MR` output pointers, each to `NR` contiguous floats.
    pub out: [*mut f32; MR_MAX],
    /// Add to the existing output instead of overwriting it.
    pub accumulate: bool,
    /// Bias, residual and ReLU applied on the way out.
    pub epilogue: Epilogue,
}

/// One run of pixels for [`outer_block`]: offsets of its first `x` and `dy` values and its length.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Offset of the run's first `x` value from [`OuterArgs::x`].
    pub x: usize,
    /// Offset of the run's first `dy` value from [`OuterArgs::dy`].
    pub dy: usize,
    /// Pixels in the run.
    pub count: usize,
}

/// Arguments of one outer-product accumulation block.
pub struct OuterArgs<'a> {
    /// Base of the `x` values (channel `c` of the block's first row added by the caller).
    pub x: *const f32,
    /// Distance between consecutive pixels of a run in `x`.
    pub x_stride: usize,
    /// Base of the `dy` values (output channel `co` of the block's first column added).
    pub dy: *const f32,
    /// Distance between consecutive pixels of a run in `dy`.
    pub dy_stride: usize,
    /// The runs of pixels to accumulate over.
    pub runs: &'a [Run],
    /// Accumulator block: `MR` rows of `NR` floats, row stride `acc_stride`.
    pub acc: *mut f32,
    /// Row stride of the accumulator block.
    pub acc_stride: usize,
}

/// A strip kernel ([`StripArgs`]) and the blocks it runs.
#[derive(Clone, Copy, Debug)]
pub struct StripKernel {
    /// The kernel: `(args, mr, nb)`.
    pub run: StripFn,
    /// The blocks it runs, `(window, nb, depth, most rows)`: the depth is a compile-time
    /// constant of a SIMD kernel (its window pixels are then fixed offsets from one pointer), the
    /// rows what the registers hold beside the weights.
    pub shapes: &'static [(Window, usize, usize, usize)],
}

impl StripKernel {
    /// Most rows of a block of `nb` 8-column units over `depth` channels with `window`, if the
    /// kernel runs such blocks.
    pub fn rows(&self, window: Window, nb: usize, depth: usize) -> Option<usize> {
        self.shapes.iter().find(|&&(k, b, d, _)| (k, b, d) == (window, nb, depth)).map(|&(.., rows)| rows)
    }
}

/// Which window pixels a strip block's output pixel `j` takes, through which packed kernel
/// columns (`kx`, [`Window::columns`] of them per kernel row): window pixel
/// `j + Window::first + kx` through column `kx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// A 3x3, stride-1 pass: window pixels `j, j + 1, j + 2` (the output pixel's left
    /// neighbour, itself and its right neighbour).
    Three,
    /// The odd columns of a 3x3, stride-2, pad-1 input gradient (input pixel `2j + 1`): window
    /// pixels `j + 1, j + 2` (output-gradient pixels `j` and `j + 1`).
    Pair,
    /// The even columns of that input gradient (input pixel `2j`): window pixel `j + 1`
    /// (output-gradient pixel `j`).
    Single,
}

impl Window {
    /// The window pixel that kernel column 0 of output pixel 0 takes.
    pub const fn first(self) -> usize {
        match self {
            Window::Three => 0,
            Window::Pair | Window::Single => 1,
        }
    }

    /// Kernel columns per kernel row.
    pub const fn columns(self) -> usize {
        match self {
            Window::Three => 3,
            Window::Pair => 2,
            Window::Single => 1,
        }
    }
}

/// The strip blocks of the AVX-512 kernel (and of the portable one, its reference).
/// [`Window::Three`]: 16 columns (one vector) over 16 channels, 32 (two vectors) over ResNet's
/// wider channel counts; 16 sums of one vector or 20 of two (12 rows of two spilled and ran
/// 5-10% slower on 56-pixel rows). The stride-2 input gradient's windows ([`Window::Pair`],
/// [`Window::Single`]) hold fewer weights, so more rows: 12 and 14 of two vectors, 16 of one.
/// Listed once in `blocks.rs`, which also builds the AVX-512 set's dispatch.
pub const STRIP_SHAPES: &[(Window, usize, usize, usize)] = avx512_strip_blocks!(strip_table);

/// The strip blocks of the AVX2 kernel, 16 columns (two `ymm` vectors), as many rows as its 16
/// registers hold beside the weights: the stride-2 input gradient's windows over ResNet's
/// channel counts (5 and 6 rows), and [`Window::Three`] over 16 channels (4 rows; 5 and 6
/// spill: 32x32x16 at batch 128 3.2 ms with 4, 4.3 with 6). The 3x3 stride-1 strips run
/// ResNet-32's first stage, forward and input gradient, at 9-20% above the gather pass and
/// take each row's moments as they store it (`conv_throughput`, forward with moments 3.74-3.95
/// -> 3.31 ms, input gradient 3.49-3.54 -> 3.02; ResNet-32 training 402-413 -> 420-426 img/s
/// interleaved); over 32 and 64 channels they were no faster than the gather pass, and those
/// layers run by Winograd now (`ops/winograd.rs`). Listed once in `blocks.rs`, which also
/// builds the AVX2 set's dispatch.
pub const AVX2_STRIP_SHAPES: &[(Window, usize, usize, usize)] = avx2_strip_blocks!(strip_table);

/// One kernel row of a strip block: a window of `mr + 2` consecutive source pixels of `depth`
/// floats, the first and the last of which may be padding (a [`Window::Pair`] block reads the
/// last but not the first, a [`Window::Single`] block neither).
#[derive(Clone, Copy, Debug)]
pub struct StripRow {
    /// Window pixel 0 (left of the strip's first output pixel), or a zero pixel.
    pub first: *const f32,
    /// Window pixel 1; pixels `1..=mr` follow each other at `depth` floats.
    pub mid: *const f32,
    /// Window pixel `mr + 1`, or a zero pixel.
    pub last: *const f32,
}

/// Arguments of one strip block: `mr` consecutive output pixels of one image row (or one
/// column phase of it) of a 3x3 gather (a stride-1 convolution's forward pass or input
/// gradient, or a stride-2 one's input gradient) by `8 * nb` columns, with `depth` channels per
/// source pixel. Output pixel `j` sums, over the kernel rows present, the depths and the kernel
/// columns `kx` of its `window` in that order, window pixel `j + window.first() + kx` times the
/// packed weight row `(kh * window.columns() + kx) * depth + d`. Where the gather kernel
/// broadcasts each source value once per tap, this one broadcasts it once for the (up to) three
/// outputs it reaches, and a strip covers a whole stretch of an image row with one call.
pub struct StripArgs {
    /// Which window pixels an output pixel takes.
    pub window: Window,
    /// Kernel rows `kh = 0, 1, 2`; `None` for a row wholly in the padding (skipped).
    pub rows: [Option<StripRow>; 3],
    /// Channels per source pixel (one of the kernel's depths for this width).
    pub depth: usize,
    /// Packed weights of this column block: `3 * window.columns()` taps of `depth` rows of
    /// `8 * nb` floats.
    pub packed: *const f32,
    /// First output row; `mr` rows of `8 * nb` floats, `out_stride` floats apart.
    pub out: *mut f32,
    /// Distance between output rows (and residual rows).
    pub out_stride: usize,
    /// Add to the existing output instead of overwriting it.
    pub accumulate: bool,
    /// `8 * nb` floats added to every row (null: none).
    pub bias: *const f32,
    /// First residual row, `out_stride` floats apart, added to the output rows (null: none).
    pub residual: *const f32,
    /// `max(v, 0)` last.
    pub relu: bool,
}

impl StripArgs {
    /// The epilogue of output row `j`, as a gather block's row 0 would have it.
    fn epilogue(&self, j: usize) -> Epilogue {
        Epilogue {
            bias: self.bias,
            residual: (!self.residual.is_null())
                .then(|| [self.residual.wrapping_add(j * self.out_stride); MR_MAX]),
            relu: self.relu,
        }
    }
}

/// A strip kernel: `(args, mr, nb)`.
pub type StripFn = unsafe fn(&StripArgs, usize, usize);

/// The weight-gradient strip blocks of the AVX-512 kernel (and of the portable one): 18 sums of
/// one vector, 24 of two. Listed once in `blocks.rs`, which also builds the AVX-512 set's
/// dispatch.
pub const GRAD_STRIP_SHAPES: &[(usize, usize)] = grad_strip_blocks!(grad_strip_table);

/// A weight-gradient strip kernel ([`GradStripArgs`]) and the blocks it runs.
#[derive(Clone, Copy, Debug)]
pub struct GradStripKernel {
    /// The kernel: `(args, mr, nb)`.
    pub run: GradStripFn,
    /// The blocks it runs, `(nb, most rows)`, rows being input channels: each keeps three sums
    /// per vector of columns (one per kernel column).
    pub shapes: &'static [(usize, usize)],
}

impl GradStripKernel {
    /// Most input channels of a block of `nb` 8-column units, if the kernel runs such blocks.
    pub fn rows(&self, nb: usize) -> Option<usize> {
        self.shapes.iter().find(|&&(b, _)| b == nb).map(|&(_, rows)| rows)
    }
}

/// Arguments of one weight-gradient strip block: for one kernel row of a 3x3, stride-1, pad-1
/// convolution, input channels `c..c + mr` (rows) by `8 * nb` output channels (columns) of the
/// three taps `kw = 0, 1, 2`, summed over whole image rows: for every pixel `q` of a row pair,
/// in order, tap `kw` adds `x[q, c + j] * dy[q + 1 - kw, ..]` (zero outside the row). Each `x`
/// value is broadcast once for its three taps and each `dy` vector loaded once for the three
/// pixels it meets, where the outer-product block loads one `x` value per multiply-add.
pub struct GradStripArgs<'a> {
    /// Channel `c` of the `x` pixel at offset 0.
    pub x: *const f32,
    /// Column `c0` of the `dy` pixel at offset 0.
    pub dy: *const f32,
    /// Per row pair, the offsets of the `x` row's first pixel and of the `dy` row's.
    pub rows: &'a [(usize, usize)],
    /// Pixels per row.
    pub width: usize,
    /// Distance between consecutive pixels in `x`.
    pub x_stride: usize,
    /// Distance between consecutive pixels in `dy`.
    pub dy_stride: usize,
    /// Accumulator of tap `kw = 0`, row 0: row `j` of tap `kw` at `kw * tap_stride + j *
    /// acc_stride`, `8 * nb` floats; the sums are added to it.
    pub acc: *mut f32,
    /// Distance between accumulator rows.
    pub acc_stride: usize,
    /// Distance between the taps' accumulators.
    pub tap_stride: usize,
}

/// A weight-gradient strip kernel: `(args, mr, nb)`.
pub type GradStripFn = unsafe fn(&GradStripArgs, usize, usize);

/// A gather kernel: `(args, mr, nb)`.
pub type GatherFn = unsafe fn(&GatherArgs, usize, usize);
/// An outer-product kernel: `(args, mr, nb)`.
pub type OuterFn = unsafe fn(&OuterArgs, usize, usize);

/// The instruction set a kernel set is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The build's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F (with AVX2 and FMA).
    Avx512,
}

impl Isa {
    /// The name of the kernel set compiled for it (what `LT_KERNELS` takes): `portable`,
    /// `avx2+fma` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "portable",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512",
        }
    }
}

/// A set of kernels for one instruction set.
#[derive(Clone, Copy, Debug)]
pub struct KernelSet {
    /// What the set's kernels (and [`vectorised`] code) are compiled for (its name, see
    /// [`KernelSet::name`]).
    pub isa: Isa,
    /// The gather-GEMM kernel.
    pub gather: GatherFn,
    /// The outer-product kernel.
    pub outer: OuterFn,
    /// Widest block, in 8-column units: 2 (16 columns) or 4 (32 columns).
    pub nb_max: usize,
    /// The strip kernel, where the set has one that beats its gather kernel.
    pub strip: Option<StripKernel>,
    /// The weight-gradient strip kernel, where the set has one that beats its outer-product
    /// kernel.
    pub grad_strip: Option<GradStripKernel>,
}

impl KernelSet {
    /// Name: `avx512`, `avx2+fma` or `portable` ([`Isa::name`]).
    pub fn name(&self) -> &'static str {
        self.isa.name()
    }

    /// The block widths (in 8-column units) this set runs.
    pub fn widths(&self) -> Vec<usize> {
        [1, 2, 4].into_iter().filter(|&nb| self.runs(nb)).collect()
    }

    /// Whether this set runs blocks `nb` 8-column units wide.
    #[inline]
    pub fn runs(&self, nb: usize) -> bool {
        matches!(nb, 1 | 2 | 4) && nb <= self.nb_max
    }
}

/// The portable set.
pub const PORTABLE: KernelSet = KernelSet {
    isa: Isa::Baseline,
    gather: portable::gather,
    outer: portable::outer,
    nb_max: 4,
    strip: Some(StripKernel { run: portable::strip, shapes: STRIP_SHAPES }),
    grad_strip: Some(GradStripKernel { run: portable::grad_strip, shapes: GRAD_STRIP_SHAPES }),
};

/// Every SIMD set this build has, with whether this CPU can run it (`None`: it cannot).
pub fn simd_sets() -> Vec<(&'static str, Option<KernelSet>)> {
    simd::sets()
}

fn select() -> &'static KernelSet {
    static K: std::sync::OnceLock<KernelSet> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let forced = std::env::var("LT_KERNELS").ok();
        let available: Vec<KernelSet> = simd_sets().into_iter().filter_map(|(_, s)| s).collect();
        if let Some(name) = forced.as_deref() {
            if name == PORTABLE.name() {
                return PORTABLE;
            }
            match available.iter().find(|s| s.name() == name || s.name().starts_with(&format!("{name}+"))) {
                Some(s) => return *s,
                None => tracing::warn!("LT_KERNELS={name}: this CPU has no such kernel set; choosing one"),
            }
        }
        // Widest first; a set that disagrees with the portable reference is never used.
        for set in available {
            match check::agrees_with_portable(&set) {
                Ok(()) => return set,
                Err(e) => {
                    tracing::error!("the {} kernels disagree with the reference ({e}); not used", set.name())
                }
            }
        }
        PORTABLE
    })
}

/// The selected kernel set's instruction set.
pub(crate) fn selected_isa() -> Isa {
    select().isa
}

/// Runs `f` compiled for the instruction set of the kernel set in use: element-wise loops
/// (batch norm's) written so that the compiler vectorises them get that set's vectors instead
/// of the build's baseline (SSE2), provided `f` and what it calls are inlined (a closure marked
/// `#[inline(always)]` calling `#[inline(always)]` functions).
#[inline]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    match select().isa {
        // SAFETY: a set is selected only where the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { simd::avx512::vectorised(f) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { simd::avx2::vectorised(f) },
        _ => f(),
    }
}

/// Name of the kernel set in use (`avx512`, `avx2+fma` or `portable`).
pub fn kernel_name() -> &'static str {
    select().name()
}

/// The instruction set of the `gemm` crate's micro-kernels, which compute the project's other
/// matrix products (pointwise convolutions, weight-gradient panels) and pick their own set at
/// run time, whatever `LT_KERNELS` says: AVX-512 where the CPU has AVX-512F and the feature
/// `avx512-gemm` (on by default) is on, else AVX2 + FMA where the CPU has FMA, else the baseline.
pub fn gemm_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512-gemm") && is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Widest block of the kernel set in use, in 8-column units (see [`KernelSet::nb_max`]).
pub fn nb_max() -> usize {
    select().nb_max
}

/// The strip kernel of the kernel set in use, if it has one ([`KernelSet::strip`]).
pub fn strip_kernel() -> Option<StripKernel> {
    select().strip
}

/// The weight-gradient strip kernel of the kernel set in use, if it has one
/// ([`KernelSet::grad_strip`]).
pub fn grad_strip_kernel() -> Option<GradStripKernel> {
    select().grad_strip
}

/// The x86 features the kernels look at, as `name` (present) or `-name` (absent).
pub fn cpu_features() -> Vec<String> {
    simd::cpu_features()
}

/// Runs one gather-GEMM block of `mr` rows and `nb * 8` columns.
///
/// # Safety
/// Every pointer in `args` must be valid for the reads and writes the block performs:
/// `taps[t].src[j]` for `depth` floats (`j < mr`), `packed + taps[t].w * nb * 8` for
/// `depth * nb * 8` floats, `out[j]` for `nb * 8` floats, and when set the epilogue's `bias`
/// for `nb * 8` floats and `residual[j]` for `nb * 8` floats (`j < mr`).
#[inline]
pub unsafe fn gather_block(args: &GatherArgs, mr: usize, nb: usize) {
    let k = select();
    assert!((1..=MR_MAX).contains(&mr) && k.runs(nb), "gather block {mr} x {nb}");
    // SAFETY: the caller upholds the pointer contract above; the block size was checked, and the
    // selected kernel set runs only where its CPU features were detected.
    unsafe { (k.gather)(args, mr, nb) }
}

/// Runs one outer-product accumulation block of `mr` rows and `nb * 8` columns.
///
/// # Safety
/// For every run, `x + run.x` must be valid for `run.count` pixels of `mr` floats at stride
/// `x_stride`, `dy + run.dy` for `run.count` pixels of `nb * 8` floats at stride `dy_stride`;
/// `acc` for `mr` rows of `nb * 8` floats.
#[inline]
pub unsafe fn outer_block(args: &OuterArgs, mr: usize, nb: usize) {
    let k = select();
    assert!((1..=MR_MAX).contains(&mr) && k.runs(nb), "outer block {mr} x {nb}");
    // SAFETY: as in `gather_block`.
    unsafe { (k.outer)(args, mr, nb) }
}

/// Runs one strip block of `mr` output pixels by `8 * nb` columns with `kernel` (a set's
/// [`KernelSet::strip`]).
///
/// # Safety
/// `kernel` comes from a set this CPU runs ([`strip_kernel`], or [`PORTABLE`]); for each kernel
/// row present, `first` and `last` must be valid for `depth` floats where the window reads them
/// and `mid` for `mr * depth`; `packed` for `3 * window.columns() * depth * 8 * nb` floats;
/// `out` (and `residual` when set) for `mr` rows of `8 * nb` floats at `out_stride`; `bias` when
/// set for `8 * nb` floats.
#[inline]
pub unsafe fn strip_block(kernel: &StripKernel, args: &StripArgs, mr: usize, nb: usize) {
    let rows = kernel.rows(args.window, nb, args.depth);
    let what = (args.window, args.depth);
    assert!(rows.is_some_and(|r| (1..=r).contains(&mr)), "strip block of {mr} x {nb} over {what:?}");
    // SAFETY: the caller upholds the pointer contract above; the shape was checked.
    unsafe { (kernel.run)(args, mr, nb) }
}

/// Runs one weight-gradient strip block of `mr` input channels by `8 * nb` output channels with
/// `kernel` (a set's [`KernelSet::grad_strip`]).
///
/// # Safety
/// `kernel` comes from a set this CPU runs ([`grad_strip_kernel`], or [`PORTABLE`]); for every
/// row pair, `x + row.0` must be valid for `width` pixels of `mr` floats at `x_stride` and
/// `dy + row.1` for `width` pixels of `8 * nb` floats at `dy_stride`; `acc` for the three taps'
/// `mr` rows of `8 * nb` floats.
#[inline]
pub unsafe fn grad_strip_block(kernel: &GradStripKernel, args: &GradStripArgs, mr: usize, nb: usize) {
    assert!(kernel.rows(nb).is_some_and(|r| (1..=r).contains(&mr)), "grad strip block {mr} x {nb}");
    // SAFETY: the caller upholds the pointer contract above; the shape was checked.
    unsafe { (kernel.run)(args, mr, nb) }
}
