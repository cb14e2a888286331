/* reduce.c - sum, mean and max over axes of a strided array, and their
 * backward. Each output element is reduced by one thread in a fixed order,
 * so results do not depend on the thread count. */
#include "reduce.h"

#include "qkv.h"

#include <math.h>

/* Below this much work one thread beats waking a second. */
#define PAR_MIN 32768

/* Offset of element o (row-major over `shape`) through `stride`. */
static int64_t offset_of(int64_t o, int ndim, const int64_t *shape, const int64_t *stride)
{
    int64_t off = 0;
    for (int i = ndim - 1; i >= 0; i--) {
        off += (o % shape[i]) * stride[i];
        o /= shape[i];
    }
    return off;
}

/* n elements of x at stride s, summed in double; four accumulators hide the
 * latency of the adds. */
static double sum_run(const float *x, int64_t s, int64_t n)
{
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        a0 += x[j * s];
        a1 += x[(j + 1) * s];
        a2 += x[(j + 2) * s];
        a3 += x[(j + 3) * s];
    }
    for (; j < n; j++)
        a0 += x[j * s];
    return (a0 + a1) + (a2 + a3);
}

void qkv_k_sum(float *out, const float *x, const int64_t *x_stride, int ndim,
               const int64_t *shape, const bool *reduce, double divisor)
{
    /* out (kept axes) = sum of x (shape) over the reduced axes / divisor.
     * The last reduced axis is the inner run; the other reduced axes are
     * walked as `outer` runs. */
    int64_t kshape[QKV_MAX_DIMS], kstride[QKV_MAX_DIMS];
    int64_t rshape[QKV_MAX_DIMS], rstride[QKV_MAX_DIMS];
    int nk = 0, nr = 0;
    for (int d = 0; d < ndim; d++) {
        if (reduce[d]) {
            rshape[nr] = shape[d];
            rstride[nr++] = x_stride[d];
        } else {
            kshape[nk] = shape[d];
            kstride[nk++] = x_stride[d];
        }
    }
    int64_t run = 1, run_stride = 0;
    if (nr > 0) {
        run = rshape[nr - 1];
        run_stride = rstride[nr - 1];
        nr--;
    }
    int64_t nout = 1, outer = 1;
    for (int i = 0; i < nk; i++)
        nout *= kshape[i];
    for (int i = 0; i < nr; i++)
        outer *= rshape[i];
#pragma omp parallel for if (nout * outer * run > PAR_MIN) schedule(static)
    for (int64_t o = 0; o < nout; o++) {
        const float *base = x + offset_of(o, nk, kshape, kstride);
        double acc = 0;
        for (int64_t r = 0; r < outer; r++)
            acc += sum_run(base + offset_of(r, nr, rshape, rstride), run_stride, run);
        out[o] = (float)(acc / divisor);
    }
}

void qkv_k_sum_backward(float *dx, const float *g, const int64_t *g_stride, int ndim,
                        const int64_t *shape, double divisor, bool accumulate)
{
    /* out = sum(x) / divisor: dx (shape) (+)= g / divisor broadcast back over
     * the reduced axes, row by row of the last axis */
    float div = (float)divisor;
    if (ndim == 0) {
        dx[0] = (accumulate ? dx[0] : 0.0f) + g[0] / div;
        return;
    }
    int64_t inner = shape[ndim - 1], rows = 1, gs = g_stride[ndim - 1];
    for (int i = 0; i < ndim - 1; i++)
        rows *= shape[i];
#pragma omp parallel for if (rows * inner > PAR_MIN) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *gr = g + offset_of(r, ndim - 1, shape, g_stride);
        float *d = dx + r * inner;
        if (accumulate)
            for (int64_t j = 0; j < inner; j++)
                d[j] += gr[j * gs] / div;
        else
            for (int64_t j = 0; j < inner; j++)
                d[j] = gr[j * gs] / div;
    }
}

/* shape and strides of every axis but `axis` */
static int drop_axis(int ndim, const int64_t *shape, const int64_t *stride, int axis,
                     int64_t *kshape, int64_t *kstride)
{
    int nk = 0;
    for (int d = 0; d < ndim; d++)
        if (d != axis) {
            kshape[nk] = shape[d];
            kstride[nk++] = stride[d];
        }
    return nk;
}

void qkv_k_max(float *out, int64_t *arg, const float *x, const int64_t *x_stride, int ndim,
               const int64_t *shape, int axis)
{
    /* out, arg (shape without axis) = max, first argmax of x (shape) */
    int64_t kshape[QKV_MAX_DIMS], kstride[QKV_MAX_DIMS];
    int nk = drop_axis(ndim, shape, x_stride, axis, kshape, kstride);
    int64_t len = shape[axis], s = x_stride[axis], nout = 1;
    for (int i = 0; i < nk; i++)
        nout *= kshape[i];
#pragma omp parallel for if (nout * len > PAR_MIN) schedule(static)
    for (int64_t o = 0; o < nout; o++) {
        const float *row = x + offset_of(o, nk, kshape, kstride);
        float best = row[0];
        int64_t at = 0;
        for (int64_t j = 1; j < len && !isnan(best); j++) {
            float v = row[j * s];
            if (v > best || isnan(v)) {
                best = v;
                at = j;
            }
        }
        out[o] = best;
        arg[o] = at;
    }
}

void qkv_k_max_backward(float *dx, const float *g, const int64_t *arg, int ndim,
                        const int64_t *shape, int axis)
{
    /* out = max over axis: dx[.., arg, ..] (shape) += g (shape without axis) */
    int64_t stride[QKV_MAX_DIMS], kshape[QKV_MAX_DIMS], kstride[QKV_MAX_DIMS];
    int64_t m = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        stride[d] = m;
        m *= shape[d];
    }
    int nk = drop_axis(ndim, shape, stride, axis, kshape, kstride);
    int64_t nout = 1;
    for (int i = 0; i < nk; i++)
        nout *= kshape[i];
    for (int64_t o = 0; o < nout; o++)
        dx[offset_of(o, nk, kshape, kstride) + arg[o] * stride[axis]] += g[o];
}
