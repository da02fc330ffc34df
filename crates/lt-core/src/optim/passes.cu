// The SGD step with momentum on f32 CUDA buffers (see optim/mod.rs and optim/cuda.rs): the
// momentum pass and the parameter pass of the CPU, fused, for up to LT_SGD_TENSORS parameters in
// one launch. Each value's operations are the CPU passes' in the same order, each rounded on its
// own (no fused multiply-add), so a step gives the values of the tensor ops (candle's `affine`,
// `x * mul + add` with `add` 0: on the CPU it rounds `x * mul` and adds an exact 0; on CUDA one
// fused multiply-add, which rounds once, to the same value, apart from the sign of a product that
// underflows to zero). Compiled to PTX by build.rs with the `cuda` feature.

#include <stddef.h>

// Parameters per launch, and values per block: STEP_TENSORS and STEP_CHUNK in optim/table.rs,
// whose `StepTable` is this struct's layout (its test reads these two values here, and checks the
// same offsets as the static_asserts below). The table goes by value, as a kernel parameter
// (3,080 of the 4,096 bytes a launch's parameters may take), so a launch copies nothing to the
// device first.
#define LT_SGD_TENSORS 96
#define LT_SGD_CHUNK 8192

struct LtSgdTable {
    float *p[LT_SGD_TENSORS];
    const float *g[LT_SGD_TENSORS];
    float *buf[LT_SGD_TENSORS];
    // Values of each parameter.
    unsigned int n[LT_SGD_TENSORS];
    // first[k]: the first block of parameter k (chunks of LT_SGD_CHUNK values); first[count] is
    // the grid's size. Each parameter has at least one value, so at least one block.
    unsigned int first[LT_SGD_TENSORS + 1];
};
static_assert(offsetof(LtSgdTable, g) == 8 * LT_SGD_TENSORS, "LtSgdTable: g");
static_assert(offsetof(LtSgdTable, buf) == 16 * LT_SGD_TENSORS, "LtSgdTable: buf");
static_assert(offsetof(LtSgdTable, n) == 24 * LT_SGD_TENSORS, "LtSgdTable: n");
static_assert(offsetof(LtSgdTable, first) == 28 * LT_SGD_TENSORS, "LtSgdTable: first");
static_assert(sizeof(LtSgdTable) == (32 * LT_SGD_TENSORS + 4 + 7) / 8 * 8, "LtSgdTable: size");

// `g + (p * wd + 0)`, or `g` when `wd` is 0.
__device__ __forceinline__ float decayed(float g, float p, float wd) {
    return wd != 0.0f ? __fadd_rn(g, __fadd_rn(__fmul_rn(p, wd), 0.0f)) : g;
}

// For each value of each of the `count` parameters of `t`:
//   g'  = g + (p * wd + 0)
//   buf <- (buf * mu + 0) + g'
//   d   = g' + (buf * mu + 0) with Nesterov momentum, else buf
//   p   <- p - (d * lr + 0)
// Block b updates values [(b - first[k]) * CHUNK, ... + CHUNK) of the parameter k with
// first[k] <= b < first[k + 1].
extern "C" __global__ void lt_sgd_step_f32(
    const LtSgdTable t, const unsigned int count, const float mu, const float wd, const float lr,
    const int nesterov) {
    const unsigned int b = blockIdx.x;
    // The last k with first[k] <= b: first[lo] <= b < first[hi] throughout.
    unsigned int lo = 0, hi = count;
    while (hi - lo > 1) {
        const unsigned int mid = lo + (hi - lo) / 2;
        if (t.first[mid] <= b) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    const unsigned int k = lo;
    const size_t start = (size_t)(b - t.first[k]) * LT_SGD_CHUNK;
    const size_t n = t.n[k];
    const size_t end = start + LT_SGD_CHUNK < n ? start + LT_SGD_CHUNK : n;
    float *p = t.p[k];
    const float *g = t.g[k];
    float *buf = t.buf[k];
    for (size_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        const float pi = p[i];
        const float gi = decayed(g[i], pi, wd);
        const float bi = __fadd_rn(__fadd_rn(__fmul_rn(buf[i], mu), 0.0f), gi);
        buf[i] = bi;
        const float d = nesterov ? __fadd_rn(gi, __fadd_rn(__fmul_rn(bi, mu), 0.0f)) : bi;
        p[i] = __fsub_rn(pi, __fadd_rn(__fmul_rn(d, lr), 0.0f));
    }
}
