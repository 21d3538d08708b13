// The CPU's compiled loops: im2col, col2im, max pooling and LRN, forward and
// backward, for NCHW arrays in float32 and float64; the convolution's output
// pass (transpose, bias, ReLU) and its backward twin; the SGD update; the
// matrix-vector product of a fully connected layer at batch 1, and its weight gradient at a
// small batch, a sum of outer products.
//
// They compute exactly what tinynet/ops/cpu_kernels.py computes with NumPy,
// operation for operation and in the same order, so the two give the same
// bits (tests/test_cpu_loops.py checks it).  (The max-pool's argmax is found
// another way, the same place by the same rule.)  What differs is the number of
// passes over memory.  NumPy runs one pass per call: the paper's LRN is about
// ten passes over the activations, a 3x3 max-pool nine.  Here each output
// element is computed in one visit, while its inputs are still in the cache.
//
// Built on first use by tinynet/ops/cpu_loops.py into a cache folder (as the
// CUDA emulation is) and called through ctypes.  Each function works on the
// images [n0, n1) of the batch and writes only their part of the output, so
// Python's thread pool (ops.cpu_kernels.parallel_chunks, parallel_runs) runs several
// calls at once on disjoint pieces: ctypes releases the GIL during a call.
//
// Layouts (as everywhere in tinynet):
//   x, gx : (N, C, H, W)                       images
//   cols  : (C*KH*KW, N*OH*OW)                 row (c, ky, kx), column (n, oy, ox)
//   y, gy : (N, C, OH, OW)                     pooled
//   argmax: (N, C, OH, OW), int32              where in its input plane (h * W + w) each
//                                              pooled output's maximum sits

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>  // the non-temporal stores of im2col and outer_sum
#endif

typedef long long i64;

// Each loop is inlined into its exported function (below), so that it is compiled for every
// instruction set that function is cloned for.
#define INLINE inline __attribute__((always_inline))

// L lanes of T in one 32-byte SIMD register (GCC's vector extensions), and as many integer lanes
template <typename T>
struct Lanes {
    static constexpr int L = 32 / sizeof(T);
    typedef T V __attribute__((vector_size(32)));
    typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type Int;
    typedef Int I __attribute__((vector_size(32)));
};

