//! The convolution ops on CUDA through cuDNN (feature `cudnn`): forward, backward data and
//! backward filter on NHWC activations and `[C_out, C_in, k, k]` filters, so that training on a
//! GPU does not fall back to candle's transposed-convolution kernel for the input gradient.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{CudaStorage, Layout, Result};
use cudarc::cudnn::sys::{cudnnConvolutionMode_t, cudnnTensorFormat_t};
use cudarc::cudnn::{ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn};
use cudarc::driver::CudaSlice;

use super::conv::ConvShape;

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}

fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<cudarc::driver::CudaView<'a, f32>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: cuDNN ops need contiguous tensors")))?;
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

struct Descriptors {
    cudnn: Arc<Cudnn>,
    conv: cudarc::cudnn::ConvDescriptor<f32>,
    x: cudarc::cudnn::TensorDescriptor<f32>,
    w: cudarc::cudnn::FilterDescriptor<f32>,
    y: cudarc::cudnn::TensorDescriptor<f32>,
}

fn descriptors(dev: &CudaDevice, s: &ConvShape) -> Result<Descriptors> {
    let cudnn = handle(dev)?;
    let (p, st) = (s.pad as i32, s.stride as i32);
    let conv = cudnn
        .create_conv2d::<f32>([p, p], [st, st], [1, 1], cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION)
        .map_err(err)?;
    let nhwc = cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
    let x = cudnn
        .create_4d_tensor::<f32>(nhwc, [s.n as i32, s.cin as i32, s.h as i32, s.w as i32])
        .map_err(err)?;
    let y = cudnn
        .create_4d_tensor::<f32>(nhwc, [s.n as i32, s.cout as i32, s.oh() as i32, s.ow() as i32])
        .map_err(err)?;
    let w = cudnn
        .create_4d_filter::<f32>(
            cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            [s.cout as i32, s.cin as i32, s.k as i32, s.k as i32],
        )
        .map_err(err)?;
    Ok(Descriptors { cudnn, conv, x, w, y })
}

fn workspace(dev: &CudaDevice, bytes: usize) -> Result<CudaSlice<u8>> {
    dev.alloc_zeros::<u8>(bytes.max(1))
}

/// `y = conv(x, w)`.
pub fn forward(
    x: &CudaStorage,
    xl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    s: &ConvShape,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let d = descriptors(&dev, s)?;
    let _ = &d.cudnn;
    let op = ConvForward { conv: &d.conv, x: &d.x, w: &d.w, y: &d.y };
    let algo = op.pick_algorithm().map_err(err)?;
    let mut ws = workspace(&dev, op.get_workspace_size(algo).map_err(err)?)?;
    let mut out = dev.alloc_zeros::<f32>(s.output_len())?;
    // SAFETY: the descriptors describe exactly these buffers (checked lengths, contiguous views).
    unsafe {
        op.launch(
            algo,
            Some(&mut ws),
            (1.0f32, 0.0f32),
            &view(x, xl, "conv input")?,
            &view(w, wl, "conv weight")?,
            &mut out,
        )
    }
    .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// `dx` from `dy` and `w`.
pub fn backward_data(
    dy: &CudaStorage,
    dyl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    s: &ConvShape,
) -> Result<CudaStorage> {
    let dev = dy.device().clone();
    let d = descriptors(&dev, s)?;
    let op = ConvBackwardData { conv: &d.conv, dx: &d.x, w: &d.w, dy: &d.y };
    let algo = op.pick_algorithm().map_err(err)?;
    let mut ws = workspace(&dev, op.get_workspace_size(algo).map_err(err)?)?;
    let mut dx = dev.alloc_zeros::<f32>(s.input_len())?;
    // SAFETY: as in `forward`.
    unsafe {
        op.launch(
            algo,
            Some(&mut ws),
            (1.0f32, 0.0f32),
            &mut dx,
            &view(w, wl, "conv weight")?,
            &view(dy, dyl, "conv output gradient")?,
        )
    }
    .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

/// `dw` from `x` and `dy`.
pub fn backward_filter(
    x: &CudaStorage,
    xl: &Layout,
    dy: &CudaStorage,
    dyl: &Layout,
    s: &ConvShape,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let d = descriptors(&dev, s)?;
    let op = ConvBackwardFilter { conv: &d.conv, x: &d.x, dw: &d.w, dy: &d.y };
    let algo = op.pick_algorithm().map_err(err)?;
    let mut ws = workspace(&dev, op.get_workspace_size(algo).map_err(err)?)?;
    let mut dw = dev.alloc_zeros::<f32>(s.weight_len())?;
    // SAFETY: as in `forward`.
    unsafe {
        op.launch(
            algo,
            Some(&mut ws),
            (1.0f32, 0.0f32),
            &view(x, xl, "conv input")?,
            &mut dw,
            &view(dy, dyl, "conv output gradient")?,
        )
    }
    .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(dw, dev))
}
