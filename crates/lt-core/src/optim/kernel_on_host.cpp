// passes.cu's SGD kernel run on the host, for the test in optim/table.rs (compiled with a C++
// compiler and -I to this folder): every block and thread of each launch in turn, with CUDA's
// round-to-nearest intrinsics as plain float operations (no contraction: -ffp-contract=off).
//
// Input file (argv[1]), little-endian: mu, wd, lr (f32), nesterov (i32), launches (u32); per
// launch: count, blocks (u32), n[count], first[count + 1] (u32); then per parameter, in order,
// its n values of p, g and buf (f32). Output file (argv[2]): per parameter, p then buf.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

struct Dim {
    unsigned int x, y, z;
};
static Dim blockIdx, threadIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
static float __fadd_rn(float a, float b) { return a + b; }
static float __fsub_rn(float a, float b) { return a - b; }
static float __fmul_rn(float a, float b) { return a * b; }
#include "passes.cu"

template <typename T> static T take(FILE *f) {
    T v;
    if (fread(&v, sizeof v, 1, f) != 1) throw "input ends early";
    return v;
}

struct Launch {
    unsigned int count, blocks;
    std::vector<unsigned int> n, first;
};

int main(int argc, char **argv) try {
    if (argc != 3) throw "usage: kernel_on_host IN OUT";
    FILE *in = fopen(argv[1], "rb");
    if (!in) throw "cannot open the input";
    const float mu = take<float>(in), wd = take<float>(in), lr = take<float>(in);
    const int nesterov = take<int32_t>(in);
    std::vector<Launch> launches(take<uint32_t>(in));
    for (Launch &l : launches) {
        l.count = take<uint32_t>(in);
        l.blocks = take<uint32_t>(in);
        for (unsigned int k = 0; k < l.count; k++) l.n.push_back(take<uint32_t>(in));
        for (unsigned int k = 0; k <= l.count; k++) l.first.push_back(take<uint32_t>(in));
    }
    std::vector<std::vector<float>> params;
    for (const Launch &l : launches)
        for (unsigned int k = 0; k < l.count; k++)
            for (int part = 0; part < 3; part++) {
                std::vector<float> v(l.n[k]);
                for (float &x : v) x = take<float>(in);
                params.push_back(v);
            }
    fclose(in);
    blockDim = {256, 1, 1};
    size_t next = 0;
    for (const Launch &l : launches) {
        LtSgdTable t;
        memset(&t, 0, sizeof t);
        for (unsigned int k = 0; k < l.count; k++, next++) {
            t.p[k] = params[3 * next].data();
            t.g[k] = params[3 * next + 1].data();
            t.buf[k] = params[3 * next + 2].data();
            t.n[k] = l.n[k];
        }
        for (unsigned int k = 0; k <= l.count; k++) t.first[k] = l.first[k];
        for (unsigned int b = 0; b < l.blocks; b++)
            for (unsigned int th = 0; th < blockDim.x; th++) {
                blockIdx = {b, 0, 0};
                threadIdx = {th, 0, 0};
                lt_sgd_step_f32(t, l.count, mu, wd, lr, nesterov);
            }
    }
    FILE *out = fopen(argv[2], "wb");
    if (!out) throw "cannot open the output";
    for (size_t k = 0; k < next; k++)
        for (int part : {0, 2})
            fwrite(params[3 * k + part].data(), sizeof(float), params[3 * k + part].size(), out);
    fclose(out);
    return 0;
} catch (const char *e) {
    fprintf(stderr, "kernel_on_host: %s\n", e);
    return 2;
}
