// The extension module sam3lt._cpu: CPU kernels, registered as torch.ops.sam3lt_cpu.* (the `cpu` backend of
// sam3lt.ops, sam3lt/ops/_cpu.py). Built by setup.py with the C++ compiler only: no CUDA toolkit needed.
//
// winograd_conv3x3: a 3x3, stride-1, undilated fp32 convolution as Winograd F(4x4, 3x3) (Lavin & Gray 2016;
// points 0, +-1, +-2, inf): 36 GEMMs of (tiles x C) @ (C x K) do the work of 144 multiplies per 4x4 output tile
// where the direct convolution needs 576 per tile, so 4x fewer flops; the GEMMs are torch's (MKL) and the tile
// transforms are here. Per chunk of tiles (a workspace that stays in cache): input transform V = B^T d B ->
// bmm(V, U) -> output transform A^T M A + bias, written channels-last. U = G g G^T is the caller's (computed
// once per weight in fp64, sam3lt/ops/conv.py). The fp32 error is ~1e-5 of the output's scale (direct: ~2e-6).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "multiversion.h"  // the transforms vectorise over channels, widest ISA picked at load time

namespace sam3lt {
namespace cpu {
namespace {

constexpr int64_t kCB = 64;       // channels per block: a tile's 36 x 64 floats (9 KiB) stay in L1
constexpr int64_t kChunk = 64;    // tiles per GEMM chunk: V and M (36 x 64 x 256 floats each) stay in L2

struct Shape {
  int64_t N, C, H, W, K, pad, Ho, Wo, Th, Tw;
};

// o[i] = (B^T d)[i] for six rows d0..d5 of n channels
inline void bt6(const float* d0, const float* d1, const float* d2, const float* d3, const float* d4,
                const float* d5, float* const o[6], int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const float a0 = d0[c], a1 = d1[c], a2 = d2[c], a3 = d3[c], a4 = d4[c], a5 = d5[c];
    o[0][c] = 4.f * a0 - 5.f * a2 + a4;
    o[1][c] = -4.f * (a1 + a2) + a3 + a4;
    o[2][c] = 4.f * (a1 - a2) - a3 + a4;
    o[3][c] = 2.f * (a3 - a1) - a2 + a4;
    o[4][c] = 2.f * (a1 - a3) - a2 + a4;
    o[5][c] = 4.f * a1 - 5.f * a3 + a5;
  }
}

// o[i] = (A^T m)[i] (+ bias) for six rows m0..m5 of n channels
inline void at6(const float* m0, const float* m1, const float* m2, const float* m3, const float* m4,
                const float* m5, const float* bias, float* const o[4], int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const float s12 = m1[c] + m2[c], d12 = m1[c] - m2[c], s34 = m3[c] + m4[c], d34 = m3[c] - m4[c];
    const float b = bias ? bias[c] : 0.f;
    o[0][c] = m0[c] + s12 + s34 + b;
    o[1][c] = d12 + 2.f * d34 + b;
    o[2][c] = s12 + 4.f * s34 + b;
    o[3][c] = d12 + 8.f * d34 + m5[c] + b;
  }
}

// V[ab][t - t0][c] for tiles [t0, t1) of x (N, H, W, C); ld = tiles in the chunk
SAM3LT_MULTIVERSION
void input_tiles(const float* x, const Shape& s, int64_t t0, int64_t t1, int64_t chunk0, int64_t ld, float* v) {
  alignas(64) float tmp[36 * kCB];
  alignas(64) float zero[kCB] = {};
  const float* d[36];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (s.Th * s.Tw), ti = t / s.Tw % s.Th, tj = t % s.Tw, tl = t - chunk0;
    for (int64_t c0 = 0; c0 < s.C; c0 += kCB) {
      const int64_t nc = std::min(kCB, s.C - c0);
      for (int a = 0; a < 6; ++a) {
        const int64_t r = 4 * ti - s.pad + a;
        for (int b = 0; b < 6; ++b) {
          const int64_t q = 4 * tj - s.pad + b;
          d[a * 6 + b] = (r >= 0 && r < s.H && q >= 0 && q < s.W) ? x + ((n * s.H + r) * s.W + q) * s.C + c0 : zero;
        }
      }
      for (int b = 0; b < 6; ++b) {  // rows: tmp[al][b] = sum_a BT[al][a] d[a][b]
        float* const o[6] = {tmp + b * kCB, tmp + (6 + b) * kCB, tmp + (12 + b) * kCB, tmp + (18 + b) * kCB,
                             tmp + (24 + b) * kCB, tmp + (30 + b) * kCB};
        bt6(d[b], d[6 + b], d[12 + b], d[18 + b], d[24 + b], d[30 + b], o, nc);
      }
      for (int al = 0; al < 6; ++al) {  // columns: v[al][be] = sum_b BT[be][b] tmp[al][b]
        float* o[6];
        for (int be = 0; be < 6; ++be) o[be] = v + ((al * 6 + be) * ld + tl) * s.C + c0;
        const float* m = tmp + al * 6 * kCB;
        bt6(m, m + kCB, m + 2 * kCB, m + 3 * kCB, m + 4 * kCB, m + 5 * kCB, o, nc);
      }
    }
  }
}

