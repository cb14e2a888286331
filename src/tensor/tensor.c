/* tensor.c - shape, strides, views and broadcasting of the tensor type. */
#include "../qkv_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <stdio.h>

int64_t qkv__shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

int64_t qkv__contig_strides(int ndim, const int64_t *shape, int64_t *stride)
{
    int64_t n = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        stride[i] = n;
        n *= shape[i];
    }
    return n;
}

int64_t qkv_numel(const qkv_tensor *t) { return qkv__shape_numel(t->ndim, t->shape); }

int qkv_is_contiguous(const qkv_tensor *t)
{
    int64_t n = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != n)
            return 0;
        n *= t->shape[i];
    }
    return 1;
}

char *qkv_shape_str(const qkv_tensor *t, char *buf, size_t n)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "(");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, ")");
    return buf;
}

int qkv_same_shape(const qkv_tensor *a, const qkv_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

int qkv_axis(const qkv_tensor *t, int axis, const char *op)
{
    int a = axis < 0 ? axis + t->ndim : axis;
    if (a < 0 || a >= t->ndim) {
        char s[128];
        qkv_set_error(QKV_ERR_ARG, "%s: axis %d out of range for shape %s", op, axis,
                      qkv_shape_str(t, s, sizeof s));
        return -1;
    }
    return a;
}

float qkv_get(const qkv_tensor *t, int64_t flat)
{
    int64_t off = 0;
    for (int i = t->ndim - 1; i >= 0; i--) {
        off += (flat % t->shape[i]) * t->stride[i];
        flat /= t->shape[i];
    }
    return t->data[off];
}

qkv_tensor *qkv__shape_error(const char *op, const qkv_tensor *a, const qkv_tensor *b,
                             const char *why)
{
    char sa[128], sb[128];
    qkv_set_error(QKV_ERR_SHAPE, "%s: %s: shapes %s and %s", op, why,
                  qkv_shape_str(a, sa, sizeof sa), b ? qkv_shape_str(b, sb, sizeof sb) : "-");
    return NULL;
}

/* Rows o_lo .. o_hi of the copy below: the outer index is decomposed once
 * and then stepped like an odometer (no division per row). */
static void copy_rows(float *dst, const int64_t *dst_stride, const float *src,
                      const int64_t *src_stride, int ndim, const int64_t *shape, bool accumulate,
                      int64_t o_lo, int64_t o_hi)
{
    int64_t idx[QKV_MAX_DIMS], doff = 0, soff = 0, r = o_lo;
    for (int i = ndim - 2; i >= 0; i--) {
        idx[i] = r % shape[i];
        r /= shape[i];
        doff += idx[i] * dst_stride[i];
        soff += idx[i] * src_stride[i];
    }
    int64_t n = shape[ndim - 1], ds = dst_stride[ndim - 1], ss = src_stride[ndim - 1];
    for (int64_t o = o_lo; o < o_hi; o++) {
        float *d = dst + doff;
        const float *s = src + soff;
        if (ds == 1 && ss == 1) {
            if (accumulate) {
#pragma omp simd
                for (int64_t j = 0; j < n; j++)
                    d[j] += s[j];
            } else if (n < 64) { /* short rows (heads): a call to memcpy costs more */
#pragma omp simd
                for (int64_t j = 0; j < n; j++)
                    d[j] = s[j];
            } else
                memcpy(d, s, (size_t)n * sizeof(float));
        } else if (accumulate) {
            for (int64_t j = 0; j < n; j++)
                d[j * ds] += s[j * ss];
        } else {
            for (int64_t j = 0; j < n; j++)
                d[j * ds] = s[j * ss];
        }
        for (int i = ndim - 2; i >= 0; i--) {
            doff += dst_stride[i], soff += src_stride[i];
            if (++idx[i] < shape[i])
                break;
            doff -= shape[i] * dst_stride[i], soff -= shape[i] * src_stride[i];
            idx[i] = 0;
        }
    }
}

/* dst (=|+=) src over `shape`. Axes that are one block in both layouts are
 * merged first (so a contiguous copy is one row); the innermost axis is the
 * loop; outer axes are walked with a counter, so any ndim works. */
void qkv__strided_copy(float *dst, const int64_t *dst_stride, const float *src,
                       const int64_t *src_stride, int ndim, const int64_t *shape,
                       bool accumulate)
{
    if (ndim == 0) {
        *dst = accumulate ? *dst + *src : *src;
        return;
    }
    int64_t sh[QKV_MAX_DIMS], dst_st[QKV_MAX_DIMS], src_st[QKV_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            return;
        if (shape[i] == 1) /* an axis of one: nothing to walk */
            continue;
        if (nd > 0 && dst_st[nd - 1] == shape[i] * dst_stride[i] &&
            src_st[nd - 1] == shape[i] * src_stride[i]) { /* merges into the previous axis */
            sh[nd - 1] *= shape[i];
            dst_st[nd - 1] = dst_stride[i], src_st[nd - 1] = src_stride[i];
            continue;
        }
        sh[nd] = shape[i], dst_st[nd] = dst_stride[i], src_st[nd] = src_stride[i];
        nd++;
    }
    if (nd == 0) { /* a single element */
        *dst = accumulate ? *dst + *src : *src;
        return;
    }
    int64_t outer = qkv__shape_numel(nd - 1, sh), total = outer * sh[nd - 1];
#ifdef _OPENMP
    int threads = qkv_threads();
    if (threads > 1 && total > 16384 && outer >= threads && !omp_in_parallel()) {
#pragma omp parallel num_threads(threads)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            int64_t lo = outer * t / nt, hi = outer * (t + 1) / nt;
            copy_rows(dst, dst_st, src, src_st, nd, sh, accumulate, lo, hi);
        }
        return;
    }
#endif
    copy_rows(dst, dst_st, src, src_st, nd, sh, accumulate, 0, outer);
}

