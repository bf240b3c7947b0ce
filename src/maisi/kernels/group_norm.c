/* Group normalisation (optionally followed by SiLU) of channels-last float32 volumes on the CPU.
 *
 * x is (V, C): V voxels of C contiguous channels, one batch element. Two passes:
 *   group_norm_sums   per-channel sums of x and x^2 over a range of voxels, accumulated in double, so the
 *                     variance E[x^2] - E[x]^2 keeps its precision however large the mean is against the spread
 *                     (PyTorch's channels-last CPU kernel accumulates in one float pass and does not);
 *   group_norm_apply  y = (x - mean[c]) * scale[c] + shift[c], with the channel's group mean, scale = weight / std
 *                     and shift = bias (subtracting the mean first keeps large offsets exact), then SiLU
 *                     y / (1 + exp(-y)) when asked.
 * Ranges of voxels are independent, so callers split V over threads.
 */
#include <stddef.h>
#include <stdint.h>

void group_norm_sums(const float *x, long C, long vb, long ve, double *sum, double *sumsq) {
    for (long c = 0; c < C; c++) sum[c] = sumsq[c] = 0.0;
    for (long v = vb; v < ve; v++) {
        const float *row = x + v * C;
        for (long c = 0; c < C; c++) {
            const double a = row[c];
            sum[c] += a;
            sumsq[c] += a * a;
        }
    }
}

/* exp(x) for x <= 0 within 2 ulp (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial in r), written
 * without branches or library calls so that the loop below vectorises (with -fno-trapping-math). */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln2): 1.5 * 2^23 */
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    const float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = p * z + r + 1.0f;
    const union { int32_t i; float f; } two_n = {.i = ((int32_t)n + 127) << 23};
    return e * two_n.f;
}

void group_norm_apply(const float *x, float *y, long C, long vb, long ve, const float *mean, const float *scale,
                      const float *shift, int silu) {
    for (long v = vb; v < ve; v++) {
        const float *in = x + v * C;
        float *out = y + v * C;
        if (silu) {
            for (long c = 0; c < C; c++) {
                const float t = (in[c] - mean[c]) * scale[c] + shift[c];
                /* sigmoid(t) from e = exp(-|t|) <= 1, which cannot overflow: 1 / (1 + e) for t >= 0, e / (1 + e)
                 * below; the choice is a multiplication by 0 or 1 so that the loop has no branch */
                const float e = exp_nonpositive(-__builtin_fabsf(t));
                const float negative = (float)(t < 0.0f);
                out[c] = t * (negative * e + (1.0f - negative)) / (1.0f + e);
            }
        } else {
            for (long c = 0; c < C; c++) out[c] = (in[c] - mean[c]) * scale[c] + shift[c];
        }
    }
}
