// CPU kernels of the native GRU (grutrain_native::* behind the CPU dispatch key).
//
// Equations (torch.nn.GRU's gate layout, rows of w_ih / w_hh ordered r, z, n):
//   r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)      z likewise
//   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))   reset="after"  (torch.nn.GRU, cuDNN)
//   n = tanh(x W_in^T + b_in + (r*h) W_hn^T + b_hn)     reset="before" (Cho et al. 2014)
//   h' = n + z (h - n)
//
// Forward: ONE GEMM for the input projections of all steps (written straight into the workspace),
// then per step one GEMM h W_hh^T into a small gate buffer and ONE vectorised pass over the gates
// (at::vec::Vectorized, at::parallel_for over batch rows) that writes the gate values the
// backward needs, the output row and (mixed precision) the bfloat16 copy of h for the next GEMM.
// reset="before" needs r before its second product: two GEMMs and two passes per step.
// The bfloat16 route's training forward keeps its workspace in bfloat16 (half the memory held
// until backward): the input projections then go to a float buffer of a few steps instead, and
// the output is computed exactly as with a float32 workspace.
// Backward: per step one pass (widening bfloat16 gates on load) writing all gate gradients (+ the
// bias sums, per thread) and one GEMM for dh; then dW_hh, dW_ih and dx are one GEMM each over the
// stacked [T*B, .] gradients (per time chunk of at most `chunk_bytes` of gradient buffer, reused
// across chunks).
//
// GEMMs: MKL's sgemm_ / packed sgemm / cblas_gemm_bf16bf16f32, looked up at run time
// in the already loaded libtorch (no link-time dependency); where they are missing (non-MKL
// builds), at::mm_out / at::addmm_out on strided views. The bfloat16 route takes MKL's bf16 GEMM on
// Intel CPUs (knob bf16_gemm): float products straight into the gate buffer / dh, rows split over
// threads like float32; elsewhere oneDNN (at::mm) with bf16 products.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <dlfcn.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace grutrain_native {
namespace {

using at::Tensor;
using at::vec::Vectorized;
using BF16 = c10::BFloat16;

// ------------------------------------------------------------------------------------------
// Tuning knobs (cpu_tune op): read per call.
// ------------------------------------------------------------------------------------------
struct Tuning {
  int64_t chunk_bytes = 2 << 20;    // backward gradient buffer cap (bytes of F, reused per time
                                    // chunk; the bf16 route's holds as many steps in half of it)
  int64_t infer_chunk_bytes = 1 << 20;  // no-grad forward: gate buffer cap (L2-sized, reused)
  int64_t lowp_workspace = 1;       // bf16 route: keep the training workspace in bfloat16 (0: float)
  int64_t proj_chunk_bytes = 0;     // bf16 training forward: input projection buffer cap (0: the
                                    // backward's gradient buffer bytes)
  int64_t grain_elems = 4096;       // elements of a gate pass per parallel task
  int64_t lowp_min_hidden = 64;     // mixed precision: bf16 recurrent + batched products from this H
  int64_t lowp_min_input = 0;       // mixed precision: bf16 input projection from this I (0: auto,
                                    // 32 with MKL's bf16 products, else 64; where each was faster)
  int64_t packed_min_hidden = 1;    // float32: MKL packed W_hh for the per-step product from this H
  int64_t packed_max_batch = 1 << 20;  //   ... and up to this batch
  int64_t packed_min_steps = 16;    //   ... over at least this many steps
  int64_t packed_min_work = 1 << 24;  //   ... and products of at least this many multiply-adds in all
                                    //   (steps x batch x W_hh's elements): packing costs ~0.1 ms, which
                                    //   a no-grad forward at 48,8,8,64 (4.7M) lost, 48,32,8,64 (19M) won
  int64_t packed_backward = 1;      //   ... in the backward's per-step products too (0: never)
  // MKL's packed copy is never below ~7.9 MB (its fixed layout; 10.5 MB for a [1536, 512] W_hh), so
  // where it goes is a memory question. Training packs where the copy is at most this percentage of
  // the workspace the step saves anyway (the peak stays under torch.nn.GRU's at the standard shapes);
  // the no-grad forward, which keeps nothing, where it is at most infer bytes.
  int64_t packed_train_percent = 100;
  int64_t packed_infer_bytes = 64 << 20;
  int64_t small_gemm_max_elems = 3072;  // float32 backward: G W_hh by small_gemm, not MKL, up to this many
                                    // elements of W_hh (H <= 32; at H = 32 the training step -4-7%, at
                                    // H = 64 and 128 +8%; in the forward, h W_hh^T, it was 8% slower)
  int64_t dw_transposed_max_hidden = 128;  // float: dW_hh computed as its transpose h^T G up to this H
                                    // (MKL 10-20% faster that way at H <= 128, the same at 256-512)
  int64_t step_w_copy = 1;          // float forward: unpacked per-step products read a contiguous copy
                                    // of W_hh^T (0: W_hh as stored, transposed in the GEMM call)
  int64_t dw_ih_transposed = 1;     // float: dW_ih computed as its transpose x^T G (0: G^T x); 2x less
                                    // time for this product at 35,32,28,256, the same at I = 1
  int64_t use_blas = 1;             // 0: force the at::mm fallback (tests)
  int64_t split_min_rows = 16;      // float: each thread runs the time loop on its own batch rows
  int64_t split_max_hidden = 128;   //   ... with at least this many rows each, up to this H (above,
                                    //   MKL's threaded (packed) GEMM on the whole batch was faster)
  int64_t bf16_gemm = 0;            // bf16 x bf16 products: 0 auto (MKL on Intel CPUs), 1 oneDNN
                                    // (at::mm), 2 MKL's cblas_gemm_bf16bf16f32 where it is loaded
  int64_t step_proj_max_input = 16;  // float: up to this input size the forward computes each
                                    // step's input projection next to its gate pass (0: never)
  int64_t step_proj_scratch = 1;    //   ... into a reused [B, 3H] buffer (0: into the workspace)
};
bool g_fast_math = true;  // the gate pass's AVX512 exp and reciprocal (see vsigmoid)
std::atomic<int64_t> g_packed_count{0};  // StepMatmuls that packed W_hh (knob packed_count)

Tuning& tuning() {
  static Tuning t;
  return t;
}

int64_t cpu_tune(c10::string_view name, int64_t value) {
  Tuning& t = tuning();
  int64_t* slot = nullptr;
  const std::string n(name);
  if (n == "chunk_bytes") slot = &t.chunk_bytes;
  else if (n == "infer_chunk_bytes") slot = &t.infer_chunk_bytes;
  else if (n == "proj_chunk_bytes") slot = &t.proj_chunk_bytes;
  else if (n == "lowp_workspace") slot = &t.lowp_workspace;
  else if (n == "grain_elems") slot = &t.grain_elems;
  else if (n == "lowp_min_hidden") slot = &t.lowp_min_hidden;
  else if (n == "lowp_min_input") slot = &t.lowp_min_input;
  else if (n == "packed_min_hidden") slot = &t.packed_min_hidden;
  else if (n == "packed_max_batch") slot = &t.packed_max_batch;
  else if (n == "packed_min_steps") slot = &t.packed_min_steps;
  else if (n == "packed_min_work") slot = &t.packed_min_work;
  else if (n == "packed_backward") slot = &t.packed_backward;
  else if (n == "packed_train_percent") slot = &t.packed_train_percent;
  else if (n == "packed_infer_bytes") slot = &t.packed_infer_bytes;
  else if (n == "small_gemm_max_elems") slot = &t.small_gemm_max_elems;
  else if (n == "packed_count") {  // read-only: g_packed_count (tests)
    return g_packed_count.load();
  }
  else if (n == "dw_transposed_max_hidden") slot = &t.dw_transposed_max_hidden;
  else if (n == "dw_ih_transposed") slot = &t.dw_ih_transposed;
  else if (n == "step_w_copy") slot = &t.step_w_copy;
  else if (n == "use_blas") slot = &t.use_blas;
  else if (n == "split_min_rows") slot = &t.split_min_rows;
  else if (n == "split_max_hidden") slot = &t.split_max_hidden;
  else if (n == "bf16_gemm") slot = &t.bf16_gemm;
  else if (n == "step_proj_max_input") slot = &t.step_proj_max_input;
  else if (n == "step_proj_scratch") slot = &t.step_proj_scratch;
  else if (n == "fast_math") {
    const int64_t old = g_fast_math ? 1 : 0;
    if (value >= 0) g_fast_math = value != 0;
    return old;
  }
  TORCH_CHECK(slot != nullptr, "grutrain_native::cpu_tune: unknown knob '", n, "'");
  const int64_t old = *slot;
  if (value >= 0) *slot = value;  // a negative value only reads
  return old;
}

// ------------------------------------------------------------------------------------------
// BLAS, resolved at run time.
// ------------------------------------------------------------------------------------------
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                          const float*, const int*, const float*, const int*, const float*, float*,
                          const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*,
                          const double*, const int*, const double*, const int*, const double*, double*,
                          const int*);
using pack_size_fn = size_t (*)(int, int, int, int);
using pack_fn = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
using compute_fn = void (*)(int, int, int, int, int, int, const float*, int, const float*, int, float,
                            float*, int);
// MKL's bf16 x bf16 -> float GEMM (MKL_BF16 is a uint16_t; c10::BFloat16 has the same bits).
using gemm_bf16_fn = void (*)(int, int, int, int, int, int, float, const BF16*, int, const BF16*, int, float,
                              float*, int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

struct Blas {
  sgemm_fn sgemm = nullptr;
  dgemm_fn dgemm = nullptr;
  pack_size_fn pack_size = nullptr;
  pack_fn pack = nullptr;
  compute_fn compute = nullptr;
  gemm_bf16_fn gemm_bf16 = nullptr;  // torch's MKL has no _pack/_compute variants of it
};

void* find_symbol(const char* name) {
  void* p = dlsym(RTLD_DEFAULT, name);
  if (p == nullptr) {
    // libtorch_cpu was loaded RTLD_LOCAL by torch._C: look it up through a symbol of it.
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &info) && info.dli_fname) {
      void* h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
      if (h) p = dlsym(h, name);
    }
  }
  return p;
}

const Blas& blas_symbols() {
  static const Blas b = [] {
    Blas r;
    r.sgemm = reinterpret_cast<sgemm_fn>(find_symbol("sgemm_"));
    r.dgemm = reinterpret_cast<dgemm_fn>(find_symbol("dgemm_"));
    r.pack_size = reinterpret_cast<pack_size_fn>(find_symbol("cblas_sgemm_pack_get_size"));
    r.pack = reinterpret_cast<pack_fn>(find_symbol("cblas_sgemm_pack"));
    r.compute = reinterpret_cast<compute_fn>(find_symbol("cblas_sgemm_compute"));
    if (!(r.pack_size && r.pack && r.compute)) r.pack_size = nullptr;
    r.gemm_bf16 = reinterpret_cast<gemm_bf16_fn>(find_symbol("cblas_gemm_bf16bf16f32"));
    return r;
  }();
  return b;
}