// y (N, Ho, Wo, K) of tiles [t0, t1) from M[ab][t - chunk0][k]
SAM3LT_MULTIVERSION
void output_tiles(const float* mat, const float* bias, const Shape& s, int64_t t0, int64_t t1, int64_t chunk0,
                  int64_t ld, float* y) {
  alignas(64) float tmp[24 * kCB];
  alignas(64) float out[16 * kCB];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (s.Th * s.Tw), ti = t / s.Tw % s.Th, tj = t % s.Tw, tl = t - chunk0;
    for (int64_t k0 = 0; k0 < s.K; k0 += kCB) {
      const int64_t nk = std::min(kCB, s.K - k0);
      for (int be = 0; be < 6; ++be) {  // rows: tmp[i][be] = sum_al AT[i][al] m[al][be]
        const float* m[6];
        for (int al = 0; al < 6; ++al) m[al] = mat + ((al * 6 + be) * ld + tl) * s.K + k0;
        float* const o[4] = {tmp + be * kCB, tmp + (6 + be) * kCB, tmp + (12 + be) * kCB, tmp + (18 + be) * kCB};
        at6(m[0], m[1], m[2], m[3], m[4], m[5], nullptr, o, nk);
      }
      for (int i = 0; i < 4; ++i) {  // columns, + bias: out[i][j] = sum_be tmp[i][be] A[be][j]
        const float* m = tmp + i * 6 * kCB;
        float* const o[4] = {out + (i * 4) * kCB, out + (i * 4 + 1) * kCB, out + (i * 4 + 2) * kCB,
                             out + (i * 4 + 3) * kCB};
        at6(m, m + kCB, m + 2 * kCB, m + 3 * kCB, m + 4 * kCB, m + 5 * kCB, bias ? bias + k0 : nullptr, o, nk);
      }
      for (int i = 0; i < 4 && 4 * ti + i < s.Ho; ++i) {  // the tile's part inside the output
        for (int j = 0; j < 4 && 4 * tj + j < s.Wo; ++j) {
          float* dst = y + ((n * s.Ho + 4 * ti + i) * s.Wo + 4 * tj + j) * s.K + k0;
          std::copy(out + (i * 4 + j) * kCB, out + (i * 4 + j) * kCB + nk, dst);
        }
      }
    }
  }
}

Shape shape_of(const at::Tensor& x, const at::Tensor& u, int64_t pad) {
  TORCH_CHECK(x.dim() == 4, "winograd_conv3x3: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 36 && u.size(1) == x.size(1),
              "winograd_conv3x3: u must be (36, C, K) with C = ", x.size(1), ", got ", u.sizes());
  TORCH_CHECK(pad >= 0, "winograd_conv3x3: padding must be >= 0, got ", pad);
  Shape s{x.size(0), x.size(1), x.size(2), x.size(3), u.size(2), pad, 0, 0, 0, 0};
  s.Ho = s.H + 2 * pad - 2;
  s.Wo = s.W + 2 * pad - 2;
  TORCH_CHECK(s.Ho > 0 && s.Wo > 0, "winograd_conv3x3: the output would be empty (", s.Ho, " x ", s.Wo, ")");
  s.Th = (s.Ho + 3) / 4;
  s.Tw = (s.Wo + 3) / 4;
  return s;
}

