/* Fused CPU kernels for the generator's inference: float32, no allocation but stack rows.
 *
 * Each kernel replaces a chain of small torch ops whose tensors are too small for torch to spread over
 * threads, so that eager mode pays a dispatch and a pass over memory per op. `iris/models/native.py` compiles
 * this file with the system C compiler, checks every kernel against the torch code it replaces, and falls
 * back to torch when either step fails. Strides are in elements; the channel axis is always contiguous.
 *
 * Built with OpenMP, a kernel splits its rows over `threads` threads when it has enough work (PARALLEL_MIN_*).
 * Loaded into a torch process it shares torch's OpenMP runtime (the same libgomp.so.1), so its threads are
 * torch's own, still spinning from the op before. Built without, it runs on the calling thread.
 */
#include <math.h>
#include <stdint.h>

/* elements below which one thread beats waking others: the recurrence costs about 20 flops per element, the
 * other kernels a few */
#define PARALLEL_MIN_HEAVY 8192
#define PARALLEL_MIN_LIGHT 65536

/* exp(x): range reduction to 2^k e^r, |r| <= ln2 / 2, and a degree-7 polynomial (relative error < 1e-7).
 * Written so that the compiler vectorises the loops that call it (no libm call). */
static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;               /* ln2 split in two for precision */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = { ((int32_t)k + 127) << 23 };
    return p * scale.f;
}

/* 1 - e^x for x <= 0, given a = e^x: a Taylor polynomial of -expm1(x) for x > -1/2 (truncation below 1e-8
 * relative), where 1 - a * a would cancel; 1 - a beyond. */
static inline float one_minus_exp_f(float x, float a) {
    float p = 1.0f / 40320.0f;
    p = p * x + 1.0f / 5040.0f;
    p = p * x + 1.0f / 720.0f;
    p = p * x + 1.0f / 120.0f;
    p = p * x + 1.0f / 24.0f;
    p = p * x + 1.0f / 6.0f;
    p = p * x + 0.5f;
    const float near = -(x + x * x * p), far = 1.0f - a;
    return x > -0.5f ? near : far;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

/* tanh-approximated GELU as x sigmoid(x (a + b x^2)), a = 2 sqrt(2 / pi), b = 0.044715 a */
static inline float gelu_tanh_f(float x) {
    const float a = 1.5957691216057308f, b = 0.0713548162726009f;
    return x * sigmoid_f(x * (a + b * x * x));
}

/* The offset of token t of an h x w grid read in raster order, row-major or column-major. */
static inline int64_t token_offset(int64_t t, int64_t h, int64_t w, int column_major, int64_t sh, int64_t sw) {
    return column_major ? (t % h) * sh + (t / h) * sw : (t / w) * sh + (t % w) * sw;
}

/* The recurrent block's depthwise causal conv over its input read forward and reversed.
 *   r      [B, h, w, W] at strides (sb, sh, sw, 1)
 *   taps   [K, W]: tap k weighs the token K - 1 - k places back
 *   bias   [W]
 *   out    [2 B, N, W] contiguous, N = h w: rows b < B scan forward, rows B + b the reversed sequence
 */
void iris_recurrent_conv(const float *r, int64_t B, int64_t h, int64_t w, int64_t sb, int64_t sh, int64_t sw,
                         int column_major, const float *taps, const float *bias, int64_t K, int64_t W,
                         float *out, int threads) {
    const int64_t N = h * w;
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1 && 2 * B * N * W >= PARALLEL_MIN_LIGHT)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < N; t++) {
            const float *rb = r + b * sb;
            float *restrict fwd = out + (b * N + t) * W;
            float *restrict rev = out + ((B + b) * N + t) * W;
            for (int64_t d = 0; d < W; d++) fwd[d] = rev[d] = bias[d];
            for (int64_t lag = 0; lag < K && lag <= t; lag++) {
                const float *restrict tap = taps + (K - 1 - lag) * W;
                const float *restrict src_f = rb + token_offset(t - lag, h, w, column_major, sh, sw);
                const float *restrict src_r = rb + token_offset(N - 1 - t + lag, h, w, column_major, sh, sw);
                for (int64_t d = 0; d < W; d++) {
                    fwd[d] += tap[d] * src_f[d];
                    rev[d] += tap[d] * src_r[d];
                }
            }
        }
}

