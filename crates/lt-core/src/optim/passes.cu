// The SGD step's two in-place passes on f32 CUDA buffers (see optim/mod.rs): the CPU passes'
// operations in the same order, each rounded on its own (no fused multiply-add), so a step gives
// the values of the tensor ops (candle's `affine`, `x * mul + add` with `add` 0: on the CPU it
// rounds `x * mul` and adds an exact 0; on CUDA one fused multiply-add, which rounds once, to the
// same value, apart from the sign of a product that underflows to zero). One thread per value;
// compiled to PTX by build.rs with the `cuda` feature.

// `g + (p * wd + 0)`, or `g` when `wd` is 0.
__device__ __forceinline__ float decayed(float g, float p, float wd) {
    return wd != 0.0f ? __fadd_rn(g, __fadd_rn(__fmul_rn(p, wd), 0.0f)) : g;
}

// buf <- (buf * mu + 0) + (g + (p * wd + 0))
extern "C" __global__ void lt_sgd_momentum_f32(
    const size_t n, float *buf, const float *g, const float *p, const float mu, const float wd) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        buf[i] = __fadd_rn(__fadd_rn(__fmul_rn(buf[i], mu), 0.0f), decayed(g[i], p[i], wd));
    }
}

// d = (g + (p * wd + 0)) + (buf * mu + 0) with Nesterov momentum, else buf; p <- p - (d * lr + 0)
extern "C" __global__ void lt_sgd_parameter_f32(
    const size_t n, float *p, const float *g, const float *buf, const float lr, const float wd,
    const float mu, const int nesterov) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float b = buf[i];
        const float d = nesterov ? __fadd_rn(decayed(g[i], p[i], wd), __fadd_rn(__fmul_rn(b, mu), 0.0f)) : b;
        p[i] = __fsub_rn(p[i], __fadd_rn(__fmul_rn(d, lr), 0.0f));
    }
}