at::Tensor winograd_conv3x3(const at::Tensor& x_in, const at::Tensor& u_in, const c10::optional<at::Tensor>& bias_in,
                            int64_t pad) {
  TORCH_CHECK(x_in.device().is_cpu() && u_in.device().is_cpu(), "winograd_conv3x3: CPU tensors only");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && u_in.scalar_type() == at::kFloat,
              "winograd_conv3x3: float32 only");
  const Shape s = shape_of(x_in, u_in, pad);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor u = u_in.contiguous();
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    bias = bias_in->contiguous();
    TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.numel() == s.K && bias.device().is_cpu(),
                "winograd_conv3x3: bias must be a float32 CPU tensor of K = ", s.K, " values");
  }
  at::Tensor y = at::empty({s.N, s.K, s.Ho, s.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t tiles = s.N * s.Th * s.Tw, chunk = std::min(tiles, kChunk);
  // per-thread workspace, kept between calls: a fresh buffer this size would come from the OS page by page
  thread_local std::vector<float> workspace;
  workspace.resize(std::max<size_t>(workspace.size(), static_cast<size_t>(36 * chunk * (s.C + s.K))));
  float* v = workspace.data();
  float* m = v + 36 * chunk * s.C;
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  const float* xp = x.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  for (int64_t c0 = 0; c0 < tiles; c0 += chunk) {
    const int64_t c1 = std::min(tiles, c0 + chunk), n = c1 - c0;
    at::parallel_for(c0, c1, 1, [&](int64_t t0, int64_t t1) { input_tiles(xp, s, t0, t1, c0, n, v); });
    at::Tensor mv = at::from_blob(m, {36, n, s.K}, opts);
    at::bmm_out(mv, at::from_blob(v, {36, n, s.C}, opts), u);
    at::parallel_for(c0, c1, 1, [&](int64_t t0, int64_t t1) { output_tiles(m, bp, s, t0, t1, c0, n, yp); });
  }
  return y;
}

at::Tensor winograd_conv3x3_meta(const at::Tensor& x, const at::Tensor& u, const c10::optional<at::Tensor>& bias,
                                 int64_t pad) {
  const Shape s = shape_of(x, u, pad);
  return at::empty({s.N, s.K, s.Ho, s.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace
}  // namespace cpu
}  // namespace sam3lt

TORCH_LIBRARY(sam3lt_cpu, m) { m.def("winograd_conv3x3(Tensor x, Tensor u, Tensor? bias, int padding) -> Tensor"); }
TORCH_LIBRARY_IMPL(sam3lt_cpu, CPU, m) { m.impl("winograd_conv3x3", &sam3lt::cpu::winograd_conv3x3); }
TORCH_LIBRARY_IMPL(sam3lt_cpu, Meta, m) { m.impl("winograd_conv3x3", &sam3lt::cpu::winograd_conv3x3_meta); }

// A plain CPython module: importing it (after torch) registers the ops.
static PyModuleDef sam3lt_cpu_module = {PyModuleDef_HEAD_INIT, "sam3lt._cpu",
                                        "CPU kernels of sam3lt, registered as torch.ops.sam3lt_cpu.*", -1, nullptr};

PyMODINIT_FUNC PyInit__cpu(void) {
  PyObject* mod = PyModule_Create(&sam3lt_cpu_module);
  if (mod == nullptr) return nullptr;
#ifdef SAM3LT_TORCH_VERSION
#define SAM3LT_CPU_STR_(...) #__VA_ARGS__
#define SAM3LT_CPU_STR(...) SAM3LT_CPU_STR_(__VA_ARGS__)
  if (PyModule_AddStringConstant(mod, "__torch_version__", SAM3LT_CPU_STR(SAM3LT_TORCH_VERSION)) < 0) {
#else
  if (PyModule_AddStringConstant(mod, "__torch_version__", "unknown") < 0) {
#endif
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