/* One RG-LRU step over n channels: h = a h + sqrt(1 - a^2) (sigmoid(gx) x), log a = sigmoid(ga) log_rate.
 * 1 - a^2 comes from a polynomial in log a near a = 1 (a gate near zero), where 1 - a * a would keep only a
 * few correct bits. */
static void lru_step(const float *restrict ga, const float *restrict gx, const float *restrict x,
                     const float *restrict log_rate, float *restrict state, int64_t n) {
    for (int64_t d = 0; d < n; d++) {
        const float log_a = sigmoid_f(ga[d]) * log_rate[d];
        const float a = exp_f(log_a), rest = one_minus_exp_f(2.0f * log_a, a * a);
        const float mult = sqrtf(rest > 1e-12f ? rest : 1e-12f);
        state[d] = a * state[d] + mult * (sigmoid_f(gx[d]) * x[d]);
    }
}

/* The bidirectional RG-LRU of the recurrent block and its output gate.
 *   gates     [2 B, N, 2 W] contiguous, before the sigmoid: recurrence gate | input gate
 *   x         [2 B, N, W] contiguous: the conv's output (`iris_recurrent_conv`)
 *   log_rate  [W]: -c softplus(-Lambda)
 *   y         [B, h, w, W] at strides (sb, sh, sw, 1): the block's gate branch
 *   out       [B, h, w, W] contiguous (row-major, whatever the scan order): at the cell of token t,
 *             gelu_tanh(y_t) (h_t of the forward scan + h_(N-1-t) of the reversed one) / 2
 * Each task is one image's block of channels (the recurrence is independent across channels): both scans,
 * then the gate. Blocks are as wide as the threads allow (long channel loops run fastest): one per image, or
 * the channels split when there are fewer images than threads.
 */
void iris_lru_bidirectional(const float *gates, const float *x, const float *log_rate, const float *y,
                            int64_t B, int64_t h, int64_t w, int64_t sb, int64_t sh, int64_t sw, int column_major,
                            int64_t W, float *out, int threads) {
    const int64_t N = h * w;
    const int parallel = threads > 1 && 2 * B * N * W >= PARALLEL_MIN_HEAVY;
    const int64_t per_image = parallel && B < threads ? (threads + B - 1) / B : 1;
    const int64_t width = ((W + per_image - 1) / per_image + 7) / 8 * 8; /* whole vectors */
    const int64_t blocks = (W + width - 1) / width;
#pragma omp parallel for collapse(2) num_threads(threads) if (parallel)
    for (int64_t b = 0; b < B; b++)
        for (int64_t blk = 0; blk < blocks; blk++) {
            const int64_t d0 = blk * width, n = W - d0 < width ? W - d0 : width;
            float state[width];
            for (int pass = 0; pass < 2; pass++) {
                const int64_t m = pass ? B + b : b;
                for (int64_t d = 0; d < n; d++) state[d] = 0.0f;
                for (int64_t t = 0; t < N; t++) {
                    const float *g = gates + (m * N + t) * 2 * W + d0;
                    lru_step(g, g + W, x + (m * N + t) * W + d0, log_rate + d0, state, n);
                    const int64_t cell = token_offset(pass ? N - 1 - t : t, h, w, column_major, w, 1);
                    float *restrict o = out + (b * N + cell) * W + d0;
                    if (pass)
                        for (int64_t d = 0; d < n; d++) o[d] = 0.5f * (o[d] + state[d]);
                    else
                        for (int64_t d = 0; d < n; d++) o[d] = state[d];
                }
            }
            for (int64_t i = 0; i < h; i++)
                for (int64_t j = 0; j < w; j++) {
                    const float *restrict yt = y + b * sb + i * sh + j * sw + d0;
                    float *restrict o = out + ((b * h + i) * w + j) * W + d0;
                    for (int64_t d = 0; d < n; d++) o[d] *= gelu_tanh_f(yt[d]);
                }
        }
}

