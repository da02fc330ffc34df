//! Max pooling and its backward pass through cuDNN on NHWC activations (deterministic mode,
//! padding never wins, NaN propagates).

use std::rc::Rc;

use candle_core::{CudaStorage, Layout};

use super::{check, cptr, device, ints, mptr, one, view, with_ctx, zero, CResult, Ctx, Out, PoolDesc, View};
use crate::ops::elementwise::{Nhwc, Window};
use cudarc::cudnn::sys;

impl Ctx {
    /// The cached descriptor of max pooling with `win`.
    fn max_pool_desc(&mut self, win: Window) -> CResult<Rc<PoolDesc>> {
        if let Some(d) = self.pools.get(&win) {
            return Ok(d.clone());
        }
        let d = PoolDesc::new()?;
        let [k, pad, stride] = ints([win.k, win.pad, win.stride])?;
        let mode = sys::cudnnPoolingMode_t::CUDNN_POOLING_MAX_DETERMINISTIC;
        let nan = sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN;
        // SAFETY: `d` is live.
        check("cudnnSetPooling2dDescriptor", unsafe {
            sys::cudnnSetPooling2dDescriptor(d.0, mode, nan, k, k, pad, pad, stride, stride)
        })?;
        let d = Rc::new(d);
        self.pools.insert(win, d.clone());
        Ok(d)
    }
}

/// `y = max_pool(x)` for input shape `s` and output shape `o`.
pub(crate) fn max_forward(x: (&CudaStorage, &Layout), s: Nhwc, o: Nhwc, win: Window) -> CResult<CudaStorage> {
    let dev = device(x.0);
    let xv = view(x, s.len(), "max pool input")?;
    let dt = xv.dt();
    let mut y = Out::new(&dev, dt, o.len())?;
    {
        let stream = dev.cuda_stream();
        let (xp, _gx) = xv.ptr(&stream);
        let (yp, _gy) = y.ptr_mut(&stream);
        with_ctx(&dev, |ctx| {
            let (pool, xd, yd) = (ctx.max_pool_desc(win)?, ctx.tensor(s, dt)?, ctx.tensor(o, dt)?);
            // SAFETY: the descriptors describe `x` and `y` (lengths checked).
            let status = unsafe {
                sys::cudnnPoolingForward(ctx.handle.0, pool.0, one(), xd.0, cptr(xp), zero(), yd.0, mptr(yp))
            };
            check("cudnnPoolingForward", status)
        })?;
    }
    Ok(y.into_storage(dev))
}

/// `dx` of max pooling from `x`, `y` and `dy`.
pub(crate) fn max_backward(
    x: (&CudaStorage, &Layout),
    y: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
    s: Nhwc,
    o: Nhwc,
    win: Window,
) -> CResult<CudaStorage> {
    let dev = device(x.0);
    let xv = view(x, s.len(), "max pool input")?;
    let yv = view(y, o.len(), "max pool output")?;
    let dyv = view(dy, o.len(), "max pool output gradient")?;
    let dt = View::common_dt(&[&xv, &yv, &dyv], "max pool backward (input, output, gradient)")?;
    let mut dx = Out::new(&dev, dt, s.len())?;
    {
        let stream = dev.cuda_stream();
        let (xp, _g1) = xv.ptr(&stream);
        let (yp, _g2) = yv.ptr(&stream);
        let (dyp, _g3) = dyv.ptr(&stream);
        let (dxp, _g4) = dx.ptr_mut(&stream);
        with_ctx(&dev, |ctx| {
            let (pool, xd, yd) = (ctx.max_pool_desc(win)?, ctx.tensor(s, dt)?, ctx.tensor(o, dt)?);
            // SAFETY: the descriptors describe `x`, `dx` (shape `s`) and `y`, `dy` (shape `o`).
            let status = unsafe {
                sys::cudnnPoolingBackward(
                    ctx.handle.0,
                    pool.0,
                    one(),
                    yd.0,
                    cptr(yp),
                    yd.0,
                    cptr(dyp),
                    xd.0,
                    cptr(xp),
                    zero(),
                    xd.0,
                    mptr(dxp),
                )
            };
            check("cudnnPoolingBackward", status)
        })?;
    }
    Ok(dx.into_storage(dev))
}
