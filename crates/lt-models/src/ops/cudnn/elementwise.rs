//! ReLU, its gradient, and the residual add + ReLU through cuDNN on NHWC activations.

use std::rc::Rc;

use candle_core::{CudaStorage, Layout};
use cudarc::cudnn::sys;

use super::{check, one, two_to_one, zero, ActDesc, CResult, Ctx, OpTensorDesc, TensorDesc};
use crate::ops::elementwise::Nhwc;

impl Ctx {
    /// The ReLU activation descriptor (NaN propagated), described once per context.
    fn relu_desc(&mut self) -> CResult<Rc<ActDesc>> {
        if let Some(d) = &self.relu {
            return Ok(d.clone());
        }
        let act = ActDesc::new()?;
        let (relu, nan) = (
            sys::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
            sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
        );
        // SAFETY: `act` is live.
        check("cudnnSetActivationDescriptor", unsafe {
            sys::cudnnSetActivationDescriptor(act.0, relu, nan, 0.0)
        })?;
        let act = Rc::new(act);
        self.relu = Some(act.clone());
        Ok(act)
    }

    /// The addition descriptor (computing in `f32`, also for `bf16` tensors; NaN propagated),
    /// described once per context.
    fn add_desc(&mut self) -> CResult<Rc<OpTensorDesc>> {
        if let Some(d) = &self.add {
            return Ok(d.clone());
        }
        let op = OpTensorDesc::new()?;
        let (add, ty, nan) = (
            sys::cudnnOpTensorOp_t::CUDNN_OP_TENSOR_ADD,
            sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
        );
        // SAFETY: `op` is live.
        check("cudnnSetOpTensorDescriptor", unsafe { sys::cudnnSetOpTensorDescriptor(op.0, add, ty, nan) })?;
        let op = Rc::new(op);
        self.add = Some(op.clone());
        Ok(op)
    }

    /// `y = max(y, 0)` in place on the values described by `desc`.
    ///
    /// # Safety
    /// `y` must point to a live device buffer that `desc` describes.
    pub(super) unsafe fn relu_in_place(
        &mut self,
        desc: &TensorDesc,
        y: *mut std::ffi::c_void,
    ) -> CResult<()> {
        let act = self.relu_desc()?;
        // SAFETY: the caller's contract; cuDNN allows the input and output to be the same buffer.
        let status =
            unsafe { sys::cudnnActivationForward(self.handle.0, act.0, one(), desc.0, y, zero(), desc.0, y) };
        check("cudnnActivationForward", status)
    }

    /// `dz = dy * (y > 0)`, the gradient before a ReLU from its output `y` and output gradient
    /// `dy` (`y` also serves as the ReLU's input: `y > 0` exactly where the input is).
    ///
    /// # Safety
    /// `y`, `dy` and `dz` must point to live device buffers that `desc` describes; `dz` must not
    /// overlap the others.
    pub(super) unsafe fn relu_backward(
        &mut self,
        desc: &TensorDesc,
        y: *const std::ffi::c_void,
        dy: *const std::ffi::c_void,
        dz: *mut std::ffi::c_void,
    ) -> CResult<()> {
        let act = self.relu_desc()?;
        // SAFETY: the caller's contract.
        let status = unsafe {
            sys::cudnnActivationBackward(
                self.handle.0,
                act.0,
                one(),
                desc.0,
                y,
                desc.0,
                dy,
                desc.0,
                y,
                zero(),
                desc.0,
                dz,
            )
        };
        check("cudnnActivationBackward", status)
    }
}

/// `max(a + b, 0)` for NHWC activations `a`, `b` of shape `s`: one cuDNN addition, then the
/// ReLU in place.
pub(crate) fn add_relu(
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    s: Nhwc,
) -> CResult<CudaStorage> {
    let len = s.len();
    two_to_one(a, b, (len, len, len), ["add_relu lhs", "add_relu rhs"], |ctx, dt, a, b, y| {
        let desc = ctx.tensor(s, dt)?;
        let op = ctx.add_desc()?;
        // SAFETY: `desc` describes the `len` values of `a`, `b` and `y` (lengths checked); beta = 0,
        // so `y` is only written.
        let status = unsafe {
            sys::cudnnOpTensor(ctx.handle.0, op.0, one(), desc.0, a, one(), desc.0, b, zero(), desc.0, y)
        };
        check("cudnnOpTensor", status)?;
        // SAFETY: `y` is the `len` values `desc` describes.
        unsafe { ctx.relu_in_place(&desc, y) }
    })
}

/// `dy * (y > 0)`: the gradient through a ReLU with output `y`, for NHWC activations of shape `s`.
pub(crate) fn relu_backward(
    y: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
    s: Nhwc,
) -> CResult<CudaStorage> {
    let len = s.len();
    two_to_one(y, dy, (len, len, len), ["relu output", "relu output gradient"], |ctx, dt, y, dy, dz| {
        let desc = ctx.tensor(s, dt)?;
        // SAFETY: `desc` describes the `len` values of `y`, `dy` and the new buffer `dz`.
        unsafe { ctx.relu_backward(&desc, y, dy, dz) }
    })
}