/* RMS norm, then adaLN modulation: out = shift + x / sqrt(mean(x^2) + eps) * scale.
 *   x      [B, N, D] contiguous
 *   shift, scale  [B, D] at batch stride s_mod (scale already holds 1 + the modulation's scale)
 *   out    [B, N, D] contiguous
 */
void iris_rms_modulate(const float *x, int64_t B, int64_t N, int64_t D, const float *shift, const float *scale,
                       int64_t s_mod, float eps, float *out, int threads) {
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1 && B * N * D >= PARALLEL_MIN_LIGHT)
    for (int64_t b = 0; b < B; b++)
        for (int64_t n = 0; n < N; n++) {
            const float *restrict sh = shift + b * s_mod;
            const float *restrict sc = scale + b * s_mod;
            const float *restrict xr = x + (b * N + n) * D;
            float *restrict o = out + (b * N + n) * D;
            float part[8] = {0.0f}, sum = 0.0f; /* eight partial sums: a vectorisable reduction */
            int64_t d = 0;
            for (; d + 8 <= D; d += 8)
                for (int k = 0; k < 8; k++) part[k] += xr[d + k] * xr[d + k];
            for (int k = 0; k < 8; k++) sum += part[k];
            for (; d < D; d++) sum += xr[d] * xr[d];
            const float inv = 1.0f / sqrtf(sum / (float)D + eps);
            for (d = 0; d < D; d++) o[d] = sh[d] + (xr[d] * inv) * sc[d];
        }
}

/* The GRFM's merge of its three pathways: out = r + sigmoid(g) (f - r) + alpha s.
 *   gate     [B, h, w, D] at strides (sb, sh, sw, 1) (a slice of the mixer's fused projection), before the sigmoid
 *   f, r, s  [B, h, w, D] contiguous: the Fourier, recurrent and spatial outputs
 *   alpha    [D];  out [B, h, w, D] contiguous
 */
void iris_gated_merge(const float *gate, int64_t B, int64_t h, int64_t w, int64_t sb, int64_t sh, int64_t sw,
                      const float *f, const float *r, const float *s, const float *alpha, int64_t D, float *out,
                      int threads) {
#pragma omp parallel for collapse(3) num_threads(threads) if (threads > 1 && B * h * w * D >= PARALLEL_MIN_LIGHT)
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < h; i++)
            for (int64_t j = 0; j < w; j++) {
                const float *restrict g = gate + b * sb + i * sh + j * sw;
                const int64_t at = ((b * h + i) * w + j) * D;
                const float *restrict ft = f + at, *restrict rt = r + at, *restrict st = s + at;
                float *restrict o = out + at;
                for (int64_t d = 0; d < D; d++)
                    o[d] = rt[d] + sigmoid_f(g[d]) * (ft[d] - rt[d]) + alpha[d] * st[d];
            }
}

/* tanh-GELU, out = x sigmoid(x (a + b x^2)), over n elements of contiguous x (the FFN's hidden layer). */
void iris_gelu_tanh(const float *x, int64_t n, float *out, int threads) {
    const int64_t chunk = 4096;
#pragma omp parallel for num_threads(threads) if (threads > 1 && n >= PARALLEL_MIN_HEAVY)
    for (int64_t start = 0; start < n; start += chunk) {
        const int64_t end = start + chunk < n ? start + chunk : n;
        const float *restrict xs = x;
        float *restrict os = out;
        for (int64_t i = start; i < end; i++) os[i] = gelu_tanh_f(xs[i]);
    }
}