inline bool use_blas() { return tuning().use_blas != 0; }

// MKL runs its generic (slow) bf16 code on non-Intel CPUs (2x slower than oneDNN on an AMD EPYC
// with AVX512-BF16), so "auto" takes it only on GenuineIntel.
bool genuine_intel() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool intel = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    return b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;  // "Genu" "ineI" "ntel"
  }();
  return intel;
#else
  return false;
#endif
}

// The bfloat16 route's products through MKL's cblas_gemm_bf16bf16f32 (float C, no rounding of the
// product to bf16) rather than at::mm (oneDNN): per the bf16_gemm knob, where MKL is loaded.
inline bool mkl_bf16() {
  const int64_t k = tuning().bf16_gemm;
  if (k == 1 || !use_blas() || blas_symbols().gemm_bf16 == nullptr) return false;
  return k == 2 || genuine_intel();
}

// A row-major matrix (possibly the transpose of what is stored) as a strided tensor view.
template <typename S>
Tensor as_view(const S* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value);
  if (!trans) return at::from_blob(const_cast<S*>(p), {rows, cols}, {ld, 1}, opts);
  return at::from_blob(const_cast<S*>(p), {cols, rows}, {ld, 1}, opts).t();
}

// C[M, N] (ld ldc) = beta * C + p[M, N] (contiguous bfloat16), widened to float.
void widen_into(const BF16* p, int64_t M, int64_t N, float beta, float* C, int64_t ldc);

// Row-major C[M,N] = op(A)[M,K] op(B)[K,N] + beta * C. op(A) = A^T when ta (A stored [K,M]).
// A, B of type S (float, double or bfloat16), C of type R (float or double).
template <typename S, typename R>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const S* A, int64_t lda, const S* B,
          int64_t ldb, float beta, R* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 0.f)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, R(0));
    return;
  }
  const Blas& b = blas_symbols();
  if constexpr (std::is_same_v<S, float>) {
    if (b.sgemm && use_blas()) {
      const int m = N, n = M, k = K, la = lda, lb = ldb, lc = ldc;  // column-major: C^T = B^T A^T
      const float one = 1.f;
      b.sgemm(tb ? "T" : "N", ta ? "T" : "N", &m, &n, &k, &one, B, &lb, A, &la, &beta, C, &lc);
      return;
    }
  } else if constexpr (std::is_same_v<S, double>) {
    if (b.dgemm && use_blas()) {
      const int m = N, n = M, k = K, la = lda, lb = ldb, lc = ldc;
      const double one = 1., bt = beta;
      b.dgemm(tb ? "T" : "N", ta ? "T" : "N", &m, &n, &k, &one, B, &lb, A, &la, &bt, C, &lc);
      return;
    }
  } else {
    // bf16 x bf16: MKL where mkl_bf16() (float result), else ATen's mm (oneDNN, AVX512-BF16 where
    // the CPU has it) whose bf16 result is added in float.
    static_assert(std::is_same_v<S, BF16> && std::is_same_v<R, float>, "bf16 x bf16 -> float only");
    if (mkl_bf16()) {
      b.gemm_bf16(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, M, N, K, 1.f, A, lda, B, ldb,
                  beta, C, ldc);
      return;
    }
  }
  // ATen on strided views (also the fallback where MKL's symbols are missing).
  Tensor a = as_view(A, M, K, lda, ta), bm = as_view(B, K, N, ldb, tb), c = as_view(C, M, N, ldc, false);
  if constexpr (std::is_same_v<S, R>) {
    if (beta == 0.f) at::mm_out(c, a, bm);
    else at::addmm_out(c, c, a, bm, beta, 1);
  } else {
    Tensor p = at::mm(a, bm);  // [M, N] in bfloat16, widened into C in place (no float copy of p)
    widen_into(p.data_ptr<BF16>(), M, N, beta, C, ldc);
  }
}

// Row-major C[M,N] = op(A) op(B) in bfloat16 (float accumulation inside the GEMM, one rounding of
// the result), C contiguous: the per-step products of the bfloat16 route; the gate passes read C.
void mm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const BF16* A, int64_t lda, const BF16* B,
             int64_t ldb, BF16* C) {
  Tensor c = as_view(C, M, N, N, false);
  at::mm_out(c, as_view(A, M, K, lda, ta), as_view(B, K, N, ldb, tb));
}

// n <= Vectorized<T>::size() elements from p (the rest zero).
template <typename T>
inline Vectorized<T> vload(const T* p, int64_t n) {
  return n == Vectorized<T>::size() ? Vectorized<T>::loadu(p) : Vectorized<T>::loadu(p, n);
}

// One NR x NV-vector block of small_gemm (compile-time sizes: the accumulators stay in registers).
template <typename T, int NR, int NV>
inline void small_gemm_block(int64_t K, const T* A, int64_t lda, const T* Bk, int64_t ldb, float beta, T* C,
                             int64_t ldc, const int64_t* widths) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = Vec(T(0));
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
    for (int c = 0; c < NV; ++c) b[c] = vload(Bk + k * ldb + c * V, widths[c]);
    for (int r = 0; r < NR; ++r) {
      const Vec a(A[r * lda + k]);
      for (int c = 0; c < NV; ++c) acc[r][c] = at::vec::fmadd(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int c = 0; c < NV; ++c) {
      T* dst = C + r * ldc + c * V;
      if (beta != 0.f) acc[r][c] = acc[r][c] + vload(dst, widths[c]);
      acc[r][c].store(dst, widths[c]);
    }
}

template <typename T, int NR>
inline void small_gemm_rows(int64_t nv, int64_t K, const T* A, int64_t lda, const T* Bk, int64_t ldb, float beta,
                            T* C, int64_t ldc, const int64_t* widths) {
  switch (nv) {
    case 1: small_gemm_block<T, NR, 1>(K, A, lda, Bk, ldb, beta, C, ldc, widths); break;
    case 2: small_gemm_block<T, NR, 2>(K, A, lda, Bk, ldb, beta, C, ldc, widths); break;
    case 3: small_gemm_block<T, NR, 3>(K, A, lda, Bk, ldb, beta, C, ldc, widths); break;
    default: small_gemm_block<T, NR, 4>(K, A, lda, Bk, ldb, beta, C, ldc, widths); break;
  }
}

// C[M,N] = beta C + A[M,K] Bk with Bk [K,N] (ld ldb), beta 0 or 1, in blocks of 4 rows x 4 vectors
// held in registers while k runs: each B vector loaded serves four rows, and a small W_hh stays in
// L1. For the per-step products of small layers, where MKL's per-call copy of its operand costs
// about as much as the arithmetic.
template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Bk, int64_t ldb, float beta,
                T* C, int64_t ldc) {
  constexpr int64_t V = Vectorized<T>::size(), CV = 4;
  for (int64_t j0 = 0; j0 < N; j0 += CV * V) {
    const int64_t nv = std::min<int64_t>(CV, (N - j0 + V - 1) / V);
    int64_t widths[CV];
    for (int64_t c = 0; c < CV; ++c) widths[c] = std::max<int64_t>(0, std::min<int64_t>(V, N - j0 - c * V));
    int64_t i = 0;
    for (; i + 4 <= M; i += 4)
      small_gemm_rows<T, 4>(nv, K, A + i * lda, lda, Bk + j0, ldb, beta, C + i * ldc + j0, ldc, widths);
    for (; i < M; ++i)
      small_gemm_rows<T, 1>(nv, K, A + i * lda, lda, Bk + j0, ldb, beta, C + i * ldc + j0, ldc, widths);
  }
}

// acc[M,N] (+)= h[M,K] W^T with W [N,K] (tw; the forward's h W_hh^T), or h[M,K] W with W [K,N]
// (!tw; the backward's G W_hh): the per-step product, with MKL's packed operand where it fits,
// or (backward, small W) by small_gemm; else, for h W^T, with a contiguous copy of W^T (knob
// step_w_copy): MKL's GEMM with a transposed B spent 20-50% longer per step (one thread, M = 16-256
// rows, H = 32-512; it copies B every call).
template <typename S, typename R>
struct StepMatmul {
  const S* w;
  int64_t N, K;
  bool tw;
  Tensor packed;  // float32 only
  Tensor w_t;     // W^T [K, N], contiguous
  bool small = false;  // by small_gemm (float32, !tw: W is [K, N] as it needs)
  StepMatmul(const S* w_, int64_t N_, int64_t K_, int64_t batch, int64_t steps, int64_t max_bytes,
             bool tw_ = true)
      : w(w_), N(N_), K(K_), tw(tw_) {
    if constexpr (std::is_same_v<S, float>) {
      const Tuning& t = tuning();
      const Blas& b = blas_symbols();
      if (!tw && N * K <= t.small_gemm_max_elems) {
        small = true;
      } else if (b.pack_size && use_blas() && std::min(N, K) >= t.packed_min_hidden && batch <= t.packed_max_batch &&
                 steps >= t.packed_min_steps && steps * batch * N * K >= t.packed_min_work) {
        const size_t bytes = b.pack_size(kBMatrix, batch, N, K);
        if (bytes > 0 && static_cast<int64_t>(bytes) <= max_bytes) {
          packed = at::empty({static_cast<int64_t>((bytes + 3) / 4)}, at::kFloat);
          b.pack(kRowMajor, kBMatrix, tw ? kTrans : kNoTrans, batch, N, K, 1.f, w, ldw(), packed.data_ptr<float>());
          g_packed_count.fetch_add(1);
        }
      }
    }
    if (tw && !packed.defined() && use_blas() && tuning().step_w_copy) {
      w_t = as_view(w, K, N, K, true).contiguous();
      w = w_t.template data_ptr<S>();
      tw = false;
    }
  }
  int64_t ldw() const { return tw ? K : N; }
  void operator()(int64_t M, const S* h, int64_t ldh, float beta, R* acc, int64_t ldc) const {
    if constexpr (std::is_same_v<S, float>) {
      if (small) {
        small_gemm<float>(M, N, K, h, ldh, w, N, beta, acc, ldc);
        return;
      }
      if (packed.defined()) {
        blas_symbols().compute(kRowMajor, kNoTrans, kPacked, M, N, K, h, ldh, packed.data_ptr<float>(), ldw(),
                               beta, acc, ldc);
        return;
      }
    }
    gemm<S, R>(false, tw, M, N, K, h, ldh, w, ldw(), beta, acc, ldc);
  }
};