// f(0), f(1), ... f(N-1), each index a compile-time constant (std::integral_constant): a loop
// unrolled by the compiler, so that what it indexes (a Winograd map's entries, an LRN window's
// rows) is constant and the loop of pixels or tiles around it is one straight run of
// arithmetic, made SIMD code
template <typename F, int... I>
static INLINE void unroll_sequence(F&& f, std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
static INLINE void unroll(F&& f) {
    unroll_sequence(f, std::make_integer_sequence<int, N>{});
}

// The output positions o in [0, out_len) whose input position o*stride - pad + k
// lies inside [0, in_len): o_lo <= o < o_hi.
static inline void inside(i64 in_len, i64 out_len, i64 stride, i64 pad, i64 k, i64& o_lo, i64& o_hi) {
    // smallest o with o*stride >= pad - k, largest o with o*stride <= in_len - 1 + pad - k
    const i64 lo_num = pad - k, hi_num = in_len - 1 + pad - k;
    o_lo = lo_num <= 0 ? 0 : (lo_num + stride - 1) / stride;
    o_hi = hi_num < 0 ? 0 : hi_num / stride + 1;
    if (o_hi > out_len) o_hi = out_len;
    if (o_lo > o_hi) o_lo = o_hi;
}

// ---------------------------------------------------------------------------
// im2col: cols[(c*KH + ky)*KW + kx, (n*OH + oy)*OW + ox] = x_padded[n, c, oy*SH + ky, ox*SW + kx]
//
// Each row of cols is written from start to end, the images [n0, n1) one after
// another, so that the writes stream through memory.  Channel c of those images is
// read KH*KW times, once per row: the images go in blocks whose channel planes fit
// in about 256 KB (the core's L2 cache), so that the rereads hit the cache (conv1's
// planes are 206 KB each: one image at a time; conv3's 676 bytes: all of them).
//
// The block's planes of channel c are first copied once into a buffer, with their
// zero border (x_padded itself) and, for a horizontal stride SW over 1, split into SW
// phases: phase r holds the padded columns r, r + SW, r + 2*SW, ...  Then what window
// row (ky, kx) reads for a row of outputs oy is a contiguous run of OW elements:
// phase kx % SW, padded row oy*SH + ky, from column kx / SW.  Each is a plain copy, in
// blocks of 8 elements whose last one may overlap the one before (13 floats: [0, 8)
// and [5, 13)), with no test for the border.  Copied element by element with border
// tests and strided reads, conv3's columns took twice as long, conv1's 1.4 times.
//
// With `stream` (asked for by tinynet/ops/cpu_loops.py where the columns outgrow the caches:
// conv1's are 134 MB at batch 32), each image's run of a row (OH*OW elements, 12 KB in conv1)
// is first made in a small buffer, then stored past the cache in whole cache lines
// (stream_copy).  A plain store first reads its line in from memory, so writing the columns
// moved their bytes twice; the GEMM that reads them next finds them in memory either way.
// conv1's im2col at batch 32 took 0.70 of the time so (2-core AMD EPYC, Zen 5).

// dst[0, n) = src[0, n), n >= 8, in blocks of 8 elements (each a single SIMD load and store)
template <typename T>
static inline void copy_in_blocks_of_8(T* __restrict__ dst, const T* __restrict__ src, i64 n) {
    i64 i = 0;
    for (; i + 8 <= n; i += 8) std::memcpy(dst + i, src + i, 8 * sizeof(T));
    if (i < n) std::memcpy(dst + n - 8, src + n - 8, 8 * sizeof(T));  // the last 8, overlapping
}

// dst[0, n) = src[0, n), the whole cache lines of dst stored past the cache (non-temporal
// stores, SSE2's, which every x86-64 has, 16 bytes each: four fill a line); the part lines at
// either end as usual, since they share their line with the data before or after.  The values
// are moved as bits (the same instruction for float and double).
template <typename T>
static inline void stream_copy(T* __restrict__ dst, const T* __restrict__ src, i64 n) {
    i64 i = 0;
#if defined(__SSE2__)
    const i64 to_line = (64 - i64(reinterpret_cast<uintptr_t>(dst) % 64)) % 64;  // bytes
    if (to_line % i64(sizeof(T)) == 0) {  // always, for an array of T aligned to its T
        const i64 head = std::min<i64>(n, to_line / i64(sizeof(T))), line = 64 / i64(sizeof(T));
        for (; i < head; ++i) dst[i] = src[i];
        for (; i + line <= n; i += line)
            for (int part = 0; part < 4; ++part) {
                __m128 v;
                std::memcpy(&v, reinterpret_cast<const char*>(src + i) + 16 * part, 16);
                _mm_stream_ps(reinterpret_cast<float*>(dst + i) + 4 * part, v);
            }
    }
#endif
    for (; i < n; ++i) dst[i] = src[i];
}

// One padded plane (H + 2*PH rows), split into SW phases of WQ columns each: padded column
// w goes to phase w % SW, column w / SW.  The border (and a phase's last column past the
// padded width) is left as it is: zero.
template <typename T>
static inline void padded_phases(T* __restrict__ phases, const T* __restrict__ image, i64 H, i64 W, i64 SW,
                                 i64 PH, i64 PW, i64 WQ) {
    const i64 HP = H + 2 * PH;
    for (i64 h = 0; h < H; ++h) {
        const T* row = image + h * W;
        if (SW == 1) {
            std::memcpy(phases + (h + PH) * WQ + PW, row, W * sizeof(T));
            continue;
        }
        for (i64 r = 0; r < SW; ++r) {
            T* dst = phases + (r * HP + h + PH) * WQ;
            // image column w = j*SW + r - PW, for the j with 0 <= w < W
            // (the divisions round down: the numerators are not negative)
            const i64 j_lo = PW - r <= 0 ? 0 : (PW - r + SW - 1) / SW;
            const i64 j_hi = W - 1 + PW - r < 0 ? 0 : std::min(WQ, (W - 1 + PW - r) / SW + 1);
            const i64 shift = r - PW;
            if (SW == 4)  // conv1's stride, known to the compiler
                for (i64 j = j_lo; j < j_hi; ++j) dst[j] = row[j * 4 + shift];
            else
                for (i64 j = j_lo; j < j_hi; ++j) dst[j] = row[j * SW + shift];
        }
    }
}

template <typename T>
static INLINE void im2col(const T* x, T* cols, i64 N, i64 C, i64 H, i64 W, i64 KH, i64 KW, i64 SH, i64 SW,
                          i64 PH, i64 PW, i64 OH, i64 OW, i64 n0, i64 n1, bool stream) {
    const i64 ncols = N * OH * OW;
    const i64 HP = H + 2 * PH, WQ = (W + 2 * PW + SW - 1) / SW;  // padded rows; one phase's columns
    const i64 plane = SW * HP * WQ;                                // one padded plane, its SW phases
    const i64 block = std::max<i64>(1, (256 * 1024) / (plane * i64(sizeof(T))));
    std::vector<T> phases(std::min(block, n1 - n0) * plane, T(0));
    std::vector<T> run(stream ? OH * OW : 0);  // with `stream`: one image's run of a row, made here first
    for (i64 b0 = n0; b0 < n1; b0 += block) {
        const i64 b1 = std::min(n1, b0 + block);  // this block: images [b0, b1)
        for (i64 c = 0; c < C; ++c) {
            for (i64 n = b0; n < b1; ++n)
                padded_phases(phases.data() + (n - b0) * plane, x + (n * C + c) * H * W, H, W, SW, PH, PW, WQ);
            for (i64 ky = 0; ky < KH; ++ky)
                for (i64 kx = 0; kx < KW; ++kx) {
                    T* dst = cols + ((c * KH + ky) * KW + kx) * ncols + b0 * OH * OW;
                    const i64 r = kx % SW, q = kx / SW;
                    for (i64 n = b0; n < b1; ++n, dst += OH * OW) {
                        const T* src = phases.data() + (n - b0) * plane + (r * HP + ky) * WQ + q;
                        T* out = stream ? run.data() : dst;
                        for (i64 oy = 0; oy < OH; ++oy, out += OW, src += SH * WQ) {
                            if (OW >= 8)
                                copy_in_blocks_of_8(out, src, OW);
                            else
                                for (i64 ox = 0; ox < OW; ++ox) out[ox] = src[ox];
                        }
                        if (stream)
                            stream_copy(dst, run.data(), OH * OW);
                    }
                }
        }
    }
#if defined(__SSE2__)
    if (stream) _mm_sfence();  // the stores past the cache are done before the caller goes on
#endif
}

// ---------------------------------------------------------------------------
// col2im: gx[n, c, h, w] = sum of the column entries copied from (h, w).  For
// each pixel the terms are added in the order NumPy's col2im adds them: kernel
// offsets (ky, kx) in row-major order, starting from zero.

template <typename T>
static INLINE void col2im(const T* cols, T* gx, i64 N, i64 C, i64 H, i64 W, i64 KH, i64 KW, i64 SH, i64 SW,
                          i64 PH, i64 PW, i64 OH, i64 OW, i64 n0, i64 n1) {
    const i64 ncols = N * OH * OW;
    for (i64 c = 0; c < C; ++c) {
        for (i64 n = n0; n < n1; ++n) {
            T* image = gx + (n * C + c) * H * W;
            for (i64 i = 0; i < H * W; ++i) image[i] = T(0);
        }
        // one row of cols at a time, read from start to end: channel c of every image
        // receives the columns of kernel offset (ky, kx)
        for (i64 ky = 0; ky < KH; ++ky)
            for (i64 kx = 0; kx < KW; ++kx) {
                const T* row = cols + ((c * KH + ky) * KW + kx) * ncols;
                i64 oy_lo, oy_hi, ox_lo, ox_hi;
                inside(H, OH, SH, PH, ky, oy_lo, oy_hi);
                inside(W, OW, SW, PW, kx, ox_lo, ox_hi);
                for (i64 n = n0; n < n1; ++n) {
                    T* image = gx + (n * C + c) * H * W;
                    for (i64 oy = oy_lo; oy < oy_hi; ++oy) {
                        T* dst = image + (oy * SH - PH + ky) * W + (kx - PW);
                        const T* src = row + (n * OH + oy) * OW;
                        if (SW == 1)  // contiguous: the compiler turns this into SIMD adds
                            for (i64 ox = ox_lo; ox < ox_hi; ++ox) dst[ox] += src[ox];
                        else
                            for (i64 ox = ox_lo; ox < ox_hi; ++ox) dst[ox * SW] += src[ox];
                    }
                }
            }
    }
}

// ---------------------------------------------------------------------------
// Max pooling over an already padded x (N, C, H, W) -> y (N, C, OH, OW), and
// argmax (N, C, OH, OW), int32: where in its input plane (h * W + w) each
// output's maximum sits.  Forward visits the window's offsets in row-major
// order and takes a value only if it beats the maximum so far, by np.maximum's
// rule: m stays if m >= v or m is NaN, else v is taken (so the first NaN wins,
// and on ties the first maximum keeps its place).  Backward sends each output's
// gradient to its argmax; where windows overlap, one pixel can be the maximum of
// several and their gradients add, in the outputs' row-major order.

// Forward, one plane at a time.  The plane is first split into its SW stride phases: phase r
// holds the plane's elements f = h * W + w with f % SW == r, in order (AlexNet's stride 2: the
// even ones, then the odd ones).  What kernel offset (ky, kx) reads for output row oy is then
// a contiguous run of one phase: output ox reads f = f0 + ox * SW with f0 = (oy*SH + ky)*W + kx,
// which is element f0 / SW + ox of phase f0 % SW.  A row of outputs is P lanes, OW rounded up
// to whole SIMD vectors: lanes past OW read the next row's elements (or the phases' zero tail)
// and are never written out.  Read straight from x, every offset took strided elements, and a
// row of 6 or 13 outputs ran mostly as the scalar tail of its vector loop: pool5's forward took
// 2.9 times as long, pool1's and pool2's 1.7 (batch 32, one thread).
// Each run of L output lanes (one SIMD register) takes its window's KH*KW candidates one
// after another, the running maximum and its place kept in registers, and is stored once, where
// KH*KW passes over the row each loaded and stored them again: with the passes, pool2's and
// pool5's forward took 1.10-1.16 times as long, pool1's (half its time reading memory at batch
// 32) 0.98-1.01 (one thread, 2 and 32 images, in turn).  Where offset (ky, kx) starts in
// the phases moves on by SH*W elements a row: its phase and index are carried from row to row,
// not divided out again.
template <typename T, bool WHERE>
static INLINE void maxpool_forward(const T* x, T* y, int* argmax, i64 C, i64 H, i64 W, i64 KH, i64 KW, i64 SH,
                                   i64 SW, i64 OH, i64 OW, i64 n0, i64 n1) {
    typedef typename Lanes<T>::V V;
    typedef typename Lanes<T>::I I;
    typedef typename Lanes<T>::Int Int;
    const i64 L = Lanes<T>::L, P = (OW + L - 1) / L * L;  // lanes per row of outputs
    const i64 PL = (H * W + SW - 1) / SW + P;  // one phase, and room for the lanes past OW
    std::vector<T> phases(SW * PL, T(0));
    std::vector<i64> phase(KH * KW), index(KH * KW);  // offset (ky, kx) of this row: phase, index in it
    std::vector<const T*> from(KH * KW);
    std::vector<Int> place(KH * KW);
    I lane;  // lane j's candidate sits SW*j elements on in the plane
    #pragma GCC unroll 8
    for (int j = 0; j < L; ++j) lane[j] = Int(j * SW);
    const i64 step_index = SH * W / SW, step_phase = SH * W % SW;  // a row on
    const i64 end = n1 * C * OH * OW;  // the end of this call's outputs
    for (i64 plane = n0 * C; plane < n1 * C; ++plane) {
        const T* xp = x + plane * H * W;
        if (SW == 2) {  // AlexNet's stride, two runs the compiler turns into SIMD code
            T* __restrict__ even = phases.data();
            T* __restrict__ odd = even + PL;
            for (i64 j = 0; j < H * W / 2; ++j) {
                even[j] = xp[2 * j];
                odd[j] = xp[2 * j + 1];
            }
            if (H * W % 2) even[H * W / 2] = xp[H * W - 1];
        } else {
            for (i64 f = 0; f < H * W; ++f) phases[(f % SW) * PL + f / SW] = xp[f];
        }
        for (i64 k = 0; k < KH * KW; ++k) {  // row 0: f0 = ky*W + kx
            const i64 f0 = (k / KW) * W + k % KW;
            phase[k] = f0 % SW;
            index[k] = f0 / SW;
        }
        for (i64 oy = 0; oy < OH; ++oy) {
            for (i64 k = 0; k < KH * KW; ++k) {  // this row's candidates for lane 0: where they are read, their place
                from[k] = phases.data() + phase[k] * PL + index[k];
                place[k] = Int(index[k] * SW + phase[k]);
            }
            const i64 row = (plane * OH + oy) * OW;
            T* __restrict__ yrow = y + row;
            int* __restrict__ arow = WHERE ? argmax + row : nullptr;
            for (i64 b = 0; b < P; b += L) {  // lanes b .. b+L-1
                V mv, c;
                I wv = {};
                std::memcpy(&mv, from[0] + b, sizeof(V));
                if (WHERE) wv = lane + Int(place[0] + b * SW);
                for (i64 k = 1; k < KH * KW; ++k) {
                    std::memcpy(&c, from[k] + b, sizeof(V));
                    const auto keep = (mv >= c) | (mv != mv);
                    mv = keep ? mv : c;
                    if (WHERE) wv = keep ? wv : lane + Int(place[k] + b * SW);
                }
                if (row + b + L <= end) {  // a whole register, its lanes past OW over rows written later
                    std::memcpy(yrow + b, &mv, sizeof(V));
                    if (WHERE)
                        #pragma GCC unroll 8
                        for (int j = 0; j < L; ++j) arow[b + j] = int(wv[j]);
                } else {  // the last outputs of [n0, n1): lane by lane, the lanes past OW dropped
                    for (i64 j = 0; j < OW - b; ++j) {
                        yrow[b + j] = mv[j];
                        if (WHERE) arow[b + j] = int(wv[j]);
                    }
                }
            }
            for (i64 k = 0; k < KH * KW; ++k) {  // the next row
                index[k] += step_index;
                phase[k] += step_phase;
                if (phase[k] >= SW) {
                    phase[k] -= SW;
                    index[k] += 1;
                }
            }
        }
    }
}

template <typename T>
static INLINE void maxpool_backward(const int* argmax, const T* gy, T* gx, i64 C, i64 HW, i64 OHW, i64 n0,
                                    i64 n1) {
    for (i64 plane = n0 * C; plane < n1 * C; ++plane) {
        T* gp = gx + plane * HW;
        const int* where = argmax + plane * OHW;
        const T* g = gy + plane * OHW;
        for (i64 i = 0; i < HW; ++i) gp[i] = T(0);
        for (i64 o = 0; o < OHW; ++o) gp[where[o]] += g[o];
    }
}

// ---------------------------------------------------------------------------
// LRN across channels, x (N, C, HW): s = k + alpha * (sum of x^2 over the
// window of channels c-before .. c+after), y = x * s^-beta.  The window sum is
// added as NumPy's channel_window_sum adds it: the channel itself, then the
// channels below, nearest first, then those above.
//
// Nothing but x is kept for backward: backward computes s and y again, one
// tile of pixels at a time while its channels are in the cache, with the same
// operations in the same order, so they are the bits forward had.  Keeping s
// and y would write two more activation-sized arrays in forward and read them
// back in backward: more memory traffic than the arithmetic costs.

// s^-beta; for the paper's beta = 0.75 (compared as the double it was given)
// 1 / (sqrt(s) * sqrt(sqrt(s))), as cpu_kernels.power_neg_beta computes it.
template <typename T>
static inline T power_neg_beta(T s, double beta) {
    if (beta == 0.75) {
        const T r = std::sqrt(s);
        return T(1) / (r * std::sqrt(r));
    }
    return std::pow(s, -T(beta));
}

// The rows of channel c's window, in the order the sums take them: c itself, then the channels
// below, nearest first, then those above; row_of(ch) is channel ch's row.  Returns how many (at
// most 1 + below + above).
template <typename T, typename RowOf>
static inline int window_rows(i64 c, i64 C, i64 below, i64 above, const T** rows, RowOf row_of) {
    int R = 0;
    rows[R++] = row_of(c);
    for (i64 d = 1; d <= below && d <= c; ++d) rows[R++] = row_of(c - d);
    for (i64 d = 1; d <= above && c + d < C; ++d) rows[R++] = row_of(c + d);
    return R;
}
// ... with channel 0's row at `first` and the channels `stride` apart
template <typename T>
static inline int window_rows(const T* first, i64 stride, i64 c, i64 C, i64 below, i64 above, const T** rows) {
    return window_rows(c, C, below, above, rows, [&](i64 ch) { return first + ch * stride; });
}

// A window of up to MAX_WINDOW rows is summed inside the loop that uses the sum, in registers,
// its R rows read side by side (R a compile-time constant, so the sum is unrolled and the loop
// is SIMD code): with_rows calls f(std::integral_constant<int, R>).  A wider window (size > 9)
// is summed a row at a time into a scratch row.  One pass instead of six (the paper's size 5)
// took lrn1's forward from 9.2 to 7.1 ms and lrn2's from 6.1 to 4.4, their backward from 20.9
// to 17.4 and 12.5 to 10.8 (one thread, 64 planes of 55x55 and 27x27).
constexpr int MAX_WINDOW = 9;

template <int MAX, typename F>
static INLINE void with_rows(int R, F&& f) {  // f(std::integral_constant<int, R>), for R in 1 .. MAX
    unroll<MAX>([&](auto i) {
        constexpr int rows = decltype(i)::value + 1;
        if (R == rows) f(std::integral_constant<int, rows>{});
    });
}

// use(p, sum) for p = 0 .. L-1, sum = the window's rows at p added in their order, each
// squared first if SQUARES; a wide window's sums are built in the scratch row
template <bool SQUARES, typename T, typename Use>
static INLINE void window_sum(const T* const* rows, int R, i64 L, T* __restrict__ scratch, Use use) {
    auto term = [](T v) { return SQUARES ? v * v : v; };
    if (R <= MAX_WINDOW) {
        with_rows<MAX_WINDOW>(R, [&](auto r) {
            constexpr int N = decltype(r)::value;
            const T* __restrict__ w[N];
            for (int j = 0; j < N; ++j) w[j] = rows[j];
            for (i64 p = 0; p < L; ++p) {
                T sum = term(w[0][p]);
                #pragma GCC unroll 16
                for (int j = 1; j < N; ++j) sum += term(w[j][p]);
                use(p, sum);
            }
        });
        return;
    }
    for (i64 p = 0; p < L; ++p) scratch[p] = term(rows[0][p]);
    for (int j = 1; j < R; ++j)
        for (i64 p = 0; p < L; ++p) scratch[p] += term(rows[j][p]);
    for (i64 p = 0; p < L; ++p) use(p, scratch[p]);
}

// s = k + alpha * (the window's sum of squares), rounded as cpu_kernels.lrn_scale rounds it
template <typename T>
static INLINE T lrn_s(T sum_of_squares, T a, T kk) {
    T s = sum_of_squares * a;
    s += kk;
    return s;
}

template <typename T>
static INLINE void lrn_forward(const T* x, T* y, i64 C, i64 HW, i64 before, i64 after, double alpha,
                               double beta, double k, i64 n0, i64 n1) {
    const T a = T(alpha), kk = T(k);
    std::vector<T> sc(HW);  // a wide window's sums, one channel's
    std::vector<const T*> rows(1 + before + after);
    for (i64 n = n0; n < n1; ++n) {
        const T* xn = x + n * C * HW;
        for (i64 c = 0; c < C; ++c) {
            T* __restrict__ yc = y + (n * C + c) * HW;
            const T* __restrict__ xc = xn + c * HW;
            const int R = window_rows(xn, HW, c, C, before, after, rows.data());
            window_sum<true>(rows.data(), R, HW, sc.data(),
                             [&](i64 p, T sum) { yc[p] = power_neg_beta(lrn_s(sum, a, kk), beta) * xc[p]; });
        }
    }
}

// gx_i = gy_i * s_i^-beta - 2*alpha*beta * x_i * sum_{j: i in window(j)} gy_j * y_j / s_j
//
// The sums run along channels only.  Two passes, channel by channel, over a tile of pixels:
// the first makes channel j's u_j = gy_j * y_j / s_j and s_j^-beta, the second sums the u of
// channel c's window (the first's turned around: `after` channels below, `before` above) into
// gx_c.  The second pass for channel c needs u up to channel c + before only, so it runs right
// behind the first, `before` channels back, and only the last W = before + 1 + after channels'
// u and s^-beta are kept: two rings of W rows, channel j in row j % W.  So each channel's x and
// gy are read from memory once, by the first pass, and read again by the second a few
// channels later, from the cache; the rings stay in the core's L2 cache.  A tile is a whole
// plane where its rings fit RING_BYTES each (AlexNet's planes, 55x55 and 27x27, with the
// paper's 5 channels), fewer pixels (at least 16) where not.  The same operations in the same
// order as when the first pass ran over all channels before the second (tiles of 384 KB per
// array, whose x and gy the second pass read again from beyond the L2 at lrn1's 96 channels):
// the same bits, in 0.86 of the time at batch 32 and 128 and 0.72 at batch 8 (lrn1 and lrn2,
// two threads, in turn with that loop; 2-core AMD EPYC, Zen 4).
constexpr i64 RING_BYTES = 64 << 10;

template <typename T>
static INLINE void lrn_backward(const T* x, const T* gy, T* gx, i64 C, i64 HW, i64 before, i64 after,
                                double alpha, double beta, double k, i64 n0, i64 n1) {
    const T a = T(alpha), kk = T(k), coef = T(-2.0 * alpha * beta);
    const i64 W = before + 1 + after;  // the rings' rows
    const i64 tile = std::max<i64>(16, std::min<i64>(HW, RING_BYTES / (i64)sizeof(T) / W));
    std::vector<T> u(W * tile), q(W * tile);  // gy * y / s, and s^-beta, of channel j in row j % W
    std::vector<T> sc(tile);                  // a wide window's sums, one channel's
    std::vector<const T*> rows(W);
    for (i64 n = n0; n < n1; ++n) {
        for (i64 p0 = 0; p0 < HW; p0 += tile) {
            const i64 L = std::min(tile, HW - p0), base = n * C * HW + p0;
            for (i64 j = 0; j < C + before; ++j) {
                if (j < C) {  // channel j: s, then y = s^-beta * x as forward made it
                    T* __restrict__ qj = q.data() + j % W * tile;
                    T* __restrict__ uj = u.data() + j % W * tile;
                    const T* __restrict__ xj = x + base + j * HW;
                    const T* __restrict__ gyj = gy + base + j * HW;
                    const int R = window_rows(x + base, HW, j, C, before, after, rows.data());
                    window_sum<true>(rows.data(), R, L, sc.data(), [&](i64 p, T sum) { qj[p] = lrn_s(sum, a, kk); });
                    for (i64 p = 0; p < L; ++p) {
                        const T s = qj[p], r = power_neg_beta(s, beta);
                        T v = gyj[p] * (r * xj[p]);
                        uj[p] = v / s;
                        qj[p] = r;
                    }
                }
                const i64 c = j - before;  // channel c: the sum over the j whose window holds it, then gx
                if (c < 0)
                    continue;
                T* __restrict__ g = gx + base + c * HW;
                const T* __restrict__ xc = x + base + c * HW;
                const T* __restrict__ qc = q.data() + c % W * tile;
                const T* __restrict__ gyc = gy + base + c * HW;
                const int R = window_rows(c, C, after, before, rows.data(),
                                          [&](i64 ch) -> const T* { return u.data() + ch % W * tile; });
                window_sum<false>(rows.data(), R, L, sc.data(), [&](i64 p, T sum) {
                    T t = sum * xc[p];
                    t *= coef;
                    g[p] = qc[p] * gyc[p] + t;
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The convolution's output pass (tinynet/ops/conv.py).  The GEMM leaves a chunk
// of n images filter-major, prod (O, n, P) with P = OH*OW; the layer's output is
// image-major, y (n, O, P):
//   y[i, o, p] = prod[o, i, p] + bias[o]     (a plain copy without a bias)
// and, for a convolution followed by a ReLU, max(., 0) in the same visit, by
// np.maximum's rule (a NaN stays).  Backward's twin turns the output gradient
// gy (n, O, P) filter-major again, g (O, n, P), times the ReLU's mask:
//   g[o, i, p] = gy[i, o, p] * (y[i, o, p] > 0)   (a plain copy without a ReLU)
// Each works on the images [i0, i1) of the chunk; a row of P values is contiguous
// on both sides.

// The ReLU, max(v, 0) by np.maximum's rule (a NaN stays), and backward's mask, g * (y > 0) as
// NumPy computes it: a factor 1 or 0, so g * 0 keeps the sign of zero and is NaN for an
// infinite g.  Both written as a choice, so that a loop over them is SIMD code.  The Winograd
// transforms below apply the same two.
template <typename T>
static inline T relu(T v) {
    return (v >= T(0) || v != v) ? v : T(0);
}

template <typename T>
static inline T relu_mask(T g, T y) {
    const T zero = g * T(0);
    return y > T(0) ? g : zero;
}

template <typename T, bool BIAS, bool RELU>
static inline void output_row(T* __restrict__ dst, const T* __restrict__ src, T b, i64 P) {
    for (i64 p = 0; p < P; ++p) {
        T v = BIAS ? src[p] + b : src[p];
        if (RELU) v = relu(v);
        dst[p] = v;
    }
}

template <typename T>
static INLINE void conv_output(const T* prod, const T* bias, T* y, i64 O, i64 n, i64 P, i64 relu, i64 i0,
                               i64 i1) {
    for (i64 i = i0; i < i1; ++i)
        for (i64 o = 0; o < O; ++o) {
            const T* src = prod + (o * n + i) * P;
            T* dst = y + (i * O + o) * P;
            if (bias && relu) output_row<T, true, true>(dst, src, bias[o], P);
            else if (bias) output_row<T, true, false>(dst, src, bias[o], P);
            else if (relu) output_row<T, false, true>(dst, src, T(0), P);
            else output_row<T, false, false>(dst, src, T(0), P);
        }
}

template <typename T>
static INLINE void conv_grad_rows(const T* gy, const T* y, T* g, i64 O, i64 n, i64 P, i64 i0, i64 i1) {
    for (i64 i = i0; i < i1; ++i)
        for (i64 o = 0; o < O; ++o) {
            const T* __restrict__ src = gy + (i * O + o) * P;
            T* __restrict__ dst = g + (o * n + i) * P;
            if (y) {
                const T* __restrict__ out = y + (i * O + o) * P;
                for (i64 p = 0; p < P; ++p) dst[p] = relu_mask(src[p], out[p]);
            } else {
                for (i64 p = 0; p < P; ++p) dst[p] = src[p];
            }
        }
}

// ---------------------------------------------------------------------------
// Winograd's F(SxS, KxK): F(2x2, 3x3) and F(4x4, 5x5), the transforms around its A*A GEMMs
// (A = S + K - 1: the tile's side, 4 or 8; S: the side of the output block a tile makes).  The
// NumPy twins in cpu_kernels.py say what each computes; every sum is cpu_kernels._combine's,
// its terms in the order its matrix writes them, and these follow them to the bit.  Tiles:
// TH x TW per image, tile (ty, tx) reading the padded rows S*ty .. S*ty+A-1 and columns
// S*tx .. S*tx+A-1 and writing the output block rows S*ty .. S*ty+S-1.  A tile matrix
// (A*A, rows, T) holds entry xi = A*i + j of tile t of row r at
// [xi][r][t], T = n*TH*TW, t = (image*TH + ty)*TW + tx.
// Each call does the (image, channel) planes [i0, i1) x [c0, c1), channel by channel and
// within a channel image by image: row (xi, c) of the tile matrix holds channel c's tiles of
// every image in turn, so a call given all the images reads or writes each of its A*A rows
// from end to end (tinynet/ops/cpu_loops.py gives each thread its own channels so).

// The maps of cpu_kernels.WINOGRAD_MAPS: B^T (A x A), G (A x K), A^T (S x A).  Each fraction is
// written as one division of two integers, as the twins' Python writes it, so that both round it
// to the same double.
template <int K>
struct Maps;
template <>
struct Maps<3> {
    static constexpr int A = 4, S = 2;
    static constexpr double BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
    static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    static constexpr double AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};
template <>
struct Maps<5> {
    static constexpr int A = 8, S = 4;
    static constexpr double BT[8][8] = {{4, 0, -21, 0, 21, 0, -4, 0},    {0, 4, 4, -17, -17, 4, 4, 0},
                                        {0, 4, -4, -17, 17, 4, -4, 0},   {0, 2, 1, -10, -5, 8, 4, 0},
                                        {0, 2, -1, -10, 5, 8, -4, 0},    {0, 4, 8, -5, -10, 1, 2, 0},
                                        {0, 4, -8, -5, 10, 1, -2, 0},    {0, -4, 0, 21, 0, -21, 0, 4}};
    static constexpr double G[8][5] = {{1.0 / 4, 0, 0, 0, 0},
                                       {-1.0 / 18, -1.0 / 18, -1.0 / 18, -1.0 / 18, -1.0 / 18},
                                       {1.0 / 18, -1.0 / 18, 1.0 / 18, -1.0 / 18, 1.0 / 18},
                                       {1.0 / 360, 1.0 / 180, 1.0 / 90, 1.0 / 45, 2.0 / 45},
                                       {-1.0 / 360, 1.0 / 180, -1.0 / 90, 1.0 / 45, -2.0 / 45},
                                       {16.0 / 45, 8.0 / 45, 4.0 / 45, 2.0 / 45, 1.0 / 45},
                                       {-16.0 / 45, 8.0 / 45, -4.0 / 45, 2.0 / 45, -1.0 / 45},
                                       {0, 0, 0, 0, 1.0 / 4}};
    static constexpr double AT[4][8] = {{1, 1, 1, 1, 1, 1, 1, 0},
                                        {0, 1, -1, 2, -2, 1.0 / 2, -1.0 / 2, 0},
                                        {0, 1, 1, 4, 4, 1.0 / 4, 1.0 / 4, 0},
                                        {0, 1, -1, 8, -8, 1.0 / 8, -1.0 / 8, 1}};
};

// sum_k c(k) * v[k] over the nonzero c(k), in the order of k, as cpu_kernels._combine: the
// first term starts the sum, a coefficient 1 or -1 adds or subtracts its term as it is, any
// other multiplies it first.  c and v are known at compile time once the loops are unrolled.
template <typename T, int N, typename C>
static INLINE T combine(C c, const T (&v)[N]) {
    T total = T(0);
    bool first = true;
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) {
        const double ck = c(k);
        if (ck == 0)
            continue;
        if (ck == 1)
            total = first ? v[k] : total + v[k];
        else if (ck == -1)
            total = first ? -v[k] : total - v[k];
        else
            total = first ? v[k] * T(ck) : total + v[k] * T(ck);
        first = false;
    }
    return total;
}

// Y = M^T X M for each of n tiles X (A x A) and a map M (A x R), given as a type whose Map{}(k, r)
// is M's entry (k, r): y(r, s, tile, value) for r, s < R.  The sums are taken as the twins take
// them, first down X's columns (M^T X), then along the rows of that, and in two passes over
// the tiles: sandwich_columns makes M^T X of every tile, one column j at a time, into
// t[(r*A + j)*n + tile], and sandwich_rows then (M^T X) M tile by tile from t (whose rows
// may lie further apart than n: `stride`).  A pass so
// reads A rows of the tile matrix at once, not all A*A (those rows often lie a multiple of
// 4 KiB apart, in one cache set, where 16 or 64 of them evict each other), each loop one SIMD
// run over the tiles.  Taking each tile whole instead, the filters' gradient took 3 to 9
// times as long (float32, one thread), the input's 1.1 times.  The input's gradient (B gV B^T),
// the filters' (G^T gU G), the output's A^T M A and the filters' own map G g G^T are all this.
template <typename T, int A, int R, typename Map, typename Read>
static INLINE void sandwich_columns(Read x, T* __restrict__ t, i64 n) {  // x(i, j, tile)
    unroll<A>([&](auto jc) {
        constexpr int j = decltype(jc)::value;
        #pragma GCC ivdep  // t's rows never overlap
        for (i64 tile = 0; tile < n; ++tile) {
            T col[A];
            unroll<A>([&](auto i) { col[i] = x(i, j, tile); });
            unroll<R>([&](auto r) {
                t[(r * A + j) * n + tile] = combine([](int k) { return Map{}(k, decltype(r)::value); }, col);
            });
        }
    });
}
template <typename T, int A, int R, typename Map, typename Write>
static INLINE void sandwich_rows(const T* __restrict__ t, i64 n, i64 stride, Write y) {
    #pragma GCC ivdep  // every tile writes its own entries
    for (i64 tile = 0; tile < n; ++tile)
        unroll<R>([&](auto r) {
            T row[A];
            unroll<A>([&](auto j) { row[j] = t[(decltype(r)::value * A + j) * stride + tile]; });
            unroll<R>([&](auto s) { y(r, s, tile, combine([](int k) { return Map{}(k, decltype(s)::value); }, row)); });
        });
}

// Each call goes channel by channel (or filter by filter) and within it image by image, so the
// planes it reads or writes in the images lie C*H*W elements apart: a jump the processor's
// prefetchers do not follow.  So the plane PLANES_AHEAD images on is asked for in advance: a
// hint, no effect on any result.  At batch 32 (2-core AMD EPYC, Zen 5, one process, in turn
// with the loops without the hints) the input's tiles took 0.85-0.91 of the time so, the
// output's 0.88-0.94, the output gradient's 0.92-0.97 and the input gradient's 0.92-0.96.
constexpr i64 PLANES_AHEAD = 2;

template <typename T>
static inline void prefetch_read(const T* p, i64 count) {  // p[0, count) into the caches
    for (i64 b = 0; b < count * i64(sizeof(T)); b += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + b, 0, 3);
}
template <typename T>
static inline void prefetch_write(T* p, i64 count) {  // the same, for lines about to be written
    for (i64 b = 0; b < count * i64(sizeof(T)); b += 64) __builtin_prefetch(reinterpret_cast<char*>(p) + b, 1, 3);
}

// The loops run over whole planes at once, vectorised over the tiles: a padded
// plane is kept as its S*S phases Q[a][b][y][x] = padded[S*y + a][S*x + b], each
// (TH + E) x (TW + E) with E = (A - 1)/S, rows QW >= TW + E apart and phases QS apart, so
// that the input tile entry (r, s) of every tile is one contiguous run of phase (r%S, s%S),
// shifted by (r/S)*QW + s/S, when tiles are numbered "wide", t' = ty*QW + tx (spare columns
// past each tile row).
//
// FIXED: in float32, a plane whose phases fit in 8 x 8 (7 x 7 tiles: a 5x5's output up to 28
// a side, a 3x3's up to 14; AlexNet's 27x27 and 13x13) takes QW = 8 and QS = 64, known when
// the loop is compiled.  Then each of the A*A entries a tile reads (or, in the input's
// gradient, adds back) is one fixed offset from a single pointer, where with the plane's own
// QW and QS each had a pointer of its own, more than the registers hold, loaded again from
// the stack for every SIMD run (a third of the instructions of conv2's input tiles were such
// loads).  At batch 32 (2-core AMD EPYC, Zen 5, in turn with the loops before): the input's
// tiles took 0.73 of the time at conv2, 0.84-0.86 at conv3-5; the input's gradient 0.85-0.88.
// The output's gradient, whose rows of at most 7 tiles are then a loop the compiler unrolls
// (each block entry taken from every S-th column), 0.91-0.97.  float64 and larger planes keep
// the plane's own sizes.

// Each phase's pixels that fall on the padding are zero whatever the plane: q starts as zeros
// (winograd_input) and winograd_phases writes only the pixels inside the image, so that
// no plane pays for its borders again.
template <int S, typename T>
static inline void winograd_phases(T* __restrict__ q, const T* __restrict__ plane, i64 H, i64 W, i64 PH, i64 PW,
                                   i64 TH, i64 TW, i64 E, i64 QW, i64 QS) {
    // q: S*S phases of (TH + E) x (TW + E), their rows QW apart and the phases QS apart
    for (int a = 0; a < S; ++a)
        for (int b = 0; b < S; ++b) {
            // phase column x reads image column w = Sx + b - PW: inside the image for x in [lo, hi)
            const i64 lo = std::min(TW + E, std::max<i64>(0, (PW - b + S - 1) / S));
            const i64 hi = std::max(lo, std::min(TW + E, (W + PW - b + S - 1) / S));
            for (i64 y = 0; y < TH + E; ++y) {
                const i64 h = S * y + a - PH;
                if (h < 0 || h >= H)
                    continue;
                T* __restrict__ dst = q + (S * a + b) * QS + y * QW;
                const T* __restrict__ src = plane + h * W + b - PW;  // src[Sx] = plane[h][Sx + b - PW]
                for (i64 x = lo; x < hi; ++x) dst[x] = src[S * x];
            }
        }
}

template <typename T, int K, int FIXED>
static INLINE void winograd_input(const T* x, T* v, i64 n, i64 C, i64 H, i64 W, i64 PH, i64 PW, i64 TH,
                                  i64 TW, i64 i0, i64 i1, i64 c0, i64 c1) {
    typedef Maps<K> M;
    constexpr int A = M::A, S = M::S, E = (A - 1) / S;
    const i64 QW = FIXED ? FIXED : TW + E, QS = FIXED ? FIXED * FIXED : (TH + E) * QW, TT = TH * TW, T_ = n * TT, XI = C * T_;
    // the phases of channel c in every image of the call, each followed by QW zeros (the last
    // spare lanes read there); V is then written A rows at a time (r = 0 .. A-1), each row from
    // end to end over the images
    const i64 P = S * S * QS + QW;
    std::vector<T> q((i1 - i0) * P);
    for (i64 c = c0; c < c1; ++c) {
        for (i64 i = i0; i < i1; ++i) {
            if (i + PLANES_AHEAD < i1)  // (the next channel's first planes are not asked for)
                prefetch_read(x + ((i + PLANES_AHEAD) * C + c) * H * W, H * W);
            winograd_phases<S>(q.data() + (i - i0) * P, x + (i * C + c) * H * W, H, W, PH, PW, TH, TW, i64(E), QW, QS);
        }
        unroll<A>([&](auto rc) __attribute__((always_inline)) {  // see TINYNET_CLONES
            constexpr int r = decltype(rc)::value;
            for (i64 i = i0; i < i1; ++i) {
                const T* __restrict__ d[A][A];  // d[k][s][t']: entry (k, s) of wide tile t'
                for (int k = 0; k < A; ++k)
                    for (int s = 0; s < A; ++s)
                        d[k][s] = q.data() + (i - i0) * P + (S * (k % S) + s % S) * QS + (k / S) * QW + s / S;
                T* __restrict__ o = v + c * T_ + i * TT;  // entry e of tile t at o[e * XI + t]
                for (i64 ty = 0; ty < TH; ++ty) {
                    // a row of tiles and its E spare lanes too, which land on the next tiles of
                    // these rows in the call (written again later in this pass), never past the
                    // call's last tile (which would be the next channel's).  Every row is then one
                    // SIMD run.
                    const i64 lanes = std::min(TW + E, (i1 - i) * TT - ty * TW), from = ty * QW, to = ty * TW;
                    #pragma GCC ivdep  // the entries' rows never overlap
                    for (i64 tx = 0; tx < lanes; ++tx) {
                        const i64 t = from + tx;
                        T u[A];  // row r of B^T d
                        unroll<A>([&](auto s) {
                            T col[A];
                            unroll<A>([&](auto k) { col[k] = d[k][s][t]; });
                            u[s] = combine([](int k) { return M::BT[r][k]; }, col);
                        });
                        unroll<A>([&](auto jc) {  // (B^T d) B
                            constexpr int j = decltype(jc)::value;
                            o[(A * r + j) * XI + to + tx] = combine([](int k) { return M::BT[j][k]; }, u);
                        });
                    }
                }
            }
        });
    }
}

// FIXED's test: a plane of TH x TW tiles whose phases fit in 8 x 8 (the callers ask it in float32)
template <int K>
static INLINE bool fits_fixed_layout(i64 TH, i64 TW) {
    constexpr int E = (Maps<K>::A - 1) / Maps<K>::S;
    return TW + E <= 8 && TH + E <= 8;
}

template <typename T, int K>
static INLINE void winograd_input_any(const T* x, T* v, i64 n, i64 C, i64 H, i64 W, i64 PH, i64 PW, i64 TH,
                                      i64 TW, i64 i0, i64 i1, i64 c0, i64 c1) {
    if constexpr (sizeof(T) == 4)
        if (fits_fixed_layout<K>(TH, TW))
            return winograd_input<T, K, 8>(x, v, n, C, H, W, PH, PW, TH, TW, i0, i1, c0, c1);
    winograd_input<T, K, 0>(x, v, n, C, H, W, PH, PW, TH, TW, i0, i1, c0, c1);
}

template <typename T, int K>
static INLINE void winograd_output(const T* m, const T* bias, T* y, i64 n, i64 O, i64 OH, i64 OW, i64 TH,
                                   i64 TW, i64 relu, i64 i0, i64 i1, i64 o0, i64 o1) {
    typedef Maps<K> M;
    constexpr int A = M::A, S = M::S;
    const i64 TT = TH * TW, T_ = n * TT, XI = O * T_, L = (i1 - i0) * TT;
    // u = A^T M for filter o's tiles of all the call's images, u[(A*a + j)*L + t], made column
    // by column (sandwich_columns: each pass reads A rows of M from end to end, not A*A at once);
    // then (A^T M) A image by image, into a block of its SxS outputs
    struct AT {  // the map A (A x S), as A^T's transpose
        constexpr double operator()(int k, int r) const { return M::AT[r][k]; }
    };
    std::vector<T> u(S * A * L), block(S * S * TT);
    for (i64 o = o0; o < o1; ++o) {
        const T* __restrict__ q = m + o * T_ + i0 * TT;
        T* __restrict__ uu = u.data();
        sandwich_columns<T, A, S, AT>([&](int i, int j, i64 t) { return q[(A * i + j) * XI + t]; }, uu, L);
        const T b = bias ? bias[o] : T(0);
        for (i64 i = i0; i < i1; ++i) {
            const T* __restrict__ ui = uu + (i - i0) * TT;
            T* __restrict__ out = block.data();
            sandwich_rows<T, A, S, AT>(ui, TT, L, [&](int a, int c, i64 t, T v) { out[(S * a + c) * TT + t] = v; });
            if (bias || relu)  // the bias, then the ReLU, over the block while it is in the cache
                for (i64 k = 0; k < S * S * TT; ++k) {
                    const T w = bias ? out[k] + b : out[k];
                    out[k] = relu ? ::relu(w) : w;
                }
            T* dst = y + (i * O + o) * OH * OW;  // each tile's SxS at its place, past OH, OW dropped
            if (i + PLANES_AHEAD < i1)
                prefetch_write(y + ((i + PLANES_AHEAD) * O + o) * OH * OW, OH * OW);
            const i64 whole = OW / S;  // tiles whose S columns all lie inside the output
            for (i64 row = 0; row < OH; ++row) {  // the block's columns 0 .. S-1, side by side
                const T* __restrict__ c0 = out + (row % S) * S * TT + (row / S) * TW;  // column c at c0 + c*TT
                T* __restrict__ d = dst + row * OW;
                for (i64 tx = 0; tx < whole; ++tx)
                    unroll<S>([&](auto c) { d[S * tx + c] = c0[c * TT + tx]; });
                for (i64 c = 0; c < OW - whole * S; ++c)
                    d[S * whole + c] = c0[c * TT + whole];
            }
        }
    }
}

template <typename T, int K, int FIXED>
static INLINE void winograd_grad_output(const T* gy, const T* y, T* z, i64 n, i64 O, i64 OH, i64 OW, i64 TH,
                                        i64 TW, i64 i0, i64 i1, i64 o0, i64 o1) {
    typedef Maps<K> M;
    constexpr int A = M::A, S = M::S;
    const i64 TT = TH * TW, T_ = n * TT, XI = O * T_, L = (i1 - i0) * TT;
    // g: the SxS blocks of filter o's gradient in all the call's images, g[(Sa + b)*L + t]: the
    // block's (a, b); Z is then written A rows at a time (i = 0 .. A-1), each from end to end
    std::vector<T> g(S * S * L), padded(S * S * TT);
    for (i64 o = o0; o < o1; ++o) {
        for (i64 i = i0; i < i1; ++i) {
            const i64 plane = (i * O + o) * OH * OW;
            if (i + PLANES_AHEAD < i1) {
                prefetch_read(gy + plane + PLANES_AHEAD * O * OH * OW, OH * OW);
                if (y)
                    prefetch_read(y + plane + PLANES_AHEAD * O * OH * OW, OH * OW);
            }
            T* __restrict__ pad = padded.data();  // the plane, masked, in S*TH x S*TW with zeros past the output
            for (i64 row = 0; row < S * TH; ++row) {
                T* __restrict__ dst = pad + row * S * TW;
                const T* __restrict__ src = gy + plane + row * OW;
                const T* __restrict__ out = y ? y + plane + row * OW : nullptr;
                i64 col = 0;
                if (row < OH) {
                    if (out) {
                        for (; col < OW; ++col) dst[col] = relu_mask(src[col], out[col]);
                    } else {
                        for (; col < OW; ++col) dst[col] = src[col];
                    }
                }
                for (; col < S * TW; ++col) dst[col] = T(0);
            }
            for (int a = 0; a < S; ++a)
                for (int b = 0; b < S; ++b)
                    for (i64 ty = 0; ty < TH; ++ty) {
                        const T* __restrict__ src = pad + (S * ty + a) * S * TW + b;
                        T* __restrict__ dst = g.data() + (S * a + b) * L + (i - i0) * TT + ty * TW;
                        if (FIXED) {  // at most FIXED - 1 tiles a row: a loop the compiler unrolls
                            #pragma GCC unroll 8
                            for (i64 tx = 0; tx < FIXED - 1; ++tx)
                                if (tx < TW) dst[tx] = src[S * tx];
                        } else {
                            for (i64 tx = 0; tx < TW; ++tx) dst[tx] = src[S * tx];
                        }
                    }
        }
        const T* __restrict__ gb = g.data();
        T* __restrict__ q = z + o * T_ + i0 * TT;
        unroll<A>([&](auto ic) {
            constexpr int i = decltype(ic)::value;
            T* __restrict__ zr[A];  // zr[j][t]: entry (i, j) of tile t
            for (int j = 0; j < A; ++j) zr[j] = q + (A * i + j) * XI;
            #pragma GCC ivdep  // the entries' rows and g never overlap
            for (i64 t = 0; t < L; ++t) {
                T row[S];  // row i of A g, its S columns
                unroll<S>([&](auto j) {
                    T col[S];
                    unroll<S>([&](auto k) { col[k] = gb[(S * k + j) * L + t]; });
                    row[j] = combine([](int k) { return M::AT[k][i]; }, col);
                });
                unroll<A>([&](auto jc) {  // (A g) A^T
                    constexpr int j = decltype(jc)::value;
                    zr[j][t] = combine([](int k) { return M::AT[k][j]; }, row);
                });
            }
        });
    }
}

template <typename T, int K>
static INLINE void winograd_grad_output_any(const T* gy, const T* y, T* z, i64 n, i64 O, i64 OH, i64 OW, i64 TH,
                                            i64 TW, i64 i0, i64 i1, i64 o0, i64 o1) {
    if constexpr (sizeof(T) == 4)
        if (fits_fixed_layout<K>(TH, TW))
            return winograd_grad_output<T, K, 8>(gy, y, z, n, O, OH, OW, TH, TW, i0, i1, o0, o1);
    winograd_grad_output<T, K, 0>(gy, y, z, n, O, OH, OW, TH, TW, i0, i1, o0, o1);
}

template <typename T, int K, int FIXED>
static INLINE void winograd_input_grad(const T* gv, T* gx, i64 n, i64 C, i64 H, i64 W, i64 PH, i64 PW,
                                       i64 TH, i64 TW, i64 i0, i64 i1, i64 c0, i64 c1) {
    typedef Maps<K> M;
    constexpr int A = M::A, S = M::S, E = (A - 1) / S;
    const i64 QW = FIXED ? FIXED : TW + E, QS = FIXED ? FIXED * FIXED : (TH + E) * QW;  // as winograd_input's
    const i64 TT = TH * TW, T_ = n * TT, XI = C * T_;
    // gd: B gV B^T of every tile; q: the padded plane's gradient as its S*S phases (winograd_phases).
    // Each row of TW tiles is added to its phase in SIMD runs of L lanes, the lanes past the row
    // adding -0.0 (x + -0.0 is x, to the bit): they may read past gd's end and reach past q's.
    typedef typename Lanes<T>::V V;
    typedef typename Lanes<T>::I I;
    const int L = Lanes<T>::L;
    I lane;
    #pragma GCC unroll 8
    for (int j = 0; j < L; ++j) lane[j] = j;
    const V minus_zero = V{} - T(0);  // every lane -0.0
    struct BT {  // the map B (A x A) of B gV B^T = (B^T)^T gV B^T, as B^T's transpose
        constexpr double operator()(int k, int r) const { return M::BT[k][r]; }
    };
    // half: B gV of channel c's tiles in IB images, made column by column, then (B gV) B^T and
    // the rest image by image.  With the 64 rows of a 5x5 map the columns pass takes all the
    // call's images at once, reading A rows of gV from end to end as the output's transform
    // does: image by image (measured with 2x2 blocks' 36 rows) it read the rows' short runs at
    // a time, and conv2's input gradient took 1.2-1.3 times as long (one thread, float32).  The
    // 16 rows of a 3x3 map go image by image: all at once, the 13x13 layers took up to 1.1 times
    // as long.
    const i64 IB = A * A > 16 ? i1 - i0 : 1;
    std::vector<T> gd(A * A * TT + L), q(S * S * QS + QW + L), half(A * A * IB * TT);
    for (i64 c = c0; c < c1; ++c)
        for (i64 b0 = i0; b0 < i1; b0 += IB) {
            const i64 b1 = std::min(i1, b0 + IB), NT = (b1 - b0) * TT;
            const T* __restrict__ src = gv + c * T_ + b0 * TT;
            if (b1 + (PLANES_AHEAD - 1) * IB < i1)  // the A*A rows' runs of the block PLANES_AHEAD on
                for (int e = 0; e < A * A; ++e)
                    prefetch_read(src + e * XI + PLANES_AHEAD * IB * TT, IB * TT);
            sandwich_columns<T, A, A, BT>([&](int i, int j, i64 t) { return src[(A * i + j) * XI + t]; },
                                          half.data(), NT);
            for (i64 i = b0; i < b1; ++i) {
                T* __restrict__ g = gd.data();
                sandwich_rows<T, A, A, BT>(half.data() + (i - b0) * TT, TT, NT,
                                           [&](int r, int s, i64 t, T v) { g[(A * r + s) * TT + t] = v; });
                for (i64 k = 0; k < S * S * QS; ++k) q[k] = T(0);
                #pragma GCC unroll 8
                for (int e = 0; e < A * A; ++e) {  // added at the tiles' places, entry by entry as the twin
                    const int r = e / A, s = e % A;
                    T* __restrict__ phase = q.data() + (S * (r % S) + s % S) * QS + (r / S) * QW + s / S;
                    const T* __restrict__ ge = gd.data() + e * TT;
                    for (i64 ty = 0; ty < TH; ++ty)
                        for (i64 tx = 0; tx < (FIXED ? 1 : TW); tx += L) {  // (a fixed layout's rows: one run)
                            V add, sum;
                            std::memcpy(&add, ge + ty * TW + tx, sizeof(V));
                            std::memcpy(&sum, phase + ty * QW + tx, sizeof(V));
                            add = lane < I{} + typename Lanes<T>::Int(TW - tx) ? add : minus_zero;  // lanes past the row: -0.0
                            sum += add;
                            std::memcpy(phase + ty * QW + tx, &sum, sizeof(V));
                        }
                }
                T* out = gx + (i * C + c) * H * W;
                if (i + PLANES_AHEAD < i1)
                    prefetch_write(out + PLANES_AHEAD * C * H * W, H * W);
                // padded column pw = w + PW lies in phase pw % S, at pw / S.  The row's first columns
                // up to the next multiple of S one by one, then whole runs of S columns, the S phases
                // side by side (as the output's blocks are written), then the rest.
                const i64 lead = std::min(W, (S - PW % S) % S), runs = (W - lead) / S, base = (lead + PW) / S;
                for (i64 h = 0; h < H; ++h) {  // padded row ph = h + PH: in phases (ph % S, .), row ph / S
                    const i64 ph = h + PH;
                    const T* __restrict__ row = q.data() + S * (ph % S) * QS + (ph / S) * QW;  // phase b at b*QS
                    T* __restrict__ d = out + h * W;
                    for (i64 w = 0; w < lead; ++w)
                        d[w] = row[((w + PW) % S) * QS + (w + PW) / S];
                    for (i64 x = 0; x < runs; ++x)
                        unroll<S>([&](auto b) { d[lead + S * x + b] = row[b * QS + base + x]; });
                    for (i64 w = lead + S * runs; w < W; ++w)
                        d[w] = row[((w + PW) % S) * QS + (w + PW) / S];
                }
            }
        }
}

template <typename T, int K>
static INLINE void winograd_input_grad_any(const T* gv, T* gx, i64 n, i64 C, i64 H, i64 W, i64 PH, i64 PW,
                                           i64 TH, i64 TW, i64 i0, i64 i1, i64 c0, i64 c1) {
    if constexpr (sizeof(T) == 4)
        if (fits_fixed_layout<K>(TH, TW))
            return winograd_input_grad<T, K, 8>(gv, gx, n, C, H, W, PH, PW, TH, TW, i0, i1, c0, c1);
    winograd_input_grad<T, K, 0>(gv, gx, n, C, H, W, PH, PW, TH, TW, i0, i1, c0, c1);
}

// The filters' maps, over the (filter, channel) pairs [p0, p1): U = G g G^T, w (P, K, K) ->
// u (A*A, P); and the gradient's way back, G^T gU G, gu (A*A, P) -> gw (P, K, K).

// A block of n <= FILTER_BLOCK (filter, channel) pairs' kernels (n, KK) turned around into
// t (KK, FILTER_BLOCK), and back: so the maps below read (and their gradient writes) each kernel
// entry of a block as one SIMD run along the pairs, where in place those lie KK values apart (a
// gather, or a scatter).  With it and the next block's kernels asked for in advance, the
// filters' map took 0.74-0.94 of its time on AlexNet's conv2-5 (float32, in turn with the loop
// before, warm caches) and 0.82-0.90 with the caches flushed before each call; the gradient's
// 0.89-0.97 warm, the same cold.  In a batch-32 training step (2-core AMD EPYC, Zen 5) the map
// and its gradient together took 0.86 of their time, 6.2 ms against 7.1 (16 pairs in turn).
constexpr i64 FILTER_BLOCK = 64;
template <int KK, typename T>
static INLINE void filters_turned(const T* __restrict__ w, T* __restrict__ t, i64 n) {
    for (i64 p = 0; p < n; ++p)
        #pragma GCC unroll 25
        for (int e = 0; e < KK; ++e) t[e * FILTER_BLOCK + p] = w[KK * p + e];
}
template <int KK, typename T>
static INLINE void filters_turned_back(const T* __restrict__ t, T* __restrict__ w, i64 n) {
    for (i64 p = 0; p < n; ++p)
        #pragma GCC unroll 25
        for (int e = 0; e < KK; ++e) w[KK * p + e] = t[e * FILTER_BLOCK + p];
}

template <typename T, int K>
static INLINE void winograd_weight(const T* w, T* u, i64 P, i64 p0, i64 p1) {
    typedef Maps<K> M;
    constexpr int A = M::A;
    struct GT {  // the map G^T (K x A) of G g G^T = (G^T)^T g G^T
        constexpr double operator()(int k, int r) const { return M::G[r][k]; }
    };
    constexpr i64 B = FILTER_BLOCK;  // pairs per block: U's rows lie P apart (often a multiple of 4 KiB: one
    T wt[K * K * B], half[A * K * B], block[A * A * B];  // cache set), so a block is made here and
    for (i64 b0 = p0; b0 < p1; b0 += B) {                // copied out row by row
        const i64 n = std::min(B, p1 - b0);
        if (b0 + 2 * B <= p1) prefetch_read(w + K * K * (b0 + B), K * K * B);
        filters_turned<K * K>(w + K * K * b0, wt, n);
        sandwich_columns<T, K, A, GT>([&](int i, int j, i64 p) { return wt[(K * i + j) * B + p]; }, half, n);
        sandwich_rows<T, K, A, GT>(half, n, n, [&](int r, int s, i64 p, T v) { block[(A * r + s) * B + p] = v; });
        #pragma GCC unroll 8
        for (int e = 0; e < A * A; ++e) std::memcpy(u + e * P + b0, block + e * B, n * sizeof(T));
    }
}

template <typename T, int K>
static INLINE void winograd_weight_grad(const T* gu, T* gw, i64 P, i64 p0, i64 p1) {
    typedef Maps<K> M;
    constexpr int A = M::A;
    struct G {  // the map G (A x K)
        constexpr double operator()(int k, int r) const { return M::G[k][r]; }
    };
    constexpr i64 B = FILTER_BLOCK;  // pairs per block: the two passes' half-way values stay in the cache
    T half[K * A * B], block[K * K * B];
    for (i64 b0 = p0; b0 < p1; b0 += B) {  // G^T gU G
        const i64 n = std::min(B, p1 - b0);
        sandwich_columns<T, A, K, G>([&](int i, int j, i64 p) { return gu[(A * i + j) * P + b0 + p]; }, half, n);
        sandwich_rows<T, A, K, G>(half, n, n, [&](int r, int s, i64 p, T v) { block[(K * r + s) * B + p] = v; });
        filters_turned_back<K * K>(block, gw + K * K * b0, n);
    }
}

// ---------------------------------------------------------------------------
// The paper's SGD rule, v = m*v - (wd*lr)*w - lr*g;  w = w + v, rounded step by step as
// NumPy's four in-place passes round it (optim._update), for one value or a SIMD vector of
// them (U).  sgd_update applies it over flat arrays, outer_sum_sgd (below) to each weight
// gradient as it is summed.
template <typename T>
struct Rule {
    T m, decay, rate;  // m, wd*lr, lr, each rounded to T
    Rule(double lr, double momentum, double wd) : m(T(momentum)), decay(T(wd * lr)), rate(T(lr)) {}

    template <typename U>
    INLINE void apply(U& w, U& v, const U& g) const {
        U vi = v * m;
        vi -= decay * w;
        vi -= rate * g;
        v = vi;
        w += vi;
    }
};

// The update in place over flat arrays [i0, i1)
template <typename T>
static INLINE void sgd_update(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ v, double lr,
                              double m, double wd, i64 i0, i64 i1) {
    const Rule<T> rule(lr, m, wd);
    for (i64 i = i0; i < i1; ++i) rule.apply(w[i], v[i], g[i]);
}

// ---------------------------------------------------------------------------
// A fully connected layer at batch 1 (to 4), a matrix times a vector (or each of a few
// vectors): y[o] = sum_i w[o, i] * x[i] for the rows [o0, o1) of w (O, I).  Each weight is used
// once, so the time is that of reading the weights (fc6's are 151 MB); the loop reads each row
// once, from start to end.
//
// The order of the sum (cpu_kernels.matvec follows it): S = 4*L partial sums (128 bytes of
// lanes: 32 float32, 16 float64), partial sum s taking the products i = s, s + S, s + 2S, ...
// of the first I - I % S in order, starting from its first; then the halves added, s + (s +
// S/2) for s < S/2, then the halves of that, down to one; then the last I % S products one
// by one.  With I < S: the products one by one, starting from the first.

// Rows o .. o+Q-1 together: Q rows read side by side kept the memory busier than one (fc6:
// 4.3-4.4 ms with 4 rows, as fast as a plain read of its weights, against 4.9 with one row and
// 4.7-5.1 for OpenBLAS's sgemv; interleaved, two threads); each row's sum is the same.
template <typename T, int Q>
static INLINE void matvec_rows(const T* __restrict__ w, const T* __restrict__ x, T* __restrict__ y, i64 I,
                               i64 o) {
    typedef typename Lanes<T>::V V;
    constexpr int L = Lanes<T>::L, R = 4, S = R * L;  // R vectors of partial sums a row
    const i64 n = I / S * S;
    T sum[Q];
    i64 i = 0;
    if (n > 0) {
        V acc[Q][R], a, b;
        for (int q = 0; q < Q; ++q) {
            for (int r = 0; r < R; ++r) {
                std::memcpy(&a, w + (o + q) * I + r * L, sizeof(V));
                std::memcpy(&b, x + r * L, sizeof(V));
                acc[q][r] = a * b;
            }
        }
        for (i64 k = S; k < n; k += S) {
            for (int q = 0; q < Q; ++q) {
                for (int r = 0; r < R; ++r) {
                    std::memcpy(&a, w + (o + q) * I + k + r * L, sizeof(V));
                    std::memcpy(&b, x + k + r * L, sizeof(V));
                    acc[q][r] += a * b;
                }
            }
        }
        for (int q = 0; q < Q; ++q) {
            const V half = acc[q][0] + acc[q][2], other = acc[q][1] + acc[q][3];  // S -> S/2: r + (r+2)
            const V whole = half + other;                                         // S/2 -> L
            T lanes[L];
            std::memcpy(lanes, &whole, sizeof(V));
            for (int width = L / 2; width >= 1; width /= 2)  // L -> L/2 -> ... -> 1
                for (int l = 0; l < width; ++l) lanes[l] = lanes[l] + lanes[l + width];
            sum[q] = lanes[0];
        }
        i = n;
    } else {
        for (int q = 0; q < Q; ++q) sum[q] = I > 0 ? w[(o + q) * I] * x[0] : T(0);
        i = I > 0 ? 1 : 0;
    }
    for (int q = 0; q < Q; ++q) {
        for (i64 j = i; j < I; ++j) sum[q] += w[(o + q) * I + j] * x[j];
        y[o + q] = sum[q];
    }
}

// N vectors, x (N, I) and y (N, O): each block of 4 rows of w is read from memory once and from
// the cache for the other vectors.
template <typename T>
static INLINE void matvec(const T* __restrict__ w, const T* __restrict__ x, T* __restrict__ y, i64 N, i64 I,
                          i64 O, i64 o0, i64 o1) {
    i64 o = o0;
    for (; o + 4 <= o1; o += 4)
        for (i64 n = 0; n < N; ++n) matvec_rows<T, 4>(w, x + n * I, y + n * O, I, o);
    for (; o < o1; ++o)
        for (i64 n = 0; n < N; ++n) matvec_rows<T, 1>(w, x + n * I, y + n * O, I, o);
}

// ---------------------------------------------------------------------------
// A fully connected layer's weight gradient at a small batch, gw = gy.T @ x, as the sum of
// N outer products it is: gw[o, i] = sum_n gt[o, n] * x[n, i] for the rows [o0, o1) of gw
// (O, I), with gt = gy.T (O, N) and x (N, I).  The order of the sum (cpu_kernels.outer_sum
// follows it): n = 0, 1, ..., N-1, the first product itself, then each next product added.
//
// With N of 8 or 16, each weight-sized output takes a few multiply-adds, and the time is that
// of writing gw (fc6's is 151 MB).  OpenBLAS first clears gw, then adds the product into it:
// more passes over the 151 MB, and 12-15 ms for fc6 at batch 8 here against 6 for this loop
// and for a plain fill of the array (benchmarks/fc_blocks.py).  So:
// - x is copied a tile of columns at a time (OUTER_TILE_BYTES of each of its N rows) into one
//   contiguous block: x's rows lie a multiple of 4 KB apart at fc6's and fc7's widths, and 16
//   of them read side by side evicted each other from the L1 cache;
// - Q = 6 rows of gw (4 in an update at a small batch, see outer_sum) and 64 bytes of
//   columns (16 floats) are summed at once, each row's sums one 64-byte vector (GCC's vector
//   extensions): two AVX2 registers, 12 sums in registers (AVX2 has 16), or one AVX-512
//   register.  Each x vector read serves Q rows, and the independent sums hide the adds'
//   latency.  These loops are compiled for AVX-512 too (TINYNET_WIDE_CLONES, below): the
//   same multiplies and adds in the same order, half the instructions;
// - with `stream`, the sums are stored past the cache (non-temporal stores, SSE2's, which
//   every x86-64 has): gw is read again only by the update, after the rest of the backward
//   pass has gone through the cache, and a store past it saves reading each line in first.
//   The caller asks for it for outputs larger than the cache, with rows a multiple of 64
//   bytes long, so that every row starts at the same place in a cache line (64 bytes).  A
//   store past the cache that fills only part of a line costs as much as reading the line in
//   (fc6 at batch 8 took 28 ms so, against 6-7 with whole lines), so the columns go in tiles
//   from the first one on a line's start: each row's 64-byte vector then fills one line.
//   The columns before it, and the part line at the end of a row, are stored as usual (they
//   share a line with the row before or after).  gw need not be aligned: NumPy's arrays
//   start 16 bytes into a line as often as not, and a gradient made aligned by slicing a
//   bigger array would not own its memory (autograd would copy it, 151 MB for fc6).
constexpr i64 OUTER_TILE_BYTES = 1024;

template <typename T, typename V>
static INLINE void store_vector(T* p, const V& v, bool stream) {
#if defined(__SSE2__)
    if (stream) {  // in 16-byte quarters, moved as bits (the same instruction for float and double)
        for (int b = 0; b < int(sizeof(V)); b += 16) {
            __m128 part;
            std::memcpy(&part, reinterpret_cast<const char*>(&v) + b, 16);
            _mm_stream_ps(reinterpret_cast<float*>(reinterpret_cast<char*>(p) + b), part);
        }
        return;
    }
#endif
    std::memcpy(p, &v, sizeof(v));
}

// outer_sum_sgd: the same sums, each used at once in the paper's update of the weight it is
// the gradient of (Rule, as sgd_update applies it), and never stored:
//   v = m*v - (wd*lr)*w - lr*g;  w = w + v
// An optimiser that updates in backward (tinynet/optim.py) calls it from Linear's backward.
// Stored and then updated, fc6's gradient is written (151 MB) and read back, and w and v read
// and written: six passes over the weights' size; here four, w and v through the cache (read
// just before they are written).  At batch 8 on the 2-core Zen 5, fc6: 13.6 ms against 9.4 for
// outer_sum and 12.6 for sgd_update.  The tiles of x are longer here (STEP_TILE_BYTES in all,
// whatever N): each row of w and v is then read in runs of several KB, not 1 KB, which took
// fc6's update at batch 8 from 13.5 to 12.1 ms (16 and 32: 14.6 to 13.5, 19.7 to 18.8).
constexpr i64 STEP_TILE_BYTES = 64 << 10;

template <typename T>
struct Step {
    Rule<T> rule;
    T* w;  // the weights (O, I), row-major, or nullptr: store the gradient instead
    T* v;  // their momentum, the same shape
};

template <typename T>
static INLINE void step_scalar(const Step<T>& k, i64 at, T g) {
    k.rule.apply(k.w[at], k.v[at], g);
}

template <typename T, typename V>
static INLINE void step_vector(const Step<T>& k, i64 at, const V& g) {
    V w, v;
    std::memcpy(&w, k.w + at, sizeof(V));
    std::memcpy(&v, k.v + at, sizeof(V));
    k.rule.apply(w, v, g);
    std::memcpy(k.v + at, &v, sizeof(V));
    std::memcpy(k.w + at, &w, sizeof(V));
}

// rows o .. o+Q-1 of gw, columns i0 .. i0+cols; xt: x's columns i0 .. i0+cols, (N, cols).
// With a Step (k.w set), each sum updates its weight instead of being stored in gw.
template <typename T, int Q>
static INLINE void outer_sum_rows(const T* __restrict__ gt, const T* __restrict__ xt, T* __restrict__ gw,
                                  i64 N, i64 I, i64 o, i64 i0, i64 cols, bool stream, const Step<T>& k) {
    typedef T V __attribute__((vector_size(64)));  // two AVX2 registers, or one AVX-512 register
    constexpr int L = 64 / sizeof(T);
    const T* c[Q];  // row q's coefficients gt[o + q, 0 .. N-1]
    for (int q = 0; q < Q; ++q) c[q] = gt + (o + q) * N;
    i64 j = 0;
    for (; j + L <= cols; j += L) {
        V acc[Q], xv;
        std::memcpy(&xv, xt + j, sizeof(V));
        for (int q = 0; q < Q; ++q) acc[q] = xv * c[q][0];
        for (i64 n = 1; n < N; ++n) {
            std::memcpy(&xv, xt + n * cols + j, sizeof(V));
            for (int q = 0; q < Q; ++q) acc[q] += xv * c[q][n];
        }
        for (int q = 0; q < Q; ++q) {
            const i64 at = (o + q) * I + i0 + j;
            if (k.w) step_vector<T>(k, at, acc[q]);
            else store_vector<T>(gw + at, acc[q], stream);
        }
    }
    for (; j < cols; ++j) {  // the last columns one by one
        for (int q = 0; q < Q; ++q) {
            T sum = xt[j] * c[q][0];
            for (i64 n = 1; n < N; ++n) sum += xt[n * cols + j] * c[q][n];
            const i64 at = (o + q) * I + i0 + j;
            if (k.w) step_scalar<T>(k, at, sum);
            else gw[at] = sum;
        }
    }
}

// x a tile of columns at a time, and in each tile Q rows of gw at a time (the rows past the
// last multiple of Q one by one)
template <typename T, int Q>
static INLINE void outer_sum_tiles(const T* __restrict__ gt, const T* __restrict__ x, T* __restrict__ gw, i64 N,
                                   i64 I, i64 o0, i64 o1, bool stream, const Step<T>& k) {
    // updating weights, x's tile is STEP_TILE_BYTES in all (each row's part at least
    // OUTER_TILE_BYTES): longer runs along the rows of w and v, which it reads and writes
    const i64 tile = std::max<i64>(OUTER_TILE_BYTES, k.w ? STEP_TILE_BYTES / N : 0) / (i64)sizeof(T);
    // the columns before the first on a line's start (the same in every row): a tile of their own
    const i64 to_line = (64 - (i64)(reinterpret_cast<uintptr_t>(gw) % 64)) % 64;  // bytes
    const i64 head = stream ? std::min<i64>(I, to_line / (i64)sizeof(T)) : 0;
    std::vector<T> xt(N * std::min(tile, I));
    for (i64 i0 = 0; i0 < I;) {
        const i64 cols = i0 < head ? head : std::min(tile, I - i0);
        const bool past_cache = stream && i0 >= head;
        for (i64 n = 0; n < N; ++n) std::memcpy(xt.data() + n * cols, x + n * I + i0, cols * sizeof(T));
        i64 o = o0;
        for (; o + Q <= o1; o += Q) outer_sum_rows<T, Q>(gt, xt.data(), gw, N, I, o, i0, cols, past_cache, k);
        for (; o < o1; ++o) outer_sum_rows<T, 1>(gt, xt.data(), gw, N, I, o, i0, cols, past_cache, k);
        i0 += cols;
    }
}

constexpr i64 UPDATE_FEW_ROWS_BATCH = 12;

template <typename T>
static INLINE void outer_sum(const T* __restrict__ gt, const T* __restrict__ x, T* __restrict__ gw, i64 N, i64 I,
                             i64 o0, i64 o1, bool stream, const Step<T>& k) {
    if (N == 0) {  // the sum of no products
        for (i64 at = o0 * I; at < o1 * I; ++at) {
            if (k.w) step_scalar<T>(k, at, T(0));
            else gw[at] = T(0);
        }
        return;
    }
    // Updating weights with few products each (N <= UPDATE_FEW_ROWS_BATCH), Q = 4 rows at a
    // time: the reads and writes of w and v then set the time, and they go as 8 runs through
    // memory at once instead of 12.  On a 2-core Zen 4 EPYC, fc6-fc8 (12 calls each, in turn
    // with Q = 6): 0.76, 0.82-0.86, 0.81-0.85 and 0.88-0.94 of the time at batches 1, 4, 8
    // and 12, 0.99 at 16; Q = 3 gave 0.70 at batch 1 but 1.0 at 12 and 1.2 at 16, where the
    // multiplies and adds take over and each x vector read serves fewer rows.
    if (k.w && N <= UPDATE_FEW_ROWS_BATCH)
        outer_sum_tiles<T, 4>(gt, x, gw, N, I, o0, o1, stream, k);
    else
        outer_sum_tiles<T, 6>(gt, x, gw, N, I, o0, o1, stream, k);
#if defined(__SSE2__)
    if (stream) _mm_sfence();  // the stores past the cache are done before the caller goes on
#endif
}

// ---------------------------------------------------------------------------
// The C interface: one function per (operation, type), suffix f32 or f64.
// On x86-64 with GCC or clang each is compiled twice, for plain x86-64 (SSE2)
// and for AVX2, and the loader picks the one the processor runs (ifunc): AVX2
// does twice as many floats per instruction, and the results are the same
// bits (no fused multiply-adds: the build passes -ffp-contract=off).  A function the
// compiler leaves out of line is not cloned: it is compiled once, for SSE2, and called from
// the AVX2 clone (GCC did so with the unrolled lambdas of winograd_input and
// winograd_grad_output, which took 5-15% longer so).  So every call inside an exported function
// is inlined into it (flatten), and the one lambda flatten still left out says
// always_inline itself; tests/test_cpu_loops.py checks that the library defines no function
// of its own but the exported ones and their clones.
//
// LRN's two loops are cloned a third time, for AVX-512 (x86-64-v4), where GCC uses the 64-byte
// registers: they are bound by their square roots and divisions (one image in the cache, one
// thread: about 0.5 ns an element forward with AVX2), which take twice as many floats at once
// there.  At batch 8 and 32 on a 2-core AMD EPYC (Zen 5), in one process, in turn with the AVX2
// build, the forward took 0.77-0.91 of the time, the backward (more of it memory) 0.91-0.96;
// the same bits.  So are the fully connected layers' outer sums (outer_sum, outer_sum_sgd), whose
// 64-byte vectors are then one register each: half the instructions for the same multiplies and
// adds.  On a 2-core AMD EPYC, Zen 4 (family 25), whose AVX2 build ran them at under a third of
// its arithmetic's peak, fc6-fc8 at batches 8, 16 and 32 (21 calls each, in turn with the AVX2
// build): the products alone took 0.89, 0.81 and 0.77 of the time, the products with the
// update 0.96, 0.93 and 0.83 (the update moves the weights at the memory's speed); the same
// bits.  The other loops ran no faster as AVX-512 clones (Zen 5: 1.06 of the time, all
// together, the Winograd output gradient's up to 1.57), so they stay as they are.

#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define TINYNET_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#if (defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && __GNUC__ >= 11)
#define TINYNET_WIDE_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default"), flatten))
#else  // a compiler that does not know x86-64-v4
#define TINYNET_WIDE_CLONES TINYNET_CLONES
#endif
#else
#define TINYNET_CLONES
#define TINYNET_WIDE_CLONES
#endif

#define TINYNET_EXPORT(T, SUFFIX)                                                                       \
    extern "C" TINYNET_CLONES void im2col_##SUFFIX(const T* x, T* cols, i64 N, i64 C, i64 H, i64 W, i64 KH, i64 KW,    \
                                    i64 SH, i64 SW, i64 PH, i64 PW, i64 OH, i64 OW, i64 n0, i64 n1,     \
                                    i64 stream) {                                                       \
        im2col(x, cols, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, n0, n1, stream != 0);               \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void col2im_##SUFFIX(const T* cols, T* gx, i64 N, i64 C, i64 H, i64 W, i64 KH, i64 KW,   \
                                    i64 SH, i64 SW, i64 PH, i64 PW, i64 OH, i64 OW, i64 n0, i64 n1) {   \
        col2im(cols, gx, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, n0, n1);                           \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void maxpool_forward_##SUFFIX(const T* x, T* y, int* argmax, i64 C, i64 H, i64 W,      \
                                             i64 KH, i64 KW, i64 SH, i64 SW, i64 OH, i64 OW, i64 n0,    \
                                             i64 n1) {                                                  \
        if (argmax) maxpool_forward<T, true>(x, y, argmax, C, H, W, KH, KW, SH, SW, OH, OW, n0, n1);    \
        else maxpool_forward<T, false>(x, y, argmax, C, H, W, KH, KW, SH, SW, OH, OW, n0, n1);          \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void maxpool_backward_##SUFFIX(const int* argmax, const T* gy, T* gx, i64 C, i64 HW,   \
                                              i64 OHW, i64 n0, i64 n1) {                                \
        maxpool_backward(argmax, gy, gx, C, HW, OHW, n0, n1);                                           \
    }                                                                                                   \
    extern "C" TINYNET_WIDE_CLONES void lrn_forward_##SUFFIX(const T* x, T* y, i64 C, i64 HW, i64 before, i64 after,      \
                                         double alpha, double beta, double k, i64 n0, i64 n1) {         \
        lrn_forward(x, y, C, HW, before, after, alpha, beta, k, n0, n1);                                \
    }                                                                                                   \
    extern "C" TINYNET_WIDE_CLONES void lrn_backward_##SUFFIX(const T* x, const T* gy, T* gx, i64 C, i64 HW, i64 before,   \
                                          i64 after, double alpha, double beta, double k, i64 n0,       \
                                          i64 n1) {                                                     \
        lrn_backward(x, gy, gx, C, HW, before, after, alpha, beta, k, n0, n1);                          \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void conv_output_##SUFFIX(const T* prod, const T* bias, T* y, i64 O, i64 n, i64 P,   \
                                                        i64 relu, i64 i0, i64 i1) {                     \
        conv_output(prod, bias, y, O, n, P, relu, i0, i1);                                              \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void conv_grad_rows_##SUFFIX(const T* gy, const T* y, T* g, i64 O, i64 n, i64 P,     \
                                                           i64 i0, i64 i1) {                            \
        conv_grad_rows(gy, y, g, O, n, P, i0, i1);                                                      \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void winograd_input_##SUFFIX(const T* x, T* v, i64 n, i64 C, i64 H, i64 W, i64 PH,   \
                                       i64 PW, i64 TH, i64 TW, i64 i0, i64 i1, i64 c0, i64 c1, i64 K) {\
        if (K == 5) winograd_input_any<T, 5>(x, v, n, C, H, W, PH, PW, TH, TW, i0, i1, c0, c1);         \
        else winograd_input_any<T, 3>(x, v, n, C, H, W, PH, PW, TH, TW, i0, i1, c0, c1);                \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void winograd_output_##SUFFIX(const T* m, const T* bias, T* y, i64 n, i64 O, i64 OH, \
                                        i64 OW, i64 TH, i64 TW, i64 relu, i64 i0, i64 i1, i64 o0,      \
                                        i64 o1, i64 K) {                                                \
        if (K == 5) winograd_output<T, 5>(m, bias, y, n, O, OH, OW, TH, TW, relu, i0, i1, o0, o1);      \
        else winograd_output<T, 3>(m, bias, y, n, O, OH, OW, TH, TW, relu, i0, i1, o0, o1);             \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void winograd_grad_output_##SUFFIX(const T* gy, const T* y, T* z, i64 n, i64 O,      \
                                             i64 OH, i64 OW, i64 TH, i64 TW, i64 i0, i64 i1, i64 o0,   \
                                             i64 o1, i64 K) {                                           \
        if (K == 5) winograd_grad_output_any<T, 5>(gy, y, z, n, O, OH, OW, TH, TW, i0, i1, o0, o1);     \
        else winograd_grad_output_any<T, 3>(gy, y, z, n, O, OH, OW, TH, TW, i0, i1, o0, o1);            \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void winograd_input_grad_##SUFFIX(const T* gv, T* gx, i64 n, i64 C, i64 H, i64 W,    \
                                            i64 PH, i64 PW, i64 TH, i64 TW, i64 i0, i64 i1, i64 c0,    \
                                            i64 c1, i64 K) {                                            \
        if (K == 5) winograd_input_grad_any<T, 5>(gv, gx, n, C, H, W, PH, PW, TH, TW, i0, i1, c0, c1);  \
        else winograd_input_grad_any<T, 3>(gv, gx, n, C, H, W, PH, PW, TH, TW, i0, i1, c0, c1);         \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void winograd_weight_##SUFFIX(const T* w, T* u, i64 P, i64 p0, i64 p1, i64 K) { \
        if (K == 5) winograd_weight<T, 5>(w, u, P, p0, p1);                                             \
        else winograd_weight<T, 3>(w, u, P, p0, p1);                                                    \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void winograd_weight_grad_##SUFFIX(const T* gu, T* gw, i64 P, i64 p0, i64 p1,  \
                                                                 i64 K) {                               \
        if (K == 5) winograd_weight_grad<T, 5>(gu, gw, P, p0, p1);                                      \
        else winograd_weight_grad<T, 3>(gu, gw, P, p0, p1);                                             \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void sgd_update_##SUFFIX(T* w, const T* g, T* v, double lr, double m,     \
                                                       double wd, i64 i0, i64 i1) {                     \
        sgd_update(w, g, v, lr, m, wd, i0, i1);                                                         \
    }                                                                                                   \
    extern "C" TINYNET_CLONES void matvec_##SUFFIX(const T* w, const T* x, T* y, i64 N, i64 I, i64 O, i64 o0,  \
                                                   i64 o1) {                                          \
        matvec(w, x, y, N, I, O, o0, o1);                                                               \
    }                                                                                                   \
    extern "C" TINYNET_WIDE_CLONES void outer_sum_##SUFFIX(const T* gt, const T* x, T* gw, i64 N, i64 I, i64 o0,  \
                                                      i64 o1, i64 stream) {                            \
        outer_sum(gt, x, gw, N, I, o0, o1, stream != 0, Step<T>{Rule<T>(0, 0, 0), nullptr, nullptr});        \
    }                                                                                                   \
    extern "C" TINYNET_WIDE_CLONES void outer_sum_sgd_##SUFFIX(const T* gt, const T* x, T* w, T* v, i64 N, i64 I,     \
                                                          i64 o0, i64 o1, double lr, double m, double wd) {   \
        outer_sum<T>(gt, x, nullptr, N, I, o0, o1, false, Step<T>{Rule<T>(lr, m, wd), w, v});           \
    }

TINYNET_EXPORT(float, f32)
TINYNET_EXPORT(double, f64)