int qkv__broadcast_shape(const qkv_tensor *a, const qkv_tensor *b, int64_t *shape)
{
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < nd; i++) {
        int ia = a->ndim - nd + i, ib = b->ndim - nd + i;
        int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1)
            return -1;
        shape[i] = sa == 1 ? sb : sa;
    }
    return nd;
}

void qkv__broadcast_strides(const qkv_tensor *t, int ndim, const int64_t *shape,
                            int64_t *stride)
{
    for (int i = 0; i < ndim; i++) {
        int it = t->ndim - ndim + i;
        if (it < 0 || t->shape[it] == 1)
            stride[i] = 0;
        else
            stride[i] = t->stride[it];
        (void)shape;
    }
}

void qkv__reduce_to(float *dst, const qkv_tensor *t, const float *g, int ndim,
                    const int64_t *shape)
{
    /* dst is contiguous in t's shape; view it with stride 0 on broadcast axes
     * and accumulate g into it. Serial over the output: axes that collapse
     * would race under threads. */
    int64_t tstride[QKV_MAX_DIMS], dstride[QKV_MAX_DIMS], gstride[QKV_MAX_DIMS];
    qkv__contig_strides(t->ndim, t->shape, tstride);
    for (int i = 0; i < ndim; i++) {
        int it = t->ndim - ndim + i;
        dstride[i] = (it < 0 || t->shape[it] == 1) ? 0 : tstride[it];
    }
    int64_t n = qkv__contig_strides(ndim, shape, gstride);
    if (n == qkv__shape_numel(t->ndim, t->shape)) {
        for (int64_t i = 0; i < n; i++)
            dst[i] += g[i];
        return;
    }
    int64_t inner = ndim ? shape[ndim - 1] : 1;
    int64_t outer = n / (inner ? inner : 1);
    int64_t ds = ndim ? dstride[ndim - 1] : 0;
    for (int64_t o = 0; o < outer; o++) {
        int64_t doff = 0, r = o;
        for (int i = ndim - 2; i >= 0; i--) {
            doff += (r % shape[i]) * dstride[i];
            r /= shape[i];
        }
        const float *gr = g + o * inner;
        float *d = dst + doff;
        if (ds == 0) {
            double acc = 0;
            for (int64_t j = 0; j < inner; j++)
                acc += gr[j];
            *d += (float)acc;
        } else {
            for (int64_t j = 0; j < inner; j++)
                d[j * ds] += gr[j];
        }
    }
}