// C[M,N] (ld ldc) = beta C + A[M,K] op(B) on the bfloat16 route where mkl_bf16(): B a slice of
// W_hh (op(B) = B^T when tb, B stored [N, K]), the same for every step of a call.
struct StepMatmulBf16 {
  const BF16* b;
  int64_t ldb, N, K;
  bool tb;
  StepMatmulBf16(const BF16* b_, int64_t ldb_, bool tb_, int64_t N_, int64_t K_)
      : b(b_), ldb(ldb_), N(N_), K(K_), tb(tb_) {}
  void operator()(int64_t M, const BF16* a, int64_t lda, float beta, float* c, int64_t ldc) const {
    gemm<BF16, float>(false, tb, M, N, K, a, lda, b, ldb, beta, c, ldc);
  }
};

// ------------------------------------------------------------------------------------------
// Vector helpers
// ------------------------------------------------------------------------------------------
// float32: the gate pass is bound by its three transcendentals per element, so they are written
// for throughput. With AVX512: exp by ATen exp_u20's polynomial (~20 ulp) but with the hardware's
// rounding and 2^n scaling (vroundscaleps, vscalefps: 11 instructions instead of 19, NaN passed
// through), and 1/d by the reciprocal estimate refined by one Newton step (within about an ulp of
// the division, several times its throughput). Elsewhere ATen's inline exp_u20 and a division.
// tanh(x) = 1 - 2 / (1 + exp(2x)) then has an absolute error of a few float32 ulps of 1 (like the
// products' rounding); float64 (gradcheck) keeps Sleef's exp and tanh.
// (knob fast_math, g_fast_math: 0 takes exp_u20 and a division everywhere; A/B and tests)

#if defined(CPU_CAPABILITY_AVX512)
// exp(x) for x in [-100, 80] (clamped; NaN stays NaN): 2^n p(x - n ln2), n = round(x log2 e).
inline __m512 exp_avx512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-100.f), _mm512_min_ps(_mm512_set1_ps(80.f), x));  // NaN: 2nd operand
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147181f), x);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// 1 / d for d >= 1 (finite or NaN).
inline __m512 recip_avx512(__m512 d) {
  const __m512 x = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(x, _mm512_fnmadd_ps(d, x, _mm512_set1_ps(2.f)));
}
#endif

template <typename T>
inline Vectorized<T> vsigmoid(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  if constexpr (std::is_same_v<T, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    if (g_fast_math) return recip_avx512(_mm512_add_ps(one, exp_avx512(x.neg())));
#endif
    // exp_u20 clamps its argument, which would turn NaN into a number: keep NaN visible.
    return Vectorized<T>::blendv(one / (one + x.neg().exp_u20()), x, x.isnan());
  } else {
    return one / (one + x.neg().exp());
  }
}

template <typename T>
inline Vectorized<T> vtanh(const Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    const Vectorized<T> one(T(1)), two(T(2));
#if defined(CPU_CAPABILITY_AVX512)
    if (g_fast_math) return _mm512_fnmadd_ps(two, recip_avx512(_mm512_add_ps(one, exp_avx512(x + x))), one);
#endif
    // exp_u20 clamps large arguments (2 / huge -> 1 - 0); NaN is passed through explicitly.
    return Vectorized<T>::blendv(one - two / (one + (x + x).exp_u20()), x, x.isnan());
  } else {
    return x.tanh();
  }
}

inline Vectorized<float> vload(const BF16* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  // bf16 -> float is a 16-bit shift (ATen's inline cvtbf16_fp32); a masked load for the tail.
  const __m256i raw = n == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                              : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
  __m512 v;
  at::vec::cvtbf16_fp32(raw, v);
  return v;
#else
  // A plain loop the compiler vectorises. (ATen's convert_to_float<BFloat16> is not inline for
  // every build: an undefined symbol here.)
  constexpr int64_t V = Vectorized<float>::size();
  alignas(64) uint32_t bits[V];
  const uint16_t* q = reinterpret_cast<const uint16_t*>(p);
  for (int64_t i = 0; i < V; ++i) bits[i] = i < n ? static_cast<uint32_t>(q[i]) << 16 : 0u;
  return Vectorized<float>::loadu(bits);
#endif
}

void widen_into(const BF16* p, int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  using Vec = Vectorized<float>;
  constexpr int64_t V = Vec::size();
  const Vec b(beta);
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, N)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < N; j += V) {
        const int64_t n = std::min(V, N - j);
        Vec v = vload(p + i * N + j, n);
        if (beta != 0.f) v = v + b * Vec::loadu(C + i * ldc + j, n);
        v.store(C + i * ldc + j, n);
      }
  });
}

// float -> bfloat16, rounded to nearest even (NaN stays NaN), n <= Vectorized<float>::size().
inline void vstore_bf16(BF16* dst, const Vectorized<float>& v, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m256i bits = at::vec::cvtfp32_bf16(__m512(v));
  if (n == 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bits);
  else _mm256_mask_storeu_epi16(dst, static_cast<__mmask16>((1u << n) - 1), bits);
#else
  constexpr int64_t V = Vectorized<float>::size();
  alignas(64) uint32_t bits[V];
  alignas(64) uint16_t out[V];
  v.store(bits);
  for (int64_t i = 0; i < V; ++i) {
    const uint32_t u = bits[i];
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    out[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : rounded);
  }
  std::copy_n(out, n, reinterpret_cast<uint16_t*>(dst));
#endif
}

// Store a vector of T as M (T itself, or bfloat16 for the mixed-precision GEMM operands and gates).
template <typename M, typename T>
inline void vstore(M* dst, const Vectorized<T>& v, int64_t n) {
  if constexpr (std::is_same_v<M, T>) {
    v.store(dst, n);
  } else {
    static_assert(std::is_same_v<M, BF16> && std::is_same_v<T, float>, "float -> bfloat16 only");
    vstore_bf16(dst, v, n);
  }
}

// Rows [0, rows) in parallel, in tasks of >= grain_elems elements of `cols` each.
template <typename F>
inline void rows_parallel(int64_t rows, int64_t cols, const F& f) {
  const int64_t grain = std::max<int64_t>(1, tuning().grain_elems / std::max<int64_t>(1, cols));
  if (rows <= grain) {
    f(0, rows);
  } else {
    at::parallel_for(0, rows, grain, f);
  }
}

// Batch rows are independent through the whole time loop (row b of h_t needs only row b of
// h_{t-1}, forward and backward), so where the batch is large enough each thread can run every step
// of a chunk on its own block of rows: one fork-join per chunk instead of two or three per step,
// and single-threaded GEMMs on the block. Returns the number of blocks (1: not split).
inline int64_t row_blocks(int64_t B, int64_t H) {
  const Tuning& t = tuning();
  const int64_t threads = at::get_num_threads();
  if (threads < 2 || H > t.split_max_hidden || t.split_min_rows <= 0) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(threads, B / t.split_min_rows));
}

// f(r0, r1) on `blocks` contiguous blocks of rows [0, B), in parallel (serially for one block).
template <typename F>
inline void for_row_blocks(int64_t B, int64_t blocks, const F& f) {
  if (blocks <= 1) {
    f(0, B);
    return;
  }
  at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) f(k * B / blocks, (k + 1) * B / blocks);
  });
}

// The combined biases as one [4H] vector: "after": [b_ir+b_hr | b_iz+b_hz | b_in | b_hn];
// "before": [b_ir+b_hr | b_iz+b_hz | b_in+b_hn | 0].
template <typename T>
std::vector<T> pack_bias(const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, int64_t H,
                         bool after) {
  std::vector<T> bias(4 * H, T(0));
  if (b_ih && b_ih->defined()) {
    Tensor b = b_ih->contiguous();
    const T* p = b.data_ptr<T>();
    for (int64_t j = 0; j < 3 * H; ++j) bias[j] += p[j];
  }
  if (b_hh && b_hh->defined()) {
    Tensor b = b_hh->contiguous();
    const T* p = b.data_ptr<T>();
    for (int64_t j = 0; j < 2 * H; ++j) bias[j] += p[j];
    for (int64_t j = 2 * H; j < 3 * H; ++j) bias[after ? j + H : j] += p[j];
  }
  return bias;
}

// ------------------------------------------------------------------------------------------
// Forward gate passes (one step, rows [b0, b1))
// ------------------------------------------------------------------------------------------
// The gate values the backward reads are stored as S: T itself, or bfloat16 on the bfloat16
// route's training forward (half the memory of the saved workspace; the state and this step's
// arithmetic stay in T). The input projections x W_ih^T come in `gin` (row stride ldi, cols 0:3H);
// gin may be gs itself (S == T, ldi == the workspace width): each element is read before it is
// overwritten.
//
// "after": gh [B, 3H] = h W_hh^T. Writes r | z | n | hn into gs [B, 4H] (gs null: the no-grad
// forward, nothing kept; 1-3% of its time), h' into hout (and hlast), bf16(h') into hlow.
template <typename T, typename M, typename P, typename S>
void pass_fwd_after(int64_t b0, int64_t b1, int64_t H, const T* gin, int64_t ldi, S* gs, const P* gh,
                    const T* bias, const T* h, T* hout, T* hlast, M* hlow) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t b = b0; b < b1; ++b) {
    const T* gi = gin + b * ldi;
    S* gr = gs ? gs + b * 4 * H : nullptr;
    const P* a = gh + b * 3 * H;
    const T* hp = h + b * H;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t n = std::min(V, H - j);
      Vec r = vsigmoid(vload(gi + j, n) + vload(a + j, n) + vload(bias + j, n));
      Vec z = vsigmoid(vload(gi + H + j, n) + vload(a + H + j, n) + vload(bias + H + j, n));
      Vec hn = vload(a + 2 * H + j, n) + vload(bias + 3 * H + j, n);
      Vec nn = vtanh(vload(gi + 2 * H + j, n) + vload(bias + 2 * H + j, n) + r * hn);
      Vec hv = vload(hp + j, n);
      Vec hnew = nn + z * (hv - nn);
      if (gs) {
        vstore(gr + j, r, n);
        vstore(gr + H + j, z, n);
        vstore(gr + 2 * H + j, nn, n);
        vstore(gr + 3 * H + j, hn, n);
      }
      hnew.store(hout + b * H + j, n);
      if (hlast) hnew.store(hlast + b * H + j, n);
      if constexpr (!std::is_same_v<M, T>) vstore(hlow + b * H + j, hnew, n);
    }
  }
}

// "before", first pass: gh [B, 2H] = h W_{hr,hz}^T. Writes r | z into gs [B, 3H], r*h (as M)
// into rh, and (where gin is not gs) z as T back into gin's z columns: the second pass reads it
// there, unrounded.
template <typename T, typename M, typename P, typename S>
void pass_fwd_before_a(int64_t b0, int64_t b1, int64_t H, T* gin, int64_t ldi, S* gs, const P* gh,
                       const T* bias, const T* h, M* rh) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const bool z_back = static_cast<const void*>(gin) != static_cast<const void*>(gs);
  for (int64_t b = b0; b < b1; ++b) {
    T* gi = gin + b * ldi;
    S* gr = gs + b * 3 * H;
    const P* a = gh + b * 2 * H;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t n = std::min(V, H - j);
      Vec r = vsigmoid(vload(gi + j, n) + vload(a + j, n) + vload(bias + j, n));
      Vec z = vsigmoid(vload(gi + H + j, n) + vload(a + H + j, n) + vload(bias + H + j, n));
      vstore(gr + j, r, n);
      vstore(gr + H + j, z, n);
      if (z_back) z.store(gi + H + j, n);
      vstore(rh + b * H + j, r * vload(h + b * H + j, n), n);
    }
  }
}

