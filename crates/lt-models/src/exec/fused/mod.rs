//! The fused CPU executor: a whole backbone as one autograd node.
//!
//! Per-op custom ops leave candle's autograd to glue ~5 nodes per residual block, and candle
//! accumulates every node's input gradient by zero-filling a fresh tensor and adding to it. For
//! the CPU, a [`Program`] is instead run forward and backward here: buffers come from a [`Pool`]
//! and are reused every step, a ReLU's gradient mask is fused into the op that consumes it, an
//! input gradient is accumulated in place by the convolution kernels, and nothing is allocated
//! for a gradient that nobody needs (the input image's).
//!
//! To candle, the pass is a single custom op whose input is the concatenation of every parameter
//! of the program (flattened, in [`Program::params`] order): its backward pass returns the
//! gradient of that vector, and candle's own backward of the concatenation hands each parameter
//! its part. So `loss.backward()` gives every parameter its gradient, as on the eager path.

mod backward;
mod forward;

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor};

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
        let input = self.input_buffer(x)?;
        let (features, tape) = forward::run(&self.program, &self.plan, input, store, &self.pool, mode)?;
        let out = self.plan.dims[self.program.output];
        let shape = (out.n, out.c);
        let Some(tape) = tape else {
            return Ok(Tensor::from_vec(features, shape, &Device::Cpu)?);
        };
        let flat = self
            .program
            .params
            .iter()
            .map(|v| v.as_tensor().flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let anchor = Tensor::cat(&flat, 0)?;
        let op = FusedOp {
            program: self.program.clone(),
            plan: self.plan.clone(),
            pool: self.pool.clone(),
            features,
            tape: Mutex::new(Some(tape)),
            shape,
        };
        Ok(anchor.apply_op1(op)?)
    }
}

/// The backbone as one custom op over the concatenated parameters. The forward values are
/// computed before the op is applied; the tape (activations and saved statistics) is consumed
/// by the one backward pass, which frees activations as it goes.
struct FusedOp {
    program: Arc<Program>,
    plan: Arc<Plan>,
    pool: Arc<Pool>,
    features: Vec<f32>,
    tape: Mutex<Option<forward::Tape>>,
    shape: (usize, usize),
}

impl CustomOp1 for FusedOp {
    fn name(&self) -> &'static str {
        "lt-fused-backbone"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l.shape().elem_count() != self.program.param_len {
            candle_core::bail!(
                "fused backbone: {} parameters for a program of {}",
                l.shape().elem_count(),
                self.program.param_len
            );
        }
        Ok((CpuStorage::F32(self.features.clone()), Shape::from(self.shape)))
    }

    fn bwd(&self, _params: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
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
        Ok(Some(Tensor::from_vec(grads, self.program.param_len, &Device::Cpu)?))
    }
}
