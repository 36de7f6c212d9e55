// attention: softmax(q k^T * scale) v for fp32 CPU tensors, one (head, block of query rows) per task. Each task
// keeps its score block (rows x keys) in L2: S = Q_b K^T and O_b = P V are single-threaded MKL GEMMs on the
// operands where they lie (any row strides: q, k, v are views of a fused QKV tensor), the softmax runs in
// place in between, and the 1/sum goes on the 64-wide output rows instead of the score rows. torch's CPU
// flash attention instead streams keys in blocks with an online softmax, which costs it rescaling passes at
// these lengths (a few hundred to a few thousand keys, all of which fit in L2 with one block of rows).
//
// MKL is torch's (libtorch_cpu exports the Fortran sgemm and VML entry points); declared weak so this library
// loads without it, where attention_available() says false.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void vmsExp(int n, const float* a, float* r, long long mode) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));
}

#include "multiversion.h"  // the row loops vectorise, widest ISA picked at load time

namespace sam3lt {
namespace cpu {
namespace {

constexpr long long kVmlHighAccuracy = 0x2;
constexpr int64_t kScoreBytes = 512 * 1024;  // one task's block of scores: L2-resident next to its K and V

bool attention_available() { return sgemm_ && vmsExp && MKL_Set_Num_Threads_Local; }

int as_int(const char* what, int64_t v) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "attention: ", what, " = ", v,
              " does not fit MKL's 32-bit integers");
  return static_cast<int>(v);
}

// 16 floats, unaligned loads and stores allowed; each target clone compiles it to its own vector width
typedef float v16 __attribute__((vector_size(64), aligned(4), may_alias));

inline v16 splat(float x) { return v16{} + x; }

inline float hmax(v16 v) {
  float m = v[0];
  for (int i = 1; i < 16; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

inline float hsum(v16 v) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// Logits in place, for a row of raw scores q.k: scaled, plus the separable bias (bias_y[y] + bias_x[x] at key
// y*wg + x), or -inf where the key mask is false.
SAM3LT_MULTIVERSION void biased_logits(float* r, int64_t hg, int64_t wg, float scale, const float* by,
                                       const float* bx) {
  const int64_t vec = wg - wg % 16;
  const v16 vs = splat(scale);
  for (int64_t y = 0; y < hg; ++y, r += wg) {
    const v16 vy = splat(by[y]);
    for (int64_t x = 0; x < vec; x += 16) {
      v16* p = reinterpret_cast<v16*>(r + x);
      *p = *p * vs + vy + *reinterpret_cast<const v16*>(bx + x);
    }
    for (int64_t x = vec; x < wg; ++x) r[x] = r[x] * scale + by[y] + bx[x];
  }
}

void masked_logits(float* r, int64_t keys, float scale, const bool* valid) {
  for (int64_t j = 0; j < keys; ++j) r[j] = valid[j] ? r[j] * scale : -std::numeric_limits<float>::infinity();
}

// A row of logits (times `scale`) in place -> exp(scale * (l - max l)); returns 1 / sum, or 0 (and a zero row)
// when every key is masked: the output row is then zeros, as torch's CPU SDPA gives.
SAM3LT_MULTIVERSION float softmax_row(float* r, int64_t keys, float scale) {
  const int64_t vec = keys - keys % 16;
  v16 vm = splat(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < vec; j += 16) {
    const v16 x = *reinterpret_cast<const v16*>(r + j);
    vm = x > vm ? x : vm;
  }
  float mx = hmax(vm);
  for (int64_t j = vec; j < keys; ++j) mx = r[j] > mx ? r[j] : mx;
  if (mx == -std::numeric_limits<float>::infinity()) {
    std::fill(r, r + keys, 0.f);
    return 0.f;
  }
  const float shift = mx * scale;
  const v16 vs = splat(scale), vsh = splat(shift);
  for (int64_t j = 0; j < vec; j += 16) {
    v16* x = reinterpret_cast<v16*>(r + j);
    *x = *x * vs - vsh;
  }
  for (int64_t j = vec; j < keys; ++j) r[j] = r[j] * scale - shift;
  vmsExp(static_cast<int>(keys), r, r, kVmlHighAccuracy);
  v16 acc = splat(0.f);
  for (int64_t j = 0; j < vec; j += 16) acc += *reinterpret_cast<const v16*>(r + j);
  float sum = hsum(acc);
  for (int64_t j = vec; j < keys; ++j) sum += r[j];
  return 1.f / sum;
}

// out rows (stride ld) *= inv[row]
SAM3LT_MULTIVERSION void scale_rows(float* out, int64_t rows, int64_t d, int64_t ld, const float* inv) {
  for (int64_t i = 0; i < rows; ++i) {
    float* r = out + i * ld;
    const float f = inv[i];
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) r[j] *= f;
  }
}

// RoPE of `rows` rows of D (row stride ld) into dst (contiguous): per channel pair (e, o)
// out_e = x_e cos_e - x_o sin_e, out_o = x_o cos_o + x_e sin_o (apply_rope's formula); ssin is sin with the even
// channels negated, so that out = x * cos + swap_pairs(x) * ssin.
SAM3LT_MULTIVERSION void rotate_rows(const float* x, int64_t rows, int64_t d, int64_t ld, const float* cos,
                                     const float* ssin, float* dst) {
  const int64_t vec = d - d % 16;
  for (int64_t i = 0; i < rows; ++i, x += ld, cos += d, ssin += d, dst += d) {
    for (int64_t j = 0; j < vec; j += 16) {
      const v16 xv = *reinterpret_cast<const v16*>(x + j);
      typedef int i16 __attribute__((vector_size(64)));
      const v16 sw = __builtin_shuffle(xv, i16{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
      *reinterpret_cast<v16*>(dst + j) =
          xv * *reinterpret_cast<const v16*>(cos + j) + sw * *reinterpret_cast<const v16*>(ssin + j);
    }
    for (int64_t j = vec; j < d; j += 2) {
      dst[j] = x[j] * cos[j] + x[j + 1] * ssin[j];
      dst[j + 1] = x[j + 1] * cos[j + 1] + x[j] * ssin[j + 1];
    }
  }
}

void check_operand(const char* what, const at::Tensor& t, int64_t b, int64_t h, int64_t d) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.device().is_cpu(), "attention: ", what,
              " must be a 4-D float32 CPU tensor (B, heads, L, D), got ", t.sizes(), " ", t.scalar_type());
  TORCH_CHECK(t.size(0) == b && t.size(1) == h && t.size(3) == d, "attention: ", what, " has shape ", t.sizes(),
              ", expected (", b, ", ", h, ", L, ", d, ")");
  TORCH_CHECK(t.stride(3) == 1 || t.size(3) == 1, "attention: ", what, " must have a contiguous last dimension");
}

at::Tensor optional_operand(const char* what, const c10::optional<at::Tensor>& t, at::IntArrayRef shape,
                            at::ScalarType dtype) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->scalar_type() == dtype && t->device().is_cpu() && t->sizes() == shape, "attention: ", what,
              " must be a ", dtype, " CPU tensor of shape ", shape, ", got ", t->scalar_type(), " ", t->sizes());
  return t->contiguous();
}

