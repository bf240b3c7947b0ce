/* Winograd F(4x4x4, 3x3x3) transforms for 3D convolutions on the CPU (float32, channels-last).
 *
 * A 3x3x3, stride-1, padding-1 convolution becomes, per 4^3 output tile:
 *     Y = A^T [ U (.) (B^T d B) ] A     (applied along D, H and W in turn)
 * where d is the 6^3 input tile, U = G g G^T the transformed kernel and (.) a product over the 216 transform
 * positions that sums over input channels: one GEMM per position (done by the caller with torch.bmm).
 * This file holds the two data transforms; the interpolation points are 0, 1, -1, 2, -1/2 and infinity, which
 * keep float32 errors about 5x below those of the usual 0, +-1, +-2 (Barabasz et al., 2020).
 *
 * Layouts (strides in floats; channels-last, channel stride 1, is the fast case):
 *   x  (C, D, H, W) input of one batch element, strides sc, sd, sh, sw
 *   V  (216, T, C)  transformed input of the tiles [t0, t0 + T) of this chunk, plane stride plane = T * C
 *   M  (216, T, K)  GEMM output, plane stride plane = T * K
 *   y  (K, D, H, W) output, strides sk, sd, sh, sw
 * Tiles are numbered t = (td * nh + th) * nw + tw; tile (td, th, tw) reads input rows 4 td - 1 ... 4 td + 4 (zero
 * outside) and writes output rows 4 td ... 4 td + 3 (clipped at the volume's end).
 */
#include <stddef.h>
#include <string.h>

#define CB 64 /* channels per block: two 216 x CB float buffers stay in the L2 cache */

/* t = B^T d along one axis: six input vectors (stride is) to six output vectors (stride os), n floats each. */
static inline void bt6(const float *restrict d, ptrdiff_t is, float *restrict t, ptrdiff_t os, int n) {
    const float *d0 = d, *d1 = d + is, *d2 = d + 2 * is, *d3 = d + 3 * is, *d4 = d + 4 * is, *d5 = d + 5 * is;
    float *t0 = t, *t1 = t + os, *t2 = t + 2 * os, *t3 = t + 3 * os, *t4 = t + 4 * os, *t5 = t + 5 * os;
    for (int c = 0; c < n; c++) {
        const float a0 = d0[c], a1 = d1[c], a2 = d2[c], a3 = d3[c], a4 = d4[c], a5 = d5[c];
        t0[c] = a0 + 1.5f * (a1 - a3) - 2.0f * a2 + a4;
        t1[c] = a4 - a1 - 2.5f * a2 - 0.5f * a3;
        t2[c] = a4 + a1 + 0.5f * a2 - 2.5f * a3;
        t3[c] = a4 - a2 + 0.5f * (a3 - a1);
        t4[c] = a4 - a2 + 2.0f * (a1 - a3);
        t5[c] = a5 + a1 + 1.5f * (a2 - a4) - 2.0f * a3;
    }
}

/* o = A^T m along one axis: six input vectors (stride is) to four output vectors (stride os). */
static inline void at4(const float *restrict m, ptrdiff_t is, float *restrict o, ptrdiff_t os, int n) {
    const float *m0 = m, *m1 = m + is, *m2 = m + 2 * is, *m3 = m + 3 * is, *m4 = m + 4 * is, *m5 = m + 5 * is;
    float *o0 = o, *o1 = o + os, *o2 = o + 2 * os, *o3 = o + 3 * os;
    for (int c = 0; c < n; c++) {
        const float s = m1[c] + m2[c], df = m1[c] - m2[c], a3 = m3[c], a4 = m4[c];
        o0[c] = m0[c] + s + a3 + a4;
        o1[c] = df + 2.0f * a3 - 0.5f * a4;
        o2[c] = s + 4.0f * a3 + 0.25f * a4;
        o3[c] = df + 8.0f * a3 - 0.125f * a4 + m5[c];
    }
}

static inline void tile_of(long t, int nh, int nw, int *td, int *th, int *tw) {
    *tw = (int)(t % nw);
    *th = (int)((t / nw) % nh);
    *td = (int)(t / ((long)nw * nh));
}