// "before", second pass: ghn [B, H] = (r*h) W_hn^T. Writes n into gs and h'.
template <typename T, typename M, typename P, typename S>
void pass_fwd_before_b(int64_t b0, int64_t b1, int64_t H, const T* gin, int64_t ldi, S* gs, const P* ghn,
                       const T* bias, const T* h, T* hout, T* hlast, M* hlow) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t b = b0; b < b1; ++b) {
    const T* gi = gin + b * ldi;
    S* gr = gs + b * 3 * H;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t n = std::min(V, H - j);
      Vec nn = vtanh(vload(gi + 2 * H + j, n) + vload(bias + 2 * H + j, n) + vload(ghn + b * H + j, n));
      Vec z = vload(gi + H + j, n);
      Vec hv = vload(h + b * H + j, n);
      Vec hnew = nn + z * (hv - nn);
      vstore(gr + 2 * H + j, nn, n);
      hnew.store(hout + b * H + j, n);
      if (hlast) hnew.store(hlast + b * H + j, n);
      if constexpr (!std::is_same_v<M, T>) vstore(hlow + b * H + j, hnew, n);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Forward over the sequence
// ------------------------------------------------------------------------------------------
struct Dims {
  int64_t T, B, I, H;
};

Dims check_inputs(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                  const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  TORCH_CHECK(x.dim() == 3, "grutrain_native: x must be [T, B, I], got ", x.sizes());
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  TORCH_CHECK(T >= 1, "grutrain_native: x must have at least one time step");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * H, "grutrain_native: w_hh must be [3H, H], got ",
              w_hh.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 3 * H && w_ih.size(1) == I,
              "grutrain_native: w_ih must be [3H, I] = [", 3 * H, ", ", I, "], got ", w_ih.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, "grutrain_native: h0 must be [B, H] = [",
              B, ", ", H, "], got ", h0.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "grutrain_native: float32 or float64 only, got ", dt);
  TORCH_CHECK(h0.scalar_type() == dt && w_ih.scalar_type() == dt && w_hh.scalar_type() == dt,
              "grutrain_native: x, h0 and the weights must have one dtype");
  for (const auto* b : {&b_ih, &b_hh})
    if (*b && (*b)->defined())
      TORCH_CHECK((*b)->dim() == 1 && (*b)->size(0) == 3 * H && (*b)->scalar_type() == dt,
                  "grutrain_native: biases must be [3H] of the input's dtype");
  return {T, B, I, H};
}

bool is_after(c10::string_view reset) {
  if (reset == "after") return true;
  TORCH_CHECK(reset == "before", "grutrain_native: reset must be 'after' or 'before', got '",
              std::string(reset), "'");
  return false;
}

bool wants_lowp(const std::optional<at::ScalarType>& matmul_dtype, at::ScalarType dt) {
  if (!matmul_dtype || *matmul_dtype == dt) return false;
  TORCH_CHECK(*matmul_dtype == at::kBFloat16 && dt == at::kFloat,
              "grutrain_native: matmul_dtype must be None or bfloat16 (with float32 inputs)");
  return true;
}

// x [rows, I] W^T into g (ld `ldg`, cols 0:3H) -- the input projection of a block of steps.
template <typename T>
void input_projection(const Tensor& x2, const Tensor& w_ih, const Tensor& x2_low, const Tensor& w_ih_low,
                      T* g, int64_t ldg) {
  const int64_t rows = x2.size(0), I = x2.size(1), N = w_ih.size(0);
  if (x2_low.defined()) {
    gemm<BF16, float>(false, true, rows, N, I, x2_low.data_ptr<BF16>(), I, w_ih_low.data_ptr<BF16>(), I, 0.f,
                      reinterpret_cast<float*>(g), ldg);
  } else {
    gemm<T, T>(false, true, rows, N, I, x2.data_ptr<T>(), I, w_ih.data_ptr<T>(), I, 0.f, g, ldg);
  }
}

// g[b, 0:N] = x[b, 0:I] W^T for rows [b0, b1) of one step, with wt = W^T [I, N] contiguous: the
// input projection of a small input size, computed by the thread that runs the gate pass on these
// rows right before it (the values are read from cache), instead of one GEMM over all steps first
// (which writes them to memory and, for I = 1, is MKL's slow rank-1 update).
template <typename T>
void step_projection(int64_t b0, int64_t b1, int64_t I, int64_t N, const T* x, const T* wt, T* g, int64_t ldg) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t b = b0; b < b1; ++b) {
    const T* xb = x + b * I;
    T* gb = g + b * ldg;
    for (int64_t j = 0; j < N; j += V) {
      const int64_t n = std::min<int64_t>(V, N - j);
      Vec acc = Vec(xb[0]) * vload(wt + j, n);
      for (int64_t k = 1; k < I; ++k) acc = at::vec::fmadd(Vec(xb[k]), vload(wt + k * N + j, n), acc);
      acc.store(gb + j, n);
    }
  }
}

// Time steps per chunk of the backward's gradient buffer (rows of `width` elements of F each).
// The bfloat16 route's buffer holds as many steps as the float32 one in half the bytes: larger
// chunks measured no faster and would raise the peak. The training forward may hold as much
// scratch as this buffer without raising the step's peak memory.
template <typename F>
inline int64_t grad_chunk_steps(int64_t T, int64_t rows, int64_t width) {
  const int64_t row_bytes = rows * width * static_cast<int64_t>(sizeof(F));
  return std::max<int64_t>(1, std::min<int64_t>(T, tuning().chunk_bytes / row_bytes));
}

// The most bytes each packed part of W_hh may take in a training step: a share of its saved
// workspace, split between the parts ("after" packs W_hh whole, "before" in two parts).
inline int64_t train_pack_cap(int64_t workspace_bytes, bool after) {
  return workspace_bytes / 100 * tuning().packed_train_percent / (after ? 1 : 2);
}

