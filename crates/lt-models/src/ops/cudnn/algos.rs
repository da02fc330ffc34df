//! cuDNN's convolution algorithms and math types as this crate reads them: the candidates of a
//! plan, and the bindings' enums found from the plain integers cuDNN reports (a value the
//! bindings do not know is skipped, never read as a Rust enum).

use cudarc::cudnn::sys;

use super::conv::Dir;

/// One usable algorithm.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate {
    pub algo: u32,
    pub workspace: usize,
    pub math: sys::cudnnMathType_t,
    /// cuDNN's measured time in milliseconds (negative or meaningless for a heuristic ranking).
    pub ms: f32,
}

/// One entry of cuDNN's `cudnnConvolution*AlgoPerf_t` read as plain integers (all three structs
/// share this layout; an enum value unknown to the bindings must not be read as a Rust enum).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct RawPerf {
    pub algo: u32,
    pub status: u32,
    pub time: f32,
    pub memory: usize,
    pub determinism: u32,
    pub math_type: u32,
    pub reserved: [i32; 3],
}

const _: () =
    assert!(std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionFwdAlgoPerf_t>());
const _: () =
    assert!(std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionBwdDataAlgoPerf_t>());
const _: () = assert!(
    std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>()
);

pub(super) fn math_of(v: u32) -> Option<sys::cudnnMathType_t> {
    use sys::cudnnMathType_t as M;
    [
        M::CUDNN_DEFAULT_MATH,
        M::CUDNN_TENSOR_OP_MATH,
        M::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
        M::CUDNN_FMA_MATH,
    ]
    .into_iter()
    .find(|m| *m as u32 == v)
}

pub(super) fn fwd_algo(v: u32) -> Option<sys::cudnnConvolutionFwdAlgo_t> {
    use sys::cudnnConvolutionFwdAlgo_t as A;
    [
        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
    ]
    .into_iter()
    .find(|a| *a as u32 == v)
}

pub(super) fn data_algo(v: u32) -> Option<sys::cudnnConvolutionBwdDataAlgo_t> {
    use sys::cudnnConvolutionBwdDataAlgo_t as A;
    [
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
    ]
    .into_iter()
    .find(|a| *a as u32 == v)
}

pub(super) fn filter_algo(v: u32) -> Option<sys::cudnnConvolutionBwdFilterAlgo_t> {
    use sys::cudnnConvolutionBwdFilterAlgo_t as A;
    [
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
    ]
    .into_iter()
    .find(|a| *a as u32 == v)
}

pub(super) fn known(dir: Dir, algo: u32) -> bool {
    match dir {
        Dir::Forward => fwd_algo(algo).is_some(),
        Dir::Data => data_algo(algo).is_some(),
        Dir::Filter => filter_algo(algo).is_some(),
    }
}