/* V[:, t - t0, :] = B^T d B (3D) for the tiles t in [tb, te). */
void winograd_input(const float *x, int D, int H, int W, int C, long sc, long sd, long sh, long sw, int nh, int nw,
                    long t0, long tb, long te, float *V, long plane) {
    float buf[216 * CB], tmp[216 * CB];
    for (long t = tb; t < te; t++) {
        int td, th, tw;
        tile_of(t, nh, nw, &td, &th, &tw);
        float *vt = V + (t - t0) * (long)C;
        for (int c0 = 0; c0 < C; c0 += CB) {
            const int n = C - c0 < CB ? C - c0 : CB;
            for (int i = 0; i < 6; i++) {
                const int dz = 4 * td - 1 + i;
                for (int j = 0; j < 6; j++) {
                    const int hy = 4 * th - 1 + j;
                    for (int l = 0; l < 6; l++) {
                        const int wx = 4 * tw - 1 + l;
                        float *dst = buf + ((i * 6 + j) * 6 + l) * CB;
                        if (dz < 0 || dz >= D || hy < 0 || hy >= H || wx < 0 || wx >= W)
                            memset(dst, 0, sizeof(float) * n);
                        else if (sc == 1)
                            memcpy(dst, x + dz * sd + hy * sh + wx * sw + c0, sizeof(float) * n);
                        else {
                            const float *src = x + dz * sd + hy * sh + wx * sw + c0 * sc;
                            for (int c = 0; c < n; c++) dst[c] = src[c * sc];
                        }
                    }
                }
            }
            for (int ij = 0; ij < 36; ij++) /* along W */
                bt6(buf + ij * 6 * CB, CB, tmp + ij * 6 * CB, CB, n);
            for (int i = 0; i < 6; i++) /* along H */
                for (int l = 0; l < 6; l++)
                    bt6(tmp + (i * 36 + l) * CB, 6 * CB, buf + (i * 36 + l) * CB, 6 * CB, n);
            for (int jl = 0; jl < 36; jl++) /* along D, into the GEMM operand */
                bt6(buf + jl * CB, 36 * CB, vt + jl * plane + c0, 36 * plane, n);
        }
    }
}

/* y[tile t] = A^T M[:, t - t0, :] A (3D) + bias for the tiles t in [tb, te); bias may be NULL. */
void winograd_output(const float *M, long plane, int K, long t0, long tb, long te, int nh, int nw,
                     const float *bias, float *y, int D, int H, int W, long sk, long sd, long sh, long sw) {
    float buf[144 * CB], tmp[96 * CB], out[64 * CB];
    for (long t = tb; t < te; t++) {
        int td, th, tw;
        tile_of(t, nh, nw, &td, &th, &tw);
        const float *mt = M + (t - t0) * (long)K;
        for (int k0 = 0; k0 < K; k0 += CB) {
            const int n = K - k0 < CB ? K - k0 : CB;
            for (int ab = 0; ab < 36; ab++) /* along W: (a, b, c) -> (a, b, w) */
                at4(mt + ab * 6 * plane + k0, plane, buf + ab * 4 * CB, CB, n);
            for (int a = 0; a < 6; a++) /* along H: (a, b, w) -> (a, h, w) */
                for (int w = 0; w < 4; w++)
                    at4(buf + (a * 24 + w) * CB, 4 * CB, tmp + (a * 16 + w) * CB, 4 * CB, n);
            for (int hw = 0; hw < 16; hw++) /* along D: (a, h, w) -> (d, h, w) */
                at4(tmp + hw * CB, 16 * CB, out + hw * CB, 16 * CB, n);
            for (int d = 0; d < 4; d++) {
                const int dz = 4 * td + d;
                if (dz >= D) break;
                for (int h = 0; h < 4; h++) {
                    const int hy = 4 * th + h;
                    if (hy >= H) break;
                    for (int w = 0; w < 4; w++) {
                        const int wx = 4 * tw + w;
                        if (wx >= W) break;
                        const float *src = out + ((d * 4 + h) * 4 + w) * CB;
                        float *restrict dst = y + dz * sd + hy * sh + wx * sw + k0 * sk;
                        if (sk == 1 && bias)
                            for (int c = 0; c < n; c++) dst[c] = src[c] + bias[k0 + c];
                        else if (sk == 1)
                            memcpy(dst, src, sizeof(float) * n);
                        else
                            for (int c = 0; c < n; c++) dst[c * sk] = src[c] + (bias ? bias[k0 + c] : 0.0f);
                    }
                }
            }
        }
    }
}

/* Kernel transform U = G g G^T (3D) for the input channels [cb, ce): w is (K, C, 3, 3, 3) contiguous, U is (216, C, K).
 * G holds the points 0, 1, -1, 2, -1/2 (rows as in winograd.py); sums run in double, so U is exact to float
 * rounding. */
static const double G6[6][3] = {
    {1.0, 0.0, 0.0},
    {-1.0 / 3, -1.0 / 3, -1.0 / 3},
    {1.0 / 3, -1.0 / 3, 1.0 / 3},
    {1.0 / 15, 2.0 / 15, 4.0 / 15},
    {-16.0 / 15, 8.0 / 15, -4.0 / 15},
    {0.0, 0.0, 1.0},
};