// The whole forward. keep=true: the workspace holds every step's gates (returned), as S;
// else a chunk buffer is reused. Returns (out, h_n, workspace-or-undefined).
//
// S == F: the input projections of a chunk of steps are written straight into the workspace
// and the gate pass overwrites them with the gates. S == bfloat16 (the bfloat16 route's
// training forward): they go to a float chunk buffer of at most the backward's gradient buffer
// bytes (so the peak is not raised), and the pass writes the gates to the bfloat16 workspace.
// The output is the same either way: only what is kept for the backward is rounded.
template <typename F, typename M, typename S>
std::tuple<Tensor, Tensor, Tensor> forward_impl(const Tensor& x_in, const Tensor& h0_in, const Tensor& w_ih_in,
                                                const Tensor& w_hh_in, const std::optional<Tensor>& b_ih,
                                                const std::optional<Tensor>& b_hh, bool after, bool keep,
                                                bool lowp_input) {
  const Dims d = check_inputs(x_in, h0_in, w_ih_in, w_hh_in, b_ih, b_hh);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H;
  constexpr bool kLow = !std::is_same_v<M, F>;
  constexpr bool kSplit = !std::is_same_v<S, F>;  // projections apart from the (bf16) workspace
  static_assert(!kSplit || kLow, "a bfloat16 workspace only on the bfloat16 route");
  TORCH_CHECK(!kSplit || keep, "grutrain_native: a bfloat16 workspace is for training only");
  Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const std::vector<F> bias = pack_bias<F>(b_ih, b_hh, H, after);
  const int64_t W = after ? 4 * H : 3 * H;  // workspace row width

  Tensor out = at::empty({T, B, H}, x.options());
  Tensor h_n = at::empty({B, H}, x.options());
  // Chunks of steps: all at once when keeping the workspace, else a reused buffer of <= chunk_bytes.
  const int64_t row_bytes = B * W * static_cast<int64_t>(sizeof(F));
  int64_t L = keep ? T : std::max<int64_t>(1, std::min<int64_t>(T, tuning().infer_chunk_bytes / row_bytes));
  Tensor ws = at::empty({keep ? T : L, B, W}, x.options().dtype(c10::CppTypeToScalarType<S>::value));
  Tensor gin_buf;  // kSplit: the float input projections of a chunk of steps, [L, B, 3H]
  if constexpr (kSplit) {
    const int64_t grad_bytes = grad_chunk_steps<F>(T, B, W) * B * W * int64_t(sizeof(M));
    const int64_t cap = tuning().proj_chunk_bytes > 0 ? tuning().proj_chunk_bytes : grad_bytes;
    L = std::max<int64_t>(1, std::min<int64_t>(T, cap / (B * 3 * H * int64_t(sizeof(F)))));
    gin_buf = at::empty({L, B, 3 * H}, x.options());
  }
  // Small inputs (float input products): each step's projection beside its gate pass, into a
  // [B, 3H] buffer reused every step (knob step_proj_scratch) rather than the workspace: the buffer
  // stays in cache, and the workspace is first written by the gate pass, whose stores then overlap
  // its arithmetic instead of stalling a loop of stores.
  const bool step_proj = !kSplit && !lowp_input && I <= tuning().step_proj_max_input;
  const bool proj_scratch = step_proj && tuning().step_proj_scratch;
  const int64_t ldi = kSplit || proj_scratch ? 3 * H : W;  // row stride of the input projections
  Tensor proj_buf = proj_scratch ? at::empty({B, 3 * H}, x.options()) : Tensor();
  const Tensor w_ih_t = step_proj ? w_ih.t().contiguous() : Tensor();
  const F* wt = step_proj ? w_ih_t.data_ptr<F>() : nullptr;
  const F* xp = x.data_ptr<F>();

  // Mixed precision operands.
  Tensor w_hh_m = kLow ? w_hh.to(at::kBFloat16).contiguous() : w_hh;
  const M* whh = w_hh_m.template data_ptr<M>();
  Tensor x_low, w_ih_low;
  if (lowp_input) {
    x_low = x.to(at::kBFloat16).contiguous();
    w_ih_low = w_ih.to(at::kBFloat16).contiguous();
  }
  Tensor h_low;  // bf16 copy of the current state (the per-step GEMM's operand)
  if constexpr (kLow) h_low = h0.to(at::kBFloat16).contiguous();
  M* hlow = kLow ? h_low.template data_ptr<M>() : nullptr;

  // Per-step products: float32 GEMMs accumulate in F (MKL, W_hh^T packed where it pays); the
  // bfloat16 route writes float products through MKL (mkl_bf16()), else bf16 products (oneDNN)
  // that the gate passes read and widen.
  const int64_t gh_cols = after ? 3 * H : 2 * H;
  const auto mdt = c10::CppTypeToScalarType<M>::value;
  Tensor gh_t = at::empty({B, gh_cols}, x.options().dtype(mdt));
  Tensor rh_t = after ? Tensor() : at::empty({B, H}, x.options().dtype(mdt));
  Tensor ghn_t = after ? Tensor() : at::empty({B, H}, x.options().dtype(mdt));
  M* gh = gh_t.template data_ptr<M>();
  M* rh = after ? nullptr : rh_t.template data_ptr<M>();
  M* ghn = after ? nullptr : ghn_t.template data_ptr<M>();
  // The packed W_hh^T's size cap (see packed_train_percent); "before" packs two parts of W_hh, in
  // training each within half of it.
  const int64_t pack_cap = keep ? train_pack_cap(T * row_bytes, after) : tuning().packed_infer_bytes;
  std::optional<StepMatmul<F, F>> mm_main, mm_n;
  std::optional<StepMatmulBf16> mk_main, mk_n;  // bfloat16 route through MKL: float products
  const bool mkl = kLow && mkl_bf16();
  Tensor ghf_t, ghnf_t;
  if constexpr (!kLow) {
    mm_main.emplace(whh, gh_cols, H, B, T, pack_cap);
    if (!after) mm_n.emplace(whh + 2 * H * H, H, H, B, T, pack_cap);
  } else if (mkl) {
    const BF16* wb = reinterpret_cast<const BF16*>(whh);
    mk_main.emplace(wb, H, true, gh_cols, H);
    if (!after) mk_n.emplace(wb + 2 * H * H, H, true, H, H);
    ghf_t = at::empty({B, gh_cols}, x.options());
    if (!after) ghnf_t = at::empty({B, H}, x.options());
  }
  F* ghf = ghf_t.defined() ? ghf_t.template data_ptr<F>() : nullptr;
  F* ghnf = ghnf_t.defined() ? ghnf_t.template data_ptr<F>() : nullptr;
  // acc[r0:r1] [., N] = a[r0:r1] [., H] W^T for the rows of W starting at row0 (acc: M, or F
  // on the MKL bfloat16 path).
  auto step_mm = [&](int64_t r0, int64_t r1, const M* a, int64_t row0, int64_t N, auto* acc) {
    using P = std::remove_pointer_t<decltype(acc)>;
    if constexpr (kLow && std::is_same_v<P, F>) {
      (row0 == 0 ? *mk_main : *mk_n)(r1 - r0, reinterpret_cast<const BF16*>(a) + r0 * H, H, 0.f, acc + r0 * N, N);
    } else if constexpr (kLow) {
      mm_bf16(false, true, r1 - r0, N, H, a + r0 * H, H, whh + row0 * H, H, acc + r0 * N);
    } else {
      (row0 == 0 ? *mm_main : *mm_n)(r1 - r0, a + r0 * H, H, 0.f, acc + r0 * N, N);
    }
  };
  // The bfloat16 route through oneDNN keeps its per-step GEMMs over the whole batch (oneDNN
  // threads them); through MKL it splits rows like float32.
  const int64_t blocks = kLow && !mkl ? 1 : row_blocks(B, H);

  F* outp = out.data_ptr<F>();
  const F* bp = bias.data();
  for (int64_t t0 = 0; t0 < T; t0 += L) {
    const int64_t len = std::min(L, T - t0);
    // Gates of this chunk's first step, and where its input projections are.
    S* gs0 = ws.template data_ptr<S>() + (keep ? t0 * B * W : 0);
    F* gi0;
    if constexpr (kSplit) gi0 = gin_buf.template data_ptr<F>();
    else gi0 = gs0;
    if (!step_proj) {
      Tensor x2 = x.narrow(0, t0, len).view({len * B, I});
      Tensor xl = lowp_input ? x_low.narrow(0, t0, len).view({len * B, I}) : Tensor();
      input_projection<F>(x2, w_ih, xl, w_ih_low, gi0, ldi);
    }
    // Steps t0 .. t0+len of rows [r0, r1); the gate passes are threaded only when not split.
    for_row_blocks(B, blocks, [&](int64_t r0, int64_t r1) {
      auto over_rows = [&](const auto& f) {
        if (blocks == 1) rows_parallel(B, H, f); else f(r0, r1);
      };
      for (int64_t i = 0; i < len; ++i) {
        const int64_t t = t0 + i;
        F* gi = proj_scratch ? proj_buf.data_ptr<F>() : gi0 + i * B * ldi;
        S* g = gs0 + i * B * W;
        const F* h = t == 0 ? h0.data_ptr<F>() : outp + (t - 1) * B * H;
        F* hout = outp + t * B * H;
        F* hlast = t == T - 1 ? h_n.data_ptr<F>() : nullptr;
        const M* hm;
        if constexpr (kLow) hm = hlow; else hm = h;
        // One step with products of type P (M, or F on the MKL bfloat16 path).
        auto project = [&](int64_t b0, int64_t b1) {
          if (step_proj) step_projection<F>(b0, b1, I, 3 * H, xp + t * B * I, wt, gi, ldi);
        };
        auto step = [&](auto* ghp, auto* ghnp) {
          using P = std::remove_pointer_t<decltype(ghp)>;
          step_mm(r0, r1, hm, 0, gh_cols, ghp);
          if (after) {
            over_rows([&](int64_t b0, int64_t b1) {
              project(b0, b1);
              pass_fwd_after<F, M, P, S>(b0, b1, H, gi, ldi, keep ? g : nullptr, ghp, bp, h, hout, hlast, hlow);
            });
          } else {
            over_rows([&](int64_t b0, int64_t b1) {
              project(b0, b1);
              pass_fwd_before_a<F, M, P, S>(b0, b1, H, gi, ldi, g, ghp, bp, h, rh);
            });
            step_mm(r0, r1, rh, 2 * H, H, ghnp);
            over_rows([&](int64_t b0, int64_t b1) {
              pass_fwd_before_b<F, M, P, S>(b0, b1, H, gi, ldi, g, ghnp, bp, h, hout, hlast, hlow);
            });
          }
        };
        if constexpr (kLow) {
          if (mkl) step(ghf, ghnf); else step(gh, ghn);
        } else {
          step(gh, ghn);
        }
      }
    });
  }
  return {out, h_n, keep ? ws : Tensor()};
}

// ------------------------------------------------------------------------------------------
// Backward gate passes (one step, rows [b0, b1)); acc: this task's bias-gradient sums.
// ------------------------------------------------------------------------------------------
// ws: the forward's gates, as S (float, or bfloat16 on the bfloat16 route), widened on load.
// "after": G row [da_n | da_r | da_z | dhn] (input side 0:3H with w_ih's rows rotated to n, r, z;
// hidden side H:4H in w_hh's r, z, n order). dnext = gprev + dh * z (the GEMM adds the rest).
// dprod (bfloat16 route): the previous step's product G W_hh, still to be added to dh.
// What both resets' first pass share at elements [k, k+n) of the flat [B, H] arrays: d = dh (plus
// the bfloat16 route's pending product dprod), dnext = gprev + d z, (mixed precision) h_prev as M
// into hlow. Returns {da_n, da_z, h_prev}.
template <typename T, typename M>
inline std::array<Vectorized<T>, 3> bwd_common(const Vectorized<T>& z, const Vectorized<T>& nn, int64_t k,
                                               int64_t n, const T* dh, const M* dprod, const T* hprev,
                                               const T* gp, T* dnext, M* hlow) {
  using Vec = Vectorized<T>;
  const Vec one(T(1));
  Vec d = vload(dh + k, n), hp = vload(hprev + k, n);
  if constexpr (!std::is_same_v<M, T>) {
    if (dprod) d = d + vload(dprod + k, n);
    vstore(hlow + k, hp, n);
  }
  Vec nx = d * z;
  if (gp) nx = nx + vload(gp, n);
  nx.store(dnext + k, n);
  const Vec omz = one - z;
  return {d * omz * (one - nn * nn), d * (hp - nn) * z * omz, hp};
}

template <typename T, typename M, typename S>
void pass_bwd_after(int64_t b0, int64_t b1, int64_t H, const S* ws, const T* dh, const M* dprod,
                    const T* hprev, const T* gprev, int64_t ldg, M* G, T* dnext, T* acc, M* hlow) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec one(T(1));
  for (int64_t b = b0; b < b1; ++b) {
    const S* s = ws + b * 4 * H;
    M* gr = G + b * 4 * H;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t n = std::min(V, H - j);
      Vec r = vload(s + j, n), z = vload(s + H + j, n), nn = vload(s + 2 * H + j, n), hn = vload(s + 3 * H + j, n);
      const auto [dan, daz, hp] = bwd_common<T, M>(z, nn, b * H + j, n, dh, dprod, hprev,
                                                   gprev ? gprev + b * ldg + j : nullptr, dnext, hlow);
      Vec dhn = dan * r;
      Vec dar = dhn * hn * (one - r);
      vstore(gr + j, dan, n);
      vstore(gr + H + j, dar, n);
      vstore(gr + 2 * H + j, daz, n);
      vstore(gr + 3 * H + j, dhn, n);
      (vload(acc + j, n) + dan).store(acc + j, n);
      (vload(acc + H + j, n) + dar).store(acc + H + j, n);
      (vload(acc + 2 * H + j, n) + daz).store(acc + 2 * H + j, n);
      (vload(acc + 3 * H + j, n) + dhn).store(acc + 3 * H + j, n);
    }
  }
}

// "before", first pass: G row [da_r | da_z | da_n]; writes da_z, da_n, dnext = gprev + dh z,
// r*h (as M) for dW_hn and (mixed precision) h_prev as M.
template <typename T, typename M, typename S>
void pass_bwd_before_a(int64_t b0, int64_t b1, int64_t H, const S* ws, const T* dh, const M* dprod,
                       const T* hprev, const T* gprev, int64_t ldg, M* G, T* dnext, T* acc, M* rh, M* hlow) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t b = b0; b < b1; ++b) {
    const S* s = ws + b * 3 * H;
    M* gr = G + b * 3 * H;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t n = std::min(V, H - j);
      Vec r = vload(s + j, n), z = vload(s + H + j, n), nn = vload(s + 2 * H + j, n);
      const auto [dan, daz, hp] = bwd_common<T, M>(z, nn, b * H + j, n, dh, dprod, hprev,
                                                   gprev ? gprev + b * ldg + j : nullptr, dnext, hlow);
      vstore(gr + H + j, daz, n);
      vstore(gr + 2 * H + j, dan, n);
      (vload(acc + H + j, n) + daz).store(acc + H + j, n);
      (vload(acc + 2 * H + j, n) + dan).store(acc + 2 * H + j, n);
      vstore(rh + b * H + j, r * hp, n);
    }
  }
}