// q (B, H, Lq, D), k and v (B, H, Lk, D), last dimension contiguous -> (B, Lq, H, D) contiguous. Optional:
// bias_y (B, H, Lq, Hg) and bias_x (B, H, Lq, Wg) with Lk = Hg * Wg (both or neither); key_mask (B, Lk) bool,
// true = attend; cos and sin (L, D) fp32: RoPE applied to q and k first (self-attention, Lq = Lk = L, D even).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     const c10::optional<at::Tensor>& bias_y_in, const c10::optional<at::Tensor>& bias_x_in,
                     const c10::optional<at::Tensor>& key_mask_in, const c10::optional<at::Tensor>& cos_in,
                     const c10::optional<at::Tensor>& sin_in) {
  TORCH_CHECK(attention_available(), "attention: this torch has no MKL (sgemm / vmsExp are not exported)");
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3);
  check_operand("q", q, b, h, d);
  check_operand("k", k, b, h, d);
  check_operand("v", v, b, h, d);
  const int64_t lk = k.size(2);
  TORCH_CHECK(v.size(2) == lk, "attention: k and v must have the same length, got ", lk, " and ", v.size(2));
  TORCH_CHECK(lk > 0 && d > 0, "attention: needs at least one key and a nonzero head dim");
  for (const auto* t : {&q, &k, &v})
    TORCH_CHECK(t->stride(2) >= d || t->size(2) == 1, "attention: q, k, v rows must not overlap (row stride >= D)");
  const bool biased = bias_y_in.has_value() && bias_y_in->defined();
  TORCH_CHECK(biased == (bias_x_in.has_value() && bias_x_in->defined()),
              "attention: bias_y and bias_x come together");
  const int64_t hg = biased ? bias_y_in->size(-1) : 0, wg = biased ? bias_x_in->size(-1) : 0;
  TORCH_CHECK(!biased || hg * wg == lk, "attention: bias_y and bias_x must cover Hg * Wg = Lk = ", lk, " keys");
  const at::Tensor by = optional_operand("bias_y", bias_y_in, {b, h, lq, hg}, at::kFloat);
  const at::Tensor bx = optional_operand("bias_x", bias_x_in, {b, h, lq, wg}, at::kFloat);
  const at::Tensor mask = optional_operand("key_mask", key_mask_in, {b, lk}, at::kBool);
  TORCH_CHECK(!(biased && mask.defined()), "attention: takes a bias or a key mask, not both");
  const float* byp = biased ? by.data_ptr<float>() : nullptr;
  const float* bxp = biased ? bx.data_ptr<float>() : nullptr;
  const bool* mp = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const bool rope = cos_in.has_value() && cos_in->defined();
  TORCH_CHECK(rope == (sin_in.has_value() && sin_in->defined()), "attention: cos and sin come together");
  TORCH_CHECK(!rope || (lq == lk && d % 2 == 0), "attention: RoPE (cos, sin) needs self-attention (Lq = Lk) and "
              "an even head dim, got Lq = ", lq, ", Lk = ", lk, ", D = ", d);
  const at::Tensor cos = optional_operand("cos", cos_in, {lk, d}, at::kFloat);
  at::Tensor ssin = optional_operand("sin", sin_in, {lk, d}, at::kFloat);
  if (rope) {  // sin with the even channels negated (see rotate_rows)
    ssin = ssin.clone();
    ssin.view({lk, d / 2, 2}).select(2, 0).neg_();
  }
  const float* cp = rope ? cos.data_ptr<float>() : nullptr;
  const float* sp = rope ? ssin.data_ptr<float>() : nullptr;
  at::Tensor out = at::empty({b, lq, h, d}, q.options());
  if (b * h * lq == 0) return out;
  // even blocks of query rows, each's scores within kScoreBytes (a thin last block would run thin GEMMs)
  const int64_t max_block = std::max<int64_t>(1, std::min<int64_t>(lq, kScoreBytes / (4 * lk)));
  const int64_t blocks = (lq + max_block - 1) / max_block;
  const int64_t block = (lq + blocks - 1) / blocks;
  const int n_d = as_int("D", d), n_lk = as_int("Lk", lk);
  const int ldq = as_int("q row stride", q.stride(2)), ldk = as_int("k row stride", k.stride(2));
  const int ldv = as_int("v row stride", v.stride(2)), ldo = as_int("output row stride", h * d);
  as_int("Lq", lq);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, b * h * blocks, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> scores, inv, rq, rk;
    scores.resize(std::max<size_t>(scores.size(), static_cast<size_t>(block * lk)));
    inv.resize(std::max<size_t>(inv.size(), static_cast<size_t>(block)));
    if (rope) {
      rq.resize(std::max<size_t>(rq.size(), static_cast<size_t>(block * d)));
      rk.resize(std::max<size_t>(rk.size(), static_cast<size_t>(lk * d)));
    }
    int64_t rotated_head = -1;  // the (batch, head) whose rotated keys rk holds: a thread's tasks go head by head
    const float one = 1.f, zero = 0.f;
    // one MKL thread per task: the tasks are the parallelism (torch turns MKL's dynamic threads off, so a
    // GEMM inside a parallel region would otherwise start a team of its own)
    const int mkl_threads = MKL_Set_Num_Threads_Local(1);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / blocks, r0 = (t % blocks) * block, rows = std::min(block, lq - r0);
      const int64_t bi = bh / h, hi = bh % h;
      const float* qb = qp + bi * q.stride(0) + hi * q.stride(1) + r0 * q.stride(2);
      const float* kb = kp + bi * k.stride(0) + hi * k.stride(1);
      int lda_k = ldk, lda_q = ldq;
      if (rope) {
        if (rotated_head != bh) rotate_rows(kb, lk, d, k.stride(2), cp, sp, rk.data());
        rotated_head = bh;
        rotate_rows(qb, rows, d, q.stride(2), cp + r0 * d, sp + r0 * d, rq.data());
        qb = rq.data();
        kb = rk.data();
        lda_k = lda_q = n_d;
      }
      const float* vb = vp + bi * v.stride(0) + hi * v.stride(1);
      float* ob = op + (bi * lq + r0) * h * d + hi * d;
      const int n_rows = static_cast<int>(rows);
      // column-major view: S^T (Lk x rows) = K (Lk x D) . Q_b^T (D x rows)
      sgemm_("T", "N", &n_lk, &n_rows, &n_d, &one, kb, &lda_k, qb, &lda_q, &zero, scores.data(), &n_lk);
      for (int64_t i = 0; i < rows; ++i) {
        float* r = scores.data() + i * lk;
        const int64_t row = bh * lq + r0 + i;
        if (byp) biased_logits(r, hg, wg, s, byp + row * hg, bxp + row * wg);
        if (mp) masked_logits(r, lk, s, mp + bi * lk);
        inv[i] = softmax_row(r, lk, byp || mp ? 1.f : s);
      }
      // O_b^T (D x rows) = V^T (D x Lk) . P^T (Lk x rows)
      sgemm_("N", "N", &n_d, &n_rows, &n_lk, &one, vb, &ldv, scores.data(), &n_lk, &zero, ob, &ldo);
      scale_rows(ob, rows, d, h * d, inv.data());
    }
    MKL_Set_Num_Threads_Local(mkl_threads);
  });
  return out;
}

at::Tensor attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                          const c10::optional<at::Tensor>& bias_y, const c10::optional<at::Tensor>& bias_x,
                          const c10::optional<at::Tensor>& key_mask, const c10::optional<at::Tensor>& cos,
                          const c10::optional<at::Tensor>& sin) {
  TORCH_CHECK(q.dim() == 4, "attention: q must be (B, heads, L, D), got ", q.sizes());
  return at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options());
}

}  // namespace
}  // namespace cpu
}  // namespace sam3lt

TORCH_LIBRARY_FRAGMENT(sam3lt_cpu, m) {
  m.def("attention_available() -> bool", &sam3lt::cpu::attention_available);
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? bias_y=None, Tensor? bias_x=None, "
        "Tensor? key_mask=None, Tensor? cos=None, Tensor? sin=None) -> Tensor");
}
TORCH_LIBRARY_IMPL(sam3lt_cpu, CPU, m) { m.impl("attention", &sam3lt::cpu::attention); }
TORCH_LIBRARY_IMPL(sam3lt_cpu, Meta, m) { m.impl("attention", &sam3lt::cpu::attention_meta); }