void winograd_weight(const float *w, long K, long C, long cb, long ce, float *U) {
    const long plane = C * K;
    for (long c = cb; c < ce; c++) {
        for (long k = 0; k < K; k++) {
            const float *g = w + (k * C + c) * 27;
            double a[6][3][3], b[6][6][3];
            for (int p = 0; p < 6; p++) /* along D */
                for (int j = 0; j < 3; j++)
                    for (int l = 0; l < 3; l++)
                        a[p][j][l] = G6[p][0] * g[j * 3 + l] + G6[p][1] * g[9 + j * 3 + l] + G6[p][2] * g[18 + j * 3 + l];
            for (int p = 0; p < 6; p++) /* along H */
                for (int q = 0; q < 6; q++)
                    for (int l = 0; l < 3; l++)
                        b[p][q][l] = G6[q][0] * a[p][0][l] + G6[q][1] * a[p][1][l] + G6[q][2] * a[p][2][l];
            for (int p = 0; p < 6; p++) /* along W, into U */
                for (int q = 0; q < 6; q++)
                    for (int r = 0; r < 6; r++)
                        U[((p * 6 + q) * 6 + r) * plane + c * K + k] =
                            (float)(G6[r][0] * b[p][q][0] + G6[r][1] * b[p][q][1] + G6[r][2] * b[p][q][2]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- fused path
 * Transform, GEMM and inverse transform of a block of BT tiles at a time, so the transformed data stays in the
 * caches instead of making a round trip through memory (the separate path's cost at 32-128 channels). The GEMMs
 * are a register-blocked 6 x 16 micro-kernel in GCC vector extensions (AVX2: 12 accumulators of 8 floats). */

#define BT 36 /* tiles per block: a multiple of the micro-kernel's 6 rows */

typedef float v8sf __attribute__((vector_size(32)));

static inline v8sf load8(const float *p) {
    v8sf v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8sf v) { __builtin_memcpy(p, &v, sizeof v); }

static inline v8sf splat(float a) { return (v8sf){a, a, a, a, a, a, a, a}; }

/* Cm (n x K) = A (n x C) @ B (C x K), all row-major and contiguous; K a multiple of 8. */
static void gemm(const float *restrict A, const float *restrict B, float *restrict Cm, int n, int C, int K) {
    int j = 0;
    for (; j + 16 <= K; j += 16) {
        int i = 0;
        for (; i + 6 <= n; i += 6) {
            v8sf c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
            v8sf c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
            const float *a0 = A + (long)i * C, *a1 = a0 + C, *a2 = a1 + C, *a3 = a2 + C, *a4 = a3 + C, *a5 = a4 + C;
            const float *b = B + j;
            for (int c = 0; c < C; c++, b += K) {
                const v8sf b0 = load8(b), b1 = load8(b + 8);
                v8sf s;
                s = splat(a0[c]), c00 += s * b0, c01 += s * b1;
                s = splat(a1[c]), c10 += s * b0, c11 += s * b1;
                s = splat(a2[c]), c20 += s * b0, c21 += s * b1;
                s = splat(a3[c]), c30 += s * b0, c31 += s * b1;
                s = splat(a4[c]), c40 += s * b0, c41 += s * b1;
                s = splat(a5[c]), c50 += s * b0, c51 += s * b1;
            }
            float *o = Cm + (long)i * K + j;
            store8(o, c00), store8(o + 8, c01), store8(o + K, c10), store8(o + K + 8, c11);
            store8(o + 2 * K, c20), store8(o + 2 * K + 8, c21), store8(o + 3 * K, c30), store8(o + 3 * K + 8, c31);
            store8(o + 4 * K, c40), store8(o + 4 * K + 8, c41), store8(o + 5 * K, c50), store8(o + 5 * K + 8, c51);
        }
        for (; i < n; i++) { /* the last rows, one at a time */
            v8sf c0 = {0}, c1 = {0};
            for (int c = 0; c < C; c++) {
                const v8sf s = splat(A[(long)i * C + c]);
                c0 += s * load8(B + (long)c * K + j), c1 += s * load8(B + (long)c * K + j + 8);
            }
            store8(Cm + (long)i * K + j, c0), store8(Cm + (long)i * K + j + 8, c1);
        }
    }
    for (; j < K; j += 8) { /* an 8-column remainder */
        for (int i = 0; i < n; i++) {
            v8sf c0 = {0};
            for (int c = 0; c < C; c++) c0 += splat(A[(long)i * C + c]) * load8(B + (long)c * K + j);
            store8(Cm + (long)i * K + j, c0);
        }
    }
}

/* y[tiles tb ... te) = conv(x) + bias through blocks of BT tiles; U is (216, C, K); scratch holds
 * 216 * BT * (C + K) floats for this call. */
void winograd_fused(const float *x, int D, int H, int W, int C, long sc, long sd, long sh, long sw, int nh, int nw,
                    long tb, long te, const float *U, int K, const float *bias, float *y, long yk, long yd, long yh,
                    long yw, float *scratch) {
    float *V = scratch, *M = scratch + 216L * BT * C;
    for (long t0 = tb; t0 < te; t0 += BT) {
        const long t1 = t0 + BT < te ? t0 + BT : te;
        const int n = (int)(t1 - t0);
        winograd_input(x, D, H, W, C, sc, sd, sh, sw, nh, nw, t0, t0, t1, V, (long)n * C);
        for (int p = 0; p < 216; p++)
            gemm(V + (long)p * n * C, U + (long)p * C * K, M + (long)p * n * K, n, C, K);
        winograd_output(M, (long)n * K, K, t0, t0, t1, nh, nw, bias, y, D, H, W, yk, yd, yh, yw);
    }
}