// "before", second pass: drh = da_n W_hn [B, H]; da_r = drh h r (1-r); dnext += drh r.
template <typename T, typename M, typename S, typename P>
void pass_bwd_before_b(int64_t b0, int64_t b1, int64_t H, const S* ws, const P* drh, const T* hprev, M* G,
                       T* dnext, T* acc) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec one(T(1));
  for (int64_t b = b0; b < b1; ++b) {
    const S* s = ws + b * 3 * H;
    M* gr = G + b * 3 * H;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t n = std::min(V, H - j);
      Vec r = vload(s + j, n), e = vload(drh + b * H + j, n);
      Vec dar = e * vload(hprev + b * H + j, n) * r * (one - r);
      vstore(gr + j, dar, n);
      (vload(acc + j, n) + dar).store(acc + j, n);
      (vload(dnext + b * H + j, n) + e * r).store(dnext + b * H + j, n);
    }
  }
}

template <typename F, typename M, typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const std::optional<Tensor>& grad_out_in, const std::optional<Tensor>& grad_hn_in, const Tensor& x_in,
    const Tensor& h0_in, const Tensor& w_ih_in, const Tensor& w_hh_in, const Tensor& out_in,
    const Tensor& ws_in, bool after, std::array<bool, 6> mask) {
  const Dims d = check_inputs(x_in, h0_in, w_ih_in, w_hh_in, std::nullopt, std::nullopt);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H;
  constexpr bool kLow = !std::is_same_v<M, F>;
  const int64_t W = after ? 4 * H : 3 * H;  // workspace and gradient row width
  TORCH_CHECK(ws_in.dim() == 3 && ws_in.size(0) == T && ws_in.size(1) == B && ws_in.size(2) == W &&
                  ws_in.scalar_type() == c10::CppTypeToScalarType<S>::value,
              "grutrain_native: workspace does not match the inputs");
  TORCH_CHECK(out_in.sizes() == at::IntArrayRef({T, B, H}), "grutrain_native: out must be [T, B, H]");
  const auto& [need_x, need_h0, need_wih, need_whh, need_bih, need_bhh] = mask;
  const bool need_b = need_bih || need_bhh;
  auto opts = x_in.options();
  const auto mdt = c10::CppTypeToScalarType<M>::value;

  Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  Tensor out = out_in.contiguous(), ws = ws_in.contiguous();
  // grad_out, never materialised as [T, B, H]: read in place when each row's H elements are
  // contiguous (a [T, B, H] gradient, or the transposed view of a batch-first [B, T, H] one; any
  // step and row strides, 0 included). Broadcast over H but not over time (rare): one step at a
  // time through a [B, H] buffer, with no row split; broadcast over everything (out.sum()'s
  // expanded ones): one [B, H] copy read at every step.
  Tensor gout, gstep;
  int64_t go_step = 0, go_row = H;  // elements between two steps, two rows of go
  bool copy_per_step = false;
  const F* go = nullptr;
  if (grad_out_in && grad_out_in->defined()) {
    gout = *grad_out_in;
    if (gout.stride(2) == 1 || H == 1) {
      go = gout.data_ptr<F>();
      go_step = gout.stride(0);
      go_row = gout.stride(1);
    } else if (gout.stride(0) == 0) {
      gstep = gout[0].contiguous();
      go = gstep.data_ptr<F>();
    } else {
      gstep = at::empty({B, H}, opts);
      copy_per_step = true;
    }
  }

  // Gradient buffer of a chunk of L steps, reused for every chunk (latest steps first).
  const int64_t L = grad_chunk_steps<F>(T, B, W);
  Tensor Gbuf = at::empty({L, B, W}, opts.dtype(mdt));
  Tensor rh_buf = after ? Tensor() : at::empty({L, B, H}, opts.dtype(mdt));            // r*h ("before")
  Tensor hlow_buf = kLow && need_whh ? at::empty({L, B, H}, opts.dtype(mdt)) : Tensor();  // h_prev as bf16
  Tensor drh_t = after ? Tensor() : at::empty({B, H}, opts.dtype(mdt));
  // bfloat16 route through oneDNN: the step's product G W_hh lands here (bf16), the next pass adds it to dh.
  Tensor dprod_t = kLow ? at::empty({B, H}, opts.dtype(mdt)) : Tensor();
  const M* dprod = nullptr;  // pending product, if any
  // bfloat16 route through MKL: the products are float, added straight into dnext (like float32).
  const bool mkl = kLow && mkl_bf16();
  std::optional<StepMatmulBf16> mk_chain, mk_rh;
  Tensor drhf_t;
  // c[r0:r1] = a[r0:r1] op(W slice) (+ c): [rows, H] products (float32: never called).
  auto mkl_mm = [&](const StepMatmulBf16& mm, int64_t r0, int64_t r1, const M* a, int64_t lda, float beta, F* c) {
    if constexpr (kLow) mm(r1 - r0, a + r0 * lda, lda, beta, c + r0 * H, H);
  };
  Tensor ping = at::empty({B, H}, opts), pong = at::empty({B, H}, opts);

  // Operands of the GEMMs in M.
  Tensor w_hh_m = kLow ? w_hh.to(at::kBFloat16) : w_hh;
  const M* whh = w_hh_m.template data_ptr<M>();
  if (mkl) {
    const BF16* wb = reinterpret_cast<const BF16*>(whh);
    if (after) {
      mk_chain.emplace(wb, H, false, H, 3 * H);
    } else {
      mk_chain.emplace(wb, H, false, H, 2 * H);
      mk_rh.emplace(wb + 2 * H * H, H, false, H, H);
      drhf_t = at::empty({B, H}, opts);
    }
  }
  // float32: the per-step products G W_hh with MKL's packed W_hh, capped like the forward's
  // (two parts for "before", each within half).
  std::optional<StepMatmul<F, F>> mm_chain, mm_rh;
  if constexpr (!kLow) {
    const int64_t pack_cap =
        tuning().packed_backward ? train_pack_cap(T * B * W * int64_t(sizeof(F)), after) : 0;
    mm_chain.emplace(whh, H, after ? 3 * H : 2 * H, B, T, pack_cap, false);
    if (!after) mm_rh.emplace(whh + 2 * H * H, H, H, B, T, pack_cap, false);
  }
  Tensor w_in_m;  // dx = G_in w: rows rotated to (n, r, z) for "after"
  if (need_x) {
    Tensor w = after ? at::cat({w_ih.narrow(0, 2 * H, H), w_ih.narrow(0, 0, 2 * H)}) : w_ih;
    w_in_m = w.to(mdt).contiguous();
  }
  Tensor x_m = need_wih ? (kLow ? x.to(at::kBFloat16) : x) : Tensor();

  Tensor dx = need_x ? at::empty({T, B, I}, opts) : Tensor();
  // dW_ih's rows ("after": n, r, z), or in float (knob dw_ih_transposed) its transpose [I, 3H],
  // x^T G_in: MKL is faster with the narrow operand transposed (as for dw_t below).
  const bool dw_in_t = !kLow && tuning().dw_ih_transposed != 0;
  Tensor dw_in = need_wih ? (dw_in_t ? at::empty({I, 3 * H}, opts) : at::empty({3 * H, I}, opts)) : Tensor();
  Tensor dw_hh = need_whh ? at::empty({3 * H, H}, opts) : Tensor();
  // dW_hh (+)= G_cols^T h over K stacked rows, into rows [row0, row0 + n) of dW_hh; G_cols [K, n]
  // (ld W), h [K, H]. In float up to dw_transposed_max_hidden it is computed as its transpose
  // h^T G_cols into dw_t [H, 3H], transposed into dW_hh at the end: MKL copies the narrow operand
  // instead of the wide one (10-20% less time for this product at H <= 128).
  Tensor dw_t = need_whh && !kLow && H <= tuning().dw_transposed_max_hidden ? at::empty({H, 3 * H}, opts) : Tensor();
  auto dw_gemm = [&](int64_t row0, int64_t n, int64_t K, const M* g, const M* h, float beta) {
    if (dw_t.defined())
      gemm<M, F>(true, false, H, n, K, h, H, g, W, beta, dw_t.data_ptr<F>() + row0, 3 * H);
    else
      gemm<M, F>(true, false, n, H, K, g, W, h, H, beta, dw_hh.data_ptr<F>() + row0 * H, H);
  };
  const int nthreads = std::max(1, at::get_num_threads());
  Tensor accs = at::zeros({nthreads, W}, opts);

  // dh of the last step.
  F* dh = ping.data_ptr<F>();
  {
    Tensor dhv = ping;
    if (gout.defined()) dhv.copy_(gout[T - 1]); else dhv.zero_();
    if (grad_hn_in && grad_hn_in->defined()) dhv.add_(*grad_hn_in);
  }
  F* spare = pong.data_ptr<F>();
  const F* outp = out.data_ptr<F>();
  const F* h0p = h0.data_ptr<F>();
  F* accp = accs.data_ptr<F>();
  bool first_chunk = true;  // weight gradients: beta 0 for the first chunk processed
  // Rows split over threads (row_blocks) in float32 and the MKL bfloat16 path (not with oneDNN's
  // shared bf16 product dprod), and not when grad_out is copied per step.
  const int64_t blocks = (kLow && !mkl) || copy_per_step ? 1 : row_blocks(B, H);

  const int64_t n_chunks = (T + L - 1) / L;
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * L, len = std::min(L, T - t0);
    M* G0 = Gbuf.template data_ptr<M>();
    M* rh0 = after ? nullptr : rh_buf.template data_ptr<M>();
    M* hl0 = hlow_buf.defined() ? hlow_buf.template data_ptr<M>() : nullptr;
    // Steps t0+len-1 .. t0 of rows [r0, r1); dh and spare swap roles every step (in every block
    // alike, so the parity is swapped once after the blocks).
    for_row_blocks(B, blocks, [&](int64_t r0, int64_t r1) {
      auto over_rows = [&](int64_t cols, const auto& f) {
        if (blocks == 1) rows_parallel(B, cols, f); else f(r0, r1);
      };
      const int64_t rows = r1 - r0;
      F* dh_r = dh;
      F* spare_r = spare;
      for (int64_t i = len - 1; i >= 0; --i) {
        const int64_t t = t0 + i;
        const S* s = ws.template data_ptr<S>() + t * B * W;
        const F* hprev = t == 0 ? h0p : outp + (t - 1) * B * H;
        const F* gprev = (t > 0 && go) ? go + (t - 1) * go_step : nullptr;
        if (t > 0 && copy_per_step) {  // not split (see blocks)
          gstep.copy_(gout[t - 1]);
          gprev = gstep.data_ptr<F>();
        }
        M* G = G0 + i * B * W;
        M* hl = hl0 ? hl0 + i * B * H : nullptr;
        F* dnext = spare_r;
        const bool chain = t > 0 || need_h0;  // dh_{t-1} needed
        if (after) {
          over_rows(4 * H, [&](int64_t b0, int64_t b1) {
            pass_bwd_after<F, M, S>(b0, b1, H, s, dh_r, dprod, hprev, gprev, go_row, G, dnext,
                                 accp + at::get_thread_num() * W, hl);
          });
          if (chain) {  // dh_{t-1} += [da_r | da_z | dhn] W_hh
            if (mkl) {
              mkl_mm(*mk_chain, r0, r1, G + H, 4 * H, 1.f, dnext);
            } else if constexpr (kLow) {
              M* dp = dprod_t.template data_ptr<M>();
              mm_bf16(false, false, B, H, 3 * H, G + H, 4 * H, whh, H, dp);
              dprod = dp;
            } else {
              (*mm_chain)(rows, G + r0 * W + H, 4 * H, 1.f, dnext + r0 * H, H);
            }
          }
        } else {
          M* rh = rh0 + i * B * H;
          M* drh = drh_t.template data_ptr<M>();
          over_rows(3 * H, [&](int64_t b0, int64_t b1) {
            pass_bwd_before_a<F, M, S>(b0, b1, H, s, dh_r, dprod, hprev, gprev, go_row, G, dnext,
                                    accp + at::get_thread_num() * W, rh, hl);
          });
          if (mkl) {
            F* drhf = drhf_t.template data_ptr<F>();
            mkl_mm(*mk_rh, r0, r1, G + 2 * H, 3 * H, 0.f, drhf);
            over_rows(3 * H, [&](int64_t b0, int64_t b1) {
              pass_bwd_before_b<F, M, S, F>(b0, b1, H, s, drhf, hprev, G, dnext, accp + at::get_thread_num() * W);
            });
          } else {
            if constexpr (kLow) mm_bf16(false, false, B, H, H, G + 2 * H, 3 * H, whh + 2 * H * H, H, drh);
            else (*mm_rh)(rows, G + r0 * W + 2 * H, 3 * H, 0.f, drh + r0 * H, H);
            over_rows(3 * H, [&](int64_t b0, int64_t b1) {
              pass_bwd_before_b<F, M, S, M>(b0, b1, H, s, drh, hprev, G, dnext, accp + at::get_thread_num() * W);
            });
          }
          if (chain) {  // dh_{t-1} += [da_r | da_z] W_{hr,hz}
            if (mkl) {
              mkl_mm(*mk_chain, r0, r1, G, 3 * H, 1.f, dnext);
            } else if constexpr (kLow) {
              M* dp = dprod_t.template data_ptr<M>();
              mm_bf16(false, false, B, H, 2 * H, G, 3 * H, whh, H, dp);
              dprod = dp;
            } else {
              (*mm_chain)(rows, G + r0 * W, 3 * H, 1.f, dnext + r0 * H, H);
            }
          }
        }
        std::swap(dh_r, spare_r);
      }
    });
    if (len % 2 == 1) std::swap(dh, spare);

    // Batched products of the chunk: rows t0*B .. (t0+len)*B of the stacked [T*B, .] tensors.
    const int64_t K = len * B;
    const float beta = first_chunk ? 0.f : 1.f;
    if (need_whh) {
      const int64_t nh = after ? 3 * H : 2 * H;  // hidden-side columns multiplying h_prev
      const int64_t col = after ? H : 0;
      if constexpr (kLow) {
        dw_gemm(0, nh, K, G0 + col, hl0, beta);
      } else {
        // h_prev rows: h0 for step 0, then the outputs.
        int64_t k0 = 0;
        float bt = beta;
        if (t0 == 0) {
          dw_gemm(0, nh, B, G0 + col, h0p, bt);
          k0 = B;
          bt = 1.f;
        }
        if (K > k0) dw_gemm(0, nh, K - k0, G0 + k0 * W + col, outp + (t0 * B + k0 - B) * H, bt);
      }
      if (!after) dw_gemm(2 * H, H, K, G0 + 2 * H, rh0, beta);  // dW_hn = da_n^T (r*h)
    }
    if (need_wih) {
      const M* xk = x_m.template data_ptr<M>() + t0 * B * I;
      if (dw_in_t) gemm<M, F>(true, false, I, 3 * H, K, xk, I, G0, W, beta, dw_in.data_ptr<F>(), 3 * H);
      else gemm<M, F>(true, false, 3 * H, I, K, G0, W, xk, I, beta, dw_in.data_ptr<F>(), I);
    }
    if (need_x)
      gemm<M, F>(false, false, K, I, 3 * H, G0, W, w_in_m.template data_ptr<M>(), I, 0.f,
                 dx.data_ptr<F>() + t0 * B * I, I);
    first_chunk = false;
  }

  if (dw_t.defined()) dw_hh.copy_(dw_t.t());
  Tensor dh0 = need_h0 ? (dh == ping.data_ptr<F>() ? ping : pong) : Tensor();
  if (need_h0 && dprod != nullptr) dh0.add_(dprod_t);  // the pending bf16 product
  Tensor dw_ih, db_ih, db_hh;
  if (need_wih) {
    const Tensor rows = dw_in_t ? dw_in.t() : dw_in;
    dw_ih = after ? at::cat({rows.narrow(0, H, 2 * H), rows.narrow(0, 0, H)}) : rows.contiguous();
  }
  if (need_b) {
    Tensor acc = accs.sum(0);  // [W]
    if (after) {
      if (need_bih) db_ih = at::cat({acc.narrow(0, H, 2 * H), acc.narrow(0, 0, H)});
      if (need_bhh) db_hh = acc.narrow(0, H, 3 * H).clone();
    } else {
      if (need_bih) db_ih = acc;
      if (need_bhh) db_hh = need_bih ? acc.clone() : acc;
    }
  }
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh};
}

