//! The fused CPU executor: a whole backbone as one autograd node.
//!
//! Per-op custom ops leave candle's autograd to glue ~5 nodes per residual block, and candle
//! accumulates every node's input gradient by zero-filling a fresh tensor and adding to it. For
//! the CPU, a [`Program`] is instead run forward and backward here: buffers come from a [`Pool`]
//! and are reused every step, a ReLU's gradient mask is fused into the op that consumes it, an
//! input gradient is accumulated in place by the convolution kernels, and nothing is allocated
//! for a gradient that nobody needs (the input image's).
//!
//! To candle, the pass is a chain of small custom ops: one [`Tie`] per parameter (in
//! [`Program::params`] order), each taking the previous tie's one-element token and its
//! parameter, and last the [`FusedOp`] that gives the features. The backward pass of the
//! `FusedOp` runs the whole backward program and leaves every parameter's gradient with the
//! ties, which candle asks next and which hand each gradient over as it is (no copy, no
//! concatenated parameter vector, no flat gradient to split). So `loss.backward()` gives every
//! parameter its gradient, as on the eager path.

mod backward;
mod forward;
mod packs;

pub(crate) use packs::PackCache;

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Storage, Tensor};

use super::Mode;
use crate::error::{ModelError, Result};
use crate::ops::elementwise::Nhwc;
use crate::params::ParamStore;
use crate::pool::{Buf, Pool};
use crate::program::{Plan, Program};

/// A program with its geometry for one input size and the pool its buffers come from.
pub(crate) struct Fused {
    pub program: Arc<Program>,
    pub plan: Arc<Plan>,
    pub pool: Arc<Pool>,
    /// Evaluation's packed weights (see [`PackCache`]).
    pub packs: Arc<PackCache>,
}

impl Fused {
    /// The NHWC copy of the NCHW CPU input `x`, in a pooled buffer.
    fn input_buffer(&self, x: &Tensor) -> Result<Buf> {
        let nhwc = x.permute((0, 2, 3, 1))?.contiguous()?;
        if Nhwc::of(nhwc.dims4()?.into()) != self.plan.input {
            return Err(ModelError::Invalid(format!(
                "input {:?} for a plan of {:?}",
                x.dims(),
                self.plan.input
            )));
        }
        let mut b = self.pool.take(nhwc.elem_count());
        let (st, l) = nhwc.storage_and_layout();
        let (Storage::Cpu(cs), Some((start, end))) = (&*st, l.contiguous_offsets()) else {
            return Err(ModelError::Invalid("the fused path runs on contiguous CPU tensors".into()));
        };
        b.copy_from_slice(&cs.as_slice::<f32>()?[start..end]);
        Ok(b)
    }

    /// The pooled representation `[N, C]` of the NCHW images `x`; with `mode.graph` it is the
    /// output of one autograd node whose backward pass gives every parameter its gradient.
    pub fn features(&self, x: &Tensor, store: &ParamStore, mode: Mode) -> Result<Tensor> {
        if mode.train {
            self.packs.clear()?;
        }
        let input = self.input_buffer(x)?;
        let (features, tape) =
            forward::run(&self.program, &self.plan, input, store, &self.pool, &self.packs, mode)?;
        let out = self.plan.dims[self.program.output];
        let shape = (out.n, out.c);
        let Some(tape) = tape else {
            return Ok(Tensor::from_vec(features, shape, &Device::Cpu)?);
        };
        let grads: Shared = Arc::new(Mutex::new(Vec::new()));
        let mut token: Option<Tensor> = None;
        for (index, var) in self.program.params.iter().enumerate() {
            let tie = Tie { index, grads: grads.clone() };
            token = Some(match token {
                None => var.as_tensor().apply_op1(tie)?,
                Some(t) => t.apply_op2(var.as_tensor(), tie)?,
            });
        }
        let token = token.ok_or_else(|| ModelError::Invalid("a fused program without parameters".into()))?;
        let op = FusedOp {
            program: self.program.clone(),
            plan: self.plan.clone(),
            pool: self.pool.clone(),
            features,
            tape: Mutex::new(Some(tape)),
            shape,
            grads,
        };
        Ok(token.apply_op1(op)?)
    }
}

/// The parameters' gradients, left by the [`FusedOp`]'s backward pass for the [`Tie`]s.
type Shared = Arc<Mutex<Vec<Option<Vec<f32>>>>>;

/// Takes the gradient of parameter `index` out of `grads`.
fn take_grad(grads: &Shared, index: usize) -> candle_core::Result<Vec<f32>> {
    let mut g =
        grads.lock().map_err(|_| candle_core::Error::Msg("fused backbone: poisoned gradients".into()))?;
    g.get_mut(index).and_then(Option::take).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "fused backbone: no gradient for parameter {index} (backward pass not run?)"
        ))
    })
}

/// One parameter's link in the chain of custom ops that ends in the [`FusedOp`]: forward, a
/// one-element token; backward, the parameter's gradient from the fused backward pass (and a
/// zero gradient for the previous token).
struct Tie {
    index: usize,
    grads: Shared,
}

/// The one-element token a [`Tie`] passes on.
fn token() -> (CpuStorage, Shape) {
    (CpuStorage::F32(vec![0.0]), Shape::from(1))
}

impl CustomOp1 for Tie {
    fn name(&self) -> &'static str {
        "lt-fused-tie"
    }

    fn cpu_fwd(&self, _param: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok(token())
    }

    fn bwd(&self, param: &Tensor, _res: &Tensor, _grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(Tensor::from_vec(take_grad(&self.grads, self.index)?, param.shape(), &Device::Cpu)?))
    }
}

impl CustomOp2 for Tie {
    fn name(&self) -> &'static str {
        "lt-fused-tie"
    }

    fn cpu_fwd(
        &self,
        _token: &CpuStorage,
        _lt: &Layout,
        _param: &CpuStorage,
        _lp: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok(token())
    }

    fn bwd(
        &self,
        token: &Tensor,
        param: &Tensor,
        _res: &Tensor,
        _grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Tensor::from_vec(take_grad(&self.grads, self.index)?, param.shape(), &Device::Cpu)?;
        Ok((Some(token.zeros_like()?), Some(g)))
    }
}

/// The backbone as the last custom op of the chain of [`Tie`]s. The forward values are
/// computed before the op is applied; the tape (activations and saved statistics) is consumed
/// by the one backward pass, which frees activations as it goes and leaves the parameters'
/// gradients in `grads`.
struct FusedOp {
    program: Arc<Program>,
    plan: Arc<Plan>,
    pool: Arc<Pool>,
    features: Vec<f32>,
    tape: Mutex<Option<forward::Tape>>,
    shape: (usize, usize),
    grads: Shared,
}

impl CustomOp1 for FusedOp {
    fn name(&self) -> &'static str {
        "lt-fused-backbone"
    }

    fn cpu_fwd(&self, _token: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.features.clone()), Shape::from(self.shape)))
    }

    fn bwd(&self, token: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let tape = self
            .tape
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused backbone: poisoned tape".into()))?
            .take();
        let tape = tape.ok_or_else(|| {
            candle_core::Error::Msg("the fused backward pass can run only once per forward pass".into())
        })?;
        let d = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let grads = backward::run(&self.program, &self.plan, tape, &d, &self.pool)
            .map_err(candle_core::Error::wrap)?;
        *self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused backbone: poisoned gradients".into()))? =
            grads.into_iter().map(Some).collect();
        Ok(Some(token.zeros_like()?))
    }
}