// ------------------------------------------------------------------------------------------
// Op entry points
// ------------------------------------------------------------------------------------------
template <typename F>
auto dispatch_types(at::ScalarType dt, bool low, const F& f) {
  if (dt == at::kDouble) return f(double(), double());
  if (low) return f(float(), BF16());
  return f(float(), float());
}

std::tuple<Tensor, Tensor, Tensor> run_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                               const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                               const std::optional<Tensor>& b_hh, c10::string_view reset,
                                               std::optional<at::ScalarType> matmul_dtype, bool keep) {
  const bool after = is_after(reset);
  const bool low = wants_lowp(matmul_dtype, x.scalar_type());
  const int64_t H = w_hh.size(1), I = x.dim() == 3 ? x.size(2) : 0;
  const bool low_rec = low && H >= tuning().lowp_min_hidden;
  const int64_t min_input = tuning().lowp_min_input > 0 ? tuning().lowp_min_input : (mkl_bf16() ? 32 : 64);
  const bool low_in = low && I >= min_input;
  return dispatch_types(x.scalar_type(), low_rec, [&](auto t, auto m) {
    using T = decltype(t);
    using M = decltype(m);
    // The bfloat16 route keeps its training workspace in bfloat16.
    if constexpr (!std::is_same_v<M, T>) {
      if (keep && tuning().lowp_workspace != 0)
        return forward_impl<T, M, M>(x, h0, w_ih, w_hh, b_ih, b_hh, after, keep, low_in);
    }
    return forward_impl<T, M, T>(x, h0, w_ih, w_hh, b_ih, b_hh, after, keep, low_in);
  });
}

std::tuple<Tensor, Tensor, Tensor> gru_layer_cpu(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                                 const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                 const std::optional<Tensor>& b_hh, c10::string_view reset,
                                                 std::optional<at::ScalarType> matmul_dtype) {
  return run_forward(x, h0, w_ih, w_hh, b_ih, b_hh, reset, matmul_dtype, true);
}

std::tuple<Tensor, Tensor> gru_layer_inference_cpu(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                                   const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                   const std::optional<Tensor>& b_hh, c10::string_view reset,
                                                   std::optional<at::ScalarType> matmul_dtype) {
  auto [out, h_n, ws] = run_forward(x, h0, w_ih, w_hh, b_ih, b_hh, reset, matmul_dtype, false);
  return {out, h_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_backward_cpu(
    const std::optional<Tensor>& grad_out, const std::optional<Tensor>& grad_h_n, const Tensor& x,
    const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& out, const Tensor& ws,
    c10::string_view reset, std::optional<at::ScalarType> matmul_dtype, std::array<bool, 6> mask) {
  const bool after = is_after(reset);
  const bool low = wants_lowp(matmul_dtype, x.scalar_type());
  // A bfloat16 workspace comes from the bfloat16 route (bf16 recurrent products) only.
  const bool low_ws = ws.scalar_type() == at::kBFloat16;
  TORCH_CHECK(!low_ws || low, "grutrain_native: a bfloat16 workspace needs matmul_dtype=bfloat16");
  const bool low_rec = low_ws || (low && w_hh.size(1) >= tuning().lowp_min_hidden);
  return dispatch_types(x.scalar_type(), low_rec, [&](auto t, auto m) {
    using T = decltype(t);
    using M = decltype(m);
    if constexpr (!std::is_same_v<M, T>) {
      if (low_ws) return backward_impl<T, M, M>(grad_out, grad_h_n, x, h0, w_ih, w_hh, out, ws, after, mask);
    }
    return backward_impl<T, M, T>(grad_out, grad_h_n, x, h0, w_ih, w_hh, out, ws, after, mask);
  });
}

// ------------------------------------------------------------------------------------------
// One step (generation)
// ------------------------------------------------------------------------------------------
// y[b, :N] = a[b, :K] W^T (W [N, K] row-major) for a few rows b: dot products over W's rows, four
// at a time (each load of a reused), in parallel over W's rows when the product is large. For batch
// 1 this beats MKL's sgemv several times on AMD CPUs (MKL takes its generic path there).
constexpr int64_t kSmallBatch = 4;     // up to this many rows: small_matmul_nt, else gemm
constexpr int64_t kGemvGrain = 32768;  // multiply-adds per parallel task

template <typename T>
void gemv_rows(int64_t n0, int64_t n1, int64_t K, const T* a, const T* w, int64_t ldw, T* y) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  auto sum = [](const Vec& v) { return at::vec::vec_reduce_all<T>([](Vec& p, Vec& q) { return p + q; }, v); };
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const T *w0 = w + n * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
    Vec s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
    for (int64_t k = 0; k < K; k += V) {
      const int64_t m = std::min(V, K - k);
      const Vec av = vload(a + k, m);
      s0 = at::vec::fmadd(av, vload(w0 + k, m), s0);
      s1 = at::vec::fmadd(av, vload(w1 + k, m), s1);
      s2 = at::vec::fmadd(av, vload(w2 + k, m), s2);
      s3 = at::vec::fmadd(av, vload(w3 + k, m), s3);
    }
    y[n] = sum(s0), y[n + 1] = sum(s1), y[n + 2] = sum(s2), y[n + 3] = sum(s3);
  }
  for (; n < n1; ++n) {
    Vec s(T(0));
    for (int64_t k = 0; k < K; k += V) {
      const int64_t m = std::min(V, K - k);
      s = at::vec::fmadd(vload(a + k, m), vload(w + n * ldw + k, m), s);
    }
    y[n] = sum(s);
  }
}

// C[M, N] = A[M, K] W^T: small_matmul_nt for M <= kSmallBatch rows, the GEMM otherwise.
template <typename T>
void matmul_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw, T* C,
               int64_t ldc) {
  if (M > kSmallBatch || K == 0) {
    gemm<T, T>(false, true, M, N, K, A, lda, W, ldw, 0.f, C, ldc);
    return;
  }
  const int64_t blocks = (N + 3) / 4;
  const int64_t grain = std::max<int64_t>(1, kGemvGrain / std::max<int64_t>(1, 4 * K * M));
  auto rows = [&](int64_t i0, int64_t i1) {
    for (int64_t b = 0; b < M; ++b)
      gemv_rows<T>(i0 * 4, std::min(N, i1 * 4), K, A + b * lda, W, ldw, C + b * ldc);
  };
  if (blocks <= grain) rows(0, blocks);
  else at::parallel_for(0, blocks, grain, rows);
}

// One GRU step of rows [B] into hout: x [B, I] (row stride ldx), h [B, H] -> hout [B, H].
// scratch holds B * (W + gh_cols + 2H) elements.
template <typename T>
void cell_step(int64_t B, int64_t I, int64_t H, const T* x, int64_t ldx, const T* h, const T* w_ih,
               const T* w_hh, const T* bias, bool after, T* scratch, T* hout) {
  const int64_t W = after ? 4 * H : 3 * H;
  const int64_t gh_cols = after ? 3 * H : 2 * H;
  T* g = scratch;
  T* gh = g + B * W;
  matmul_nt<T>(B, 3 * H, I, x, ldx, w_ih, I, g, W);
  matmul_nt<T>(B, gh_cols, H, h, H, w_hh, H, gh, gh_cols);
  if (after) {
    rows_parallel(B, H, [&](int64_t b0, int64_t b1) {
      pass_fwd_after<T, T, T, T>(b0, b1, H, g, W, nullptr, gh, bias, h, hout, nullptr, nullptr);
    });
  } else {
    T* rh = gh + B * gh_cols;
    T* ghn = rh + B * H;
    rows_parallel(B, H, [&](int64_t b0, int64_t b1) {
      pass_fwd_before_a<T, T, T, T>(b0, b1, H, g, W, g, gh, bias, h, rh);
    });
    matmul_nt<T>(B, H, H, rh, H, w_hh + 2 * H * H, H, ghn, H);
    rows_parallel(B, H, [&](int64_t b0, int64_t b1) {
      pass_fwd_before_b<T, T, T, T>(b0, b1, H, g, W, g, ghn, bias, h, hout, nullptr, nullptr);
    });
  }
}

inline int64_t cell_scratch(int64_t B, int64_t H, bool after) {
  return B * ((after ? 4 * H : 3 * H) + (after ? 3 * H : 2 * H) + (after ? 0 : 2 * H));
}

// One step, no grad (generation): two GEMMs (three for "before") and the gate pass, serial for
// small batches. h may alias nothing of the output (a new tensor is returned).
template <typename T>
Tensor cell_impl(const Tensor& x_in, const Tensor& h_in, const Tensor& w_ih_in, const Tensor& w_hh_in,
                 const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, bool after) {
  const int64_t B = x_in.size(0), I = x_in.size(1), H = w_hh_in.size(1);
  Tensor x = x_in.contiguous(), h = h_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const std::vector<T> bias = pack_bias<T>(b_ih, b_hh, H, after);
  Tensor scratch = at::empty({cell_scratch(B, H, after)}, x.options());
  Tensor hnew = at::empty({B, H}, x.options());
  cell_step<T>(B, I, H, x.data_ptr<T>(), I, h.data_ptr<T>(), w_ih.data_ptr<T>(), w_hh.data_ptr<T>(), bias.data(),
               after, scratch.data_ptr<T>(), hnew.data_ptr<T>());
  return hnew;
}

Tensor gru_cell_cpu(const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, c10::string_view reset) {
  const bool after = is_after(reset);
  TORCH_CHECK(x.dim() == 2 && h.dim() == 2 && x.size(0) == h.size(0),
              "grutrain_native::gru_cell: x must be [B, I] and h [B, H]");
  // Reuse the layer's checks on a [1, B, I] view.
  check_inputs(x.unsqueeze(0), h, w_ih, w_hh, b_ih, b_hh);
  if (x.scalar_type() == at::kDouble) return cell_impl<double>(x, h, w_ih, w_hh, b_ih, b_hh, after);
  return cell_impl<float>(x, h, w_ih, w_hh, b_ih, b_hh, after);
}

// Generation's whole step for a unidirectional stack in one call: [embedding rows ->] each layer's
// cell [-> the linear head]. x: int64 ids [B] with `embedding` [V, E], else features [B, I].
// weights: per layer w_ih, w_hh, b_ih, b_hh (biases may be None); h [L, B, H].
// Returns (the head's [B, O] with head_w, else the last layer's state [B, H]; h_n [L, B, H]).
template <typename T>
std::tuple<Tensor, Tensor> stack_step_impl(const Tensor& x, const Tensor& h_in,
                                           const c10::List<std::optional<Tensor>>& weights,
                                           const std::optional<Tensor>& embedding,
                                           const std::optional<Tensor>& head_w,
                                           const std::optional<Tensor>& head_b, bool after) {
  const int64_t L = static_cast<int64_t>(weights.size()) / 4, B = h_in.size(1), H = h_in.size(2);
  const auto opts = h_in.options();
  Tensor h = h_in.contiguous();
  Tensor hn = at::empty({L, B, H}, opts);
  Tensor inputs;  // [B, I]: the gathered embedding rows, or x
  if (embedding && embedding->defined()) {
    Tensor emb = embedding->contiguous(), ids = x.contiguous();
    TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1 && ids.size(0) == B && emb.dim() == 2 &&
                    emb.scalar_type() == h.scalar_type(),
                "grutrain_native::gru_stack_step: ids must be int64 [B] and the embedding [V, E] of h's dtype");
    const int64_t V = emb.size(0), E = emb.size(1);
    inputs = at::empty({B, E}, opts);
    const int64_t* id = ids.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(id[b] >= 0 && id[b] < V, "grutrain_native::gru_stack_step: token id ", id[b],
                  " out of range [0, ", V, ")");
      std::copy_n(emb.data_ptr<T>() + id[b] * E, E, inputs.data_ptr<T>() + b * E);
    }
  } else {
    inputs = x.contiguous();
    TORCH_CHECK(inputs.dim() == 2 && inputs.size(0) == B && inputs.scalar_type() == h.scalar_type(),
                "grutrain_native::gru_stack_step: x must be [B, I] of h's dtype");
  }
  Tensor scratch = at::empty({cell_scratch(B, H, after)}, opts);
  const T* in = inputs.data_ptr<T>();
  int64_t I = inputs.size(1);
  for (int64_t l = 0; l < L; ++l) {
    const Tensor w_ih = weights.get(4 * l).value().contiguous(), w_hh = weights.get(4 * l + 1).value().contiguous();
    const std::optional<Tensor> b_ih = weights.get(4 * l + 2), b_hh = weights.get(4 * l + 3);
    check_inputs(at::empty({1, B, I}, opts), h.select(0, l), w_ih, w_hh, b_ih, b_hh);
    const std::vector<T> bias = pack_bias<T>(b_ih, b_hh, H, after);
    T* out = hn.data_ptr<T>() + l * B * H;
    cell_step<T>(B, I, H, in, I, h.data_ptr<T>() + l * B * H, w_ih.data_ptr<T>(), w_hh.data_ptr<T>(), bias.data(),
                 after, scratch.data_ptr<T>(), out);
    in = out;
    I = H;
  }
  if (!(head_w && head_w->defined())) return {hn.select(0, L - 1).clone(), hn};
  const Tensor hw = head_w->contiguous();
  TORCH_CHECK(hw.dim() == 2 && hw.size(1) == H && hw.scalar_type() == h.scalar_type(),
              "grutrain_native::gru_stack_step: head_w must be [O, H] of h's dtype");
  const int64_t O = hw.size(0);
  Tensor logits = at::empty({B, O}, opts);
  matmul_nt<T>(B, O, H, in, H, hw.data_ptr<T>(), H, logits.data_ptr<T>(), O);
  if (head_b && head_b->defined()) {
    const Tensor hb = head_b->contiguous();
    TORCH_CHECK(hb.numel() == O && hb.scalar_type() == h.scalar_type(),
                "grutrain_native::gru_stack_step: head_b must be [O] of h's dtype");
    for (int64_t b = 0; b < B; ++b)
      for (int64_t o = 0; o < O; ++o) logits.data_ptr<T>()[b * O + o] += hb.data_ptr<T>()[o];
  }
  return {logits, hn};
}

std::tuple<Tensor, Tensor> gru_stack_step_cpu(const Tensor& x, const Tensor& h,
                                              const c10::List<std::optional<Tensor>>& weights,
                                              const std::optional<Tensor>& embedding,
                                              const std::optional<Tensor>& head_w,
                                              const std::optional<Tensor>& head_b, c10::string_view reset) {
  const bool after = is_after(reset);
  TORCH_CHECK(h.dim() == 3 && h.size(0) >= 1 && weights.size() == static_cast<size_t>(4 * h.size(0)),
              "grutrain_native::gru_stack_step: h must be [L, B, H] with 4 weights (w_ih, w_hh, b_ih, b_hh) per layer");
  if (h.scalar_type() == at::kDouble)
    return stack_step_impl<double>(x, h, weights, embedding, head_w, head_b, after);
  TORCH_CHECK(h.scalar_type() == at::kFloat, "grutrain_native: float32 or float64 only, got ", h.scalar_type());
  return stack_step_impl<float>(x, h, weights, embedding, head_w, head_b, after);
}

}  // namespace
}  // namespace grutrain_native

TORCH_LIBRARY_IMPL(grutrain_native, CPU, m) {
  m.impl("gru_layer", &grutrain_native::gru_layer_cpu);
  m.impl("gru_layer_inference", &grutrain_native::gru_layer_inference_cpu);
  m.impl("gru_layer_backward", &grutrain_native::gru_layer_backward_cpu);
  m.impl("gru_cell", &grutrain_native::gru_cell_cpu);
  m.impl("gru_stack_step", &grutrain_native::gru_stack_step_cpu);
}

// Tuning/test knobs of these CPU kernels (no tensor arguments: a catch-all kernel).
TORCH_LIBRARY_FRAGMENT(grutrain_native, m) {
  m.def("cpu_tune(str name, int value=-1) -> int", &grutrain_native::cpu_tune);
}
