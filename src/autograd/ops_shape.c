/* ops_shape.c - ops that move elements without arithmetic: concat, slice,
 * index_select, embedding, masked_fill, where. Reshape, transpose, permute
 * and contiguous are in ops_view.c. Every gradient here is a copy or a sum of
 * the output's gradient, so the backward rules are strided copies back into
 * the inputs' (contiguous) gradient buffers. */
#include "../qkv_internal.h"

/* ------------------------------------------------------------------------ */
/* concat                                                                    */
/* ------------------------------------------------------------------------ */

/* One node per input that needs a gradient: input i's gradient is its own
 * block of out's, so the rules are independent and the tape holds any n
 * (a node has only QKV_MAX_INPUTS slots). iarg[0] axis, iarg[1] the
 * block's first index along the axis. */
static void concat_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out[.., off:off+len, ..] = x: dx += g[.., off:off+len, ..] */
    qkv_tensor *x = n->in[0], *out = n->out;
    float *gx = qkv__grad(ctx, x);
    if (!gx)
        return;
    int axis = (int)n->iarg[0];
    int64_t xs[QKV_MAX_DIMS], gs[QKV_MAX_DIMS];
    qkv__contig_strides(x->ndim, x->shape, xs);
    qkv__contig_strides(out->ndim, out->shape, gs);
    qkv__strided_copy(gx, xs, out->grad + n->iarg[1] * gs[axis], gs, x->ndim, x->shape, true);
}

qkv_tensor *qkv_concat(qkv_ctx *ctx, int n, qkv_tensor *const *xs, int axis)
{
    if (n < 1 || !xs) {
        qkv_set_error(QKV_ERR_ARG, "concat: needs at least one tensor, got %d", n);
        return NULL;
    }
    if (qkv__null_input("concat", n, xs))
        return NULL;
    int a = qkv_axis(xs[0], axis, "concat");
    if (a < 0)
        return NULL;
    int64_t shape[QKV_MAX_DIMS];
    memcpy(shape, xs[0]->shape, sizeof shape);
    shape[a] = 0;
    for (int i = 0; i < n; i++) {
        const qkv_tensor *x = xs[i];
        bool fits = x->ndim == xs[0]->ndim;
        for (int d = 0; fits && d < x->ndim; d++)
            fits = d == a || x->shape[d] == xs[0]->shape[d];
        if (!fits)
            return qkv__shape_error("concat", xs[0], x,
                                    "sizes must match except along the axis");
        shape[a] += x->shape[a];
    }
    qkv_tensor *out = qkv__tensor(ctx, xs[0]->ndim, shape);
    if (!out)
        return NULL;
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        qkv_tensor *x = xs[i];
        qkv__strided_copy(out->data + off * out->stride[a], out->stride, x->data, x->stride,
                          x->ndim, x->shape, false);
        qkv_node *node = qkv__record(ctx, QKV_OP_CONCAT, concat_backward, out, 1, &x);
        if (node) {
            node->iarg[0] = a;
            node->iarg[1] = off;
        }
        off += x->shape[a];
    }
    return qkv__done(ctx, QKV_OP_CONCAT, out);
}

/* ------------------------------------------------------------------------ */
/* slice                                                                     */
/* ------------------------------------------------------------------------ */

/* iarg[0] axis, iarg[1] start, iarg[2] step */
static void slice_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = x[.., start::step, ..] (a view): dx[.., start::step, ..] += g */
    qkv_tensor *x = n->in[0], *out = n->out;
    float *gx = qkv__grad(ctx, x);
    if (!gx)
        return;
    int axis = (int)n->iarg[0];
    int64_t xs[QKV_MAX_DIMS], gs[QKV_MAX_DIMS];
    qkv__contig_strides(x->ndim, x->shape, xs);
    qkv__contig_strides(out->ndim, out->shape, gs);
    float *dst = gx + n->iarg[1] * xs[axis];
    xs[axis] *= n->iarg[2];
    qkv__strided_copy(dst, xs, out->grad, gs, out->ndim, out->shape, true);
}

/* Python's rule for a slice bound: negative counts from the end, then
 * clamped to [0, size]. */
static int64_t slice_bound(int64_t i, int64_t size)
{
    if (i < 0)
        i = i < -size ? 0 : i + size;
    return i > size ? size : i;
}

qkv_tensor *qkv_slice(qkv_ctx *ctx, qkv_tensor *x, int axis, int64_t start, int64_t end,
                      int64_t step)
{
    QKV_INPUTS("slice", x);
    int a = qkv_axis(x, axis, "slice");
    if (a < 0)
        return NULL;
    if (step < 1) {
        qkv_set_error(QKV_ERR_ARG, "slice: step must be positive, got %lld", (long long)step);
        return NULL;
    }
    int64_t size = x->shape[a];
    start = slice_bound(start, size);
    end = slice_bound(end, size);
    int64_t len = end > start ? (end - start - 1) / step + 1 : 0;
    int64_t shape[QKV_MAX_DIMS], stride[QKV_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    memcpy(stride, x->stride, sizeof stride);
    shape[a] = len;
    stride[a] *= step;
    qkv_tensor *out = qkv__view(ctx, x, x->ndim, shape, stride, len ? start * x->stride[a] : 0);
    if (!out)
        return NULL;
    qkv_node *n = qkv__record(ctx, QKV_OP_SLICE, slice_backward, out, 1, &x);
    if (n) {
        n->iarg[0] = a;
        n->iarg[1] = start;
        n->iarg[2] = step;
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* index_select and embedding: gather rows along an axis                     */
/* ------------------------------------------------------------------------ */

/* x seen as (outer, size, inner), idx (n) -> out (outer, n, inner) */
static void gather_rows(float *out, const float *x, const int64_t *idx, int64_t outer,
                        int64_t size, int64_t inner, int64_t n)
{
#pragma omp parallel for if (outer * n * inner > 65536) schedule(static)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < n; j++)
            memcpy(out + (o * n + j) * inner, x + (o * size + idx[j]) * inner,
                   (size_t)inner * sizeof(float));
}

/* Backward of gather_rows: dx (outer, size, inner) += g (outer, n, inner) at
 * the picked rows. A repeated index sums its rows, so j stays serial; outer
 * slices are disjoint and run in parallel. */
static void scatter_add_rows(float *dx, const float *g, const int64_t *idx, int64_t outer,
                             int64_t size, int64_t inner, int64_t n)
{
#pragma omp parallel for if (outer * n * inner > 65536) schedule(static)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < n; j++) {
            float *d = dx + (o * size + idx[j]) * inner;
            const float *s = g + (o * n + j) * inner;
            for (int64_t k = 0; k < inner; k++)
                d[k] += s[k];
        }
}

/* saved[0] the indices (arena copy), iarg[0] axis */
static void gather_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = x.index_select(axis, idx): dx[.., idx[j], ..] += g[.., j, ..] */
    qkv_tensor *x = n->in[0], *out = n->out;
    float *gx = qkv__grad(ctx, x);
    if (!gx)
        return;
    int a = (int)n->iarg[0];
    int64_t outer = qkv__shape_numel(a, x->shape);
    int64_t inner = qkv__shape_numel(x->ndim - a - 1, x->shape + a + 1);
    scatter_add_rows(gx, out->grad, n->saved[0], outer, x->shape[a], inner, out->shape[a]);
}

/* x's rows idx[0..n) along axis a (already checked in range). */
static qkv_tensor *gather(qkv_ctx *ctx, qkv_op op, qkv_tensor *x, int a, const int64_t *idx,
                          int64_t n)
{
    x = qkv_contiguous(ctx, x);
    int64_t *saved = qkv__alloc(ctx, (size_t)(n ? n : 1) * sizeof(int64_t));
    if (!x || !saved)
        return NULL;
    if (n)
        memcpy(saved, idx, (size_t)n * sizeof(int64_t));
    int64_t shape[QKV_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[a] = n;
    qkv_tensor *out = qkv__tensor(ctx, x->ndim, shape);
    if (!out)
        return NULL;
    int64_t outer = qkv__shape_numel(a, x->shape);
    int64_t inner = qkv__shape_numel(x->ndim - a - 1, x->shape + a + 1);
    gather_rows(out->data, x->data, saved, outer, x->shape[a], inner, n);
    qkv_node *node = qkv__record(ctx, op, gather_backward, out, 1, &x);
    if (node) {
        node->saved[0] = saved;
        node->iarg[0] = a;
    }
    return qkv__done(ctx, op, out);
}

qkv_tensor *qkv_index_select(qkv_ctx *ctx, qkv_tensor *x, int axis, const int64_t *idx,
                             int64_t n)
{
    QKV_INPUTS("index_select", x);
    int a = qkv_axis(x, axis, "index_select");
    if (a < 0)
        return NULL;
    if (n < 0 || (n > 0 && !idx)) {
        qkv_set_error(QKV_ERR_ARG, "index_select: bad index list (n = %lld)", (long long)n);
        return NULL;
    }
    for (int64_t j = 0; j < n; j++)
        if (idx[j] < 0 || idx[j] >= x->shape[a]) {
            char s[128];
            qkv_set_error(QKV_ERR_ARG,
                          "index_select: index %lld at position %lld is out of range for "
                          "axis %d of shape %s",
                          (long long)idx[j], (long long)j, a, qkv_shape_str(x, s, sizeof s));
            return NULL;
        }
    return gather(ctx, QKV_OP_INDEX_SELECT, x, a, idx, n);
}

qkv_tensor *qkv_embedding(qkv_ctx *ctx, qkv_tensor *weight, const int64_t *ids, int64_t n)
{
    QKV_INPUTS("embedding", weight);
    if (weight->ndim != 2) {
        char s[128];
        qkv_set_error(QKV_ERR_SHAPE, "embedding: weight must be (V, C), has shape %s",
                      qkv_shape_str(weight, s, sizeof s));
        return NULL;
    }
    if (n < 0 || (n > 0 && !ids)) {
        qkv_set_error(QKV_ERR_ARG, "embedding: bad id list (n = %lld)", (long long)n);
        return NULL;
    }
    int64_t V = weight->shape[0];
    for (int64_t j = 0; j < n; j++)
        if (ids[j] < 0 || ids[j] >= V) {
            qkv_set_error(QKV_ERR_ARG,
                          "embedding: id %lld at position %lld is out of range for a "
                          "vocabulary of %lld",
                          (long long)ids[j], (long long)j, (long long)V);
            return NULL;
        }
    return gather(ctx, QKV_OP_EMBEDDING, weight, 0, ids, n);
}

/* ------------------------------------------------------------------------ */
/* packed rows: the kept rows of a (B, T) batch                               */
/* ------------------------------------------------------------------------ */

static bool rows_ok(const char *op, const qkv_rows *r)
{
    if (!r || r->B <= 0 || r->T <= 0 || r->n < 0 || r->n > r->B * r->T || (r->n && !r->at)) {
        qkv_set_error(QKV_ERR_ARG, "%s: bad row map (B %lld, T %lld, n %lld)", op,
                      r ? (long long)r->B : 0, r ? (long long)r->T : 0, r ? (long long)r->n : 0);
        return false;
    }
    for (int64_t j = 0; j < r->n; j++)
        if (r->at[j] < (j ? r->at[j - 1] + 1 : 0) || r->at[j] >= r->B * r->T) {
            qkv_set_error(QKV_ERR_ARG,
                          "%s: row %lld of the map is %lld: rows must increase and lie in "
                          "[0, B T = %lld)",
                          op, (long long)j, (long long)r->at[j], (long long)(r->B * r->T));
            return false;
        }
    return true;
}

/* Row copies between a padded (B T, c) buffer and the packed (n, c) one,
 * a run of consecutive kept rows at a time (a row of the book's model is
 * 128 bytes: one call each would cost more than the copy). to_padded:
 * padded[at[j]] (op)= packed[j], the rows not kept zeroed unless acc;
 * else packed[j] (op)= padded[at[j]]. acc: += instead of =. */
static void rows_copy(float *padded, float *packed, const int64_t *at, int64_t n, int64_t total,
                      int64_t c, bool to_padded, bool acc)
{
    int64_t next = 0; /* the first padded row not yet written */
    for (int64_t j = 0; j <= n;) {
        int64_t row = j < n ? at[j] : total, len = 1;
        if (to_padded && !acc && row > next)
            memset(padded + next * c, 0, (size_t)((row - next) * c) * sizeof(float));
        if (j == n)
            break;
        while (j + len < n && at[j + len] == row + len)
            len++;
        float *p = padded + row * c, *q = packed + j * c;
        int64_t m = len * c;
        if (!acc)
            memcpy(to_padded ? p : q, to_padded ? q : p, (size_t)m * sizeof(float));
        else if (to_padded)
            for (int64_t k = 0; k < m; k++)
                p[k] += q[k];
        else
            for (int64_t k = 0; k < m; k++)
                q[k] += p[k];
        next = row + len;
        j += len;
    }
}

/* saved[0] the rows (arena copy); iarg[0] n, iarg[1] B T */
static void pack_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out[j] = x[at[j]]: dx[at[j]] = g[j], 0 elsewhere */
    qkv_tensor *x = n->in[0];
    bool acc;
    float *gx = qkv__grad_for_write(ctx, x, &acc);
    if (gx)
        rows_copy(gx, n->out->grad, n->saved[0], n->iarg[0], n->iarg[1],
                  x->shape[x->ndim - 1], true, acc);
}

static void unpack_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out[at[j]] = x[j]: dx[j] = g[at[j]] */
    qkv_tensor *x = n->in[0];
    bool acc;
    float *gx = qkv__grad_for_write(ctx, x, &acc);
    if (gx)
        rows_copy(n->out->grad, gx, n->saved[0], n->iarg[0], n->iarg[1], x->shape[1], false,
                  acc);
}

/* out (shape) from x through the row map r; records op with its backward */
static qkv_tensor *rows_op(qkv_ctx *ctx, qkv_op op, qkv_tensor *x, const qkv_rows *r, int ndim,
                           const int64_t *shape)
{
    x = qkv_contiguous(ctx, x);
    qkv_tensor *out = x ? qkv__tensor(ctx, ndim, shape) : NULL;
    int64_t *saved = out ? qkv__alloc(ctx, (size_t)(r->n ? r->n : 1) * sizeof(int64_t)) : NULL;
    if (!saved)
        return NULL;
    if (r->n)
        memcpy(saved, r->at, (size_t)r->n * sizeof(int64_t));
    int64_t c = shape[ndim - 1], total = r->B * r->T;
    bool unpack = op == QKV_OP_ROWS_UNPACK;
    if (unpack)
        rows_copy(out->data, x->data, saved, r->n, total, c, true, false);
    else
        rows_copy(x->data, out->data, saved, r->n, total, c, false, false);
    qkv_node *node = qkv__record(ctx, op, unpack ? unpack_backward : pack_backward, out, 1, &x);
    if (node) {
        node->saved[0] = saved;
        node->iarg[0] = r->n;
        node->iarg[1] = total;
    }
    return qkv__done(ctx, op, out);
}

qkv_tensor *qkv_rows_pack(qkv_ctx *ctx, qkv_tensor *x, const qkv_rows *r)
{
    QKV_INPUTS("rows_pack", x);
    if (!rows_ok("rows_pack", r))
        return NULL;
    bool ok = (x->ndim == 3 && x->shape[0] == r->B && x->shape[1] == r->T) ||
              (x->ndim == 2 && x->shape[0] == r->B * r->T);
    if (!ok) {
        char s[128];
        qkv_set_error(QKV_ERR_SHAPE, "rows_pack: x %s should be (%lld, %lld, C) or (%lld, C)",
                      qkv_shape_str(x, s, sizeof s), (long long)r->B, (long long)r->T,
                      (long long)(r->B * r->T));
        return NULL;
    }
    int64_t c = x->shape[x->ndim - 1];
    return rows_op(ctx, QKV_OP_ROWS_PACK, x, r, 2, (int64_t[]){r->n, c});
}

qkv_tensor *qkv_rows_unpack(qkv_ctx *ctx, qkv_tensor *x, const qkv_rows *r)
{
    QKV_INPUTS("rows_unpack", x);
    if (!rows_ok("rows_unpack", r))
        return NULL;
    if (x->ndim != 2 || x->shape[0] != r->n) {
        char s[128];
        qkv_set_error(QKV_ERR_SHAPE, "rows_unpack: x %s should be (%lld, C), one row per kept row",
                      qkv_shape_str(x, s, sizeof s), (long long)r->n);
        return NULL;
    }
    return rows_op(ctx, QKV_OP_ROWS_UNPACK, x, r, 3, (int64_t[]){r->B, r->T, x->shape[1]});
}

/* ------------------------------------------------------------------------ */
/* masked_fill and where: an elementwise choice between two sources          */
/* ------------------------------------------------------------------------ */

/* out (shape, contiguous) = c != 0 ? a : b, each read through broadcast
 * strides (0 on broadcast axes); a NULL a or b stands for the constant
 * av or bv. */
static void choose(float *out, const float *c, const int64_t *cs, const float *a,
                   const int64_t *as, float av, const float *b, const int64_t *bs, float bv,
                   int nd, const int64_t *shape)
{
    static const int64_t zero[QKV_MAX_DIMS] = {0};
    if (!a)
        a = &av, as = zero;
    if (!b)
        b = &bv, bs = zero;
    if (nd == 0) {
        out[0] = c[0] != 0 ? a[0] : b[0];
        return;
    }
    int64_t inner = shape[nd - 1], outer = qkv__shape_numel(nd - 1, shape);
    int64_t ci = cs[nd - 1], ai = as[nd - 1], bi = bs[nd - 1];
#pragma omp parallel for if (outer * inner > 65536) schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        int64_t co = 0, ao = 0, bo = 0, r = o;
        for (int d = nd - 2; d >= 0; d--) {
            int64_t k = r % shape[d];
            r /= shape[d];
            co += k * cs[d];
            ao += k * as[d];
            bo += k * bs[d];
        }
        float *dst = out + o * inner;
        for (int64_t j = 0; j < inner; j++)
            dst[j] = c[co + j * ci] != 0 ? a[ao + j * ai] : b[bo + j * bi];
    }
}

/* saved[0] the mask tensor (it gets no gradient, so it is not an input) */
static void masked_fill_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = mask ? value : x: dx += mask ? 0 : g */
    qkv_tensor *x = n->in[0], *mask = n->saved[0], *out = n->out;
    float *gx = qkv__grad(ctx, x);
    float *tmp = qkv__floats(ctx, qkv_numel(out));
    if (!gx || !tmp)
        return;
    int64_t ms[QKV_MAX_DIMS], gs[QKV_MAX_DIMS];
    qkv__broadcast_strides(mask, out->ndim, out->shape, ms);
    qkv__contig_strides(out->ndim, out->shape, gs);
    choose(tmp, mask->data, ms, NULL, NULL, 0.0f, out->grad, gs, 0.0f, out->ndim, out->shape);
    qkv__reduce_to(gx, x, tmp, out->ndim, out->shape);
    qkv__floats_done(ctx, tmp, qkv_numel(out));
}

qkv_tensor *qkv_masked_fill(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *mask, float value)
{
    QKV_INPUTS("masked_fill", x, mask);
    int64_t shape[QKV_MAX_DIMS];
    int nd = qkv__broadcast_shape(x, mask, shape);
    if (nd != x->ndim || memcmp(shape, x->shape, (size_t)nd * sizeof(int64_t)) != 0)
        return qkv__shape_error("masked_fill", x, mask, "mask must broadcast to x");
    qkv_tensor *out = qkv__tensor(ctx, nd, shape);
    if (!out)
        return NULL;
    int64_t ms[QKV_MAX_DIMS];
    qkv__broadcast_strides(mask, nd, shape, ms);
    choose(out->data, mask->data, ms, NULL, NULL, value, x->data, x->stride, 0.0f, nd, shape);
    qkv_node *n = qkv__record(ctx, QKV_OP_MASKED_FILL, masked_fill_backward, out, 1, &x);
    if (n)
        n->saved[0] = mask;
    return qkv__done(ctx, QKV_OP_MASKED_FILL, out);
}

/* saved[0] the condition tensor (no gradient) */
static void where_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = cond ? a : b: da += cond ? g : 0, db += cond ? 0 : g, each
     * summed over the axes it was broadcast along */
    qkv_tensor *cond = n->saved[0], *out = n->out;
    float *tmp = qkv__floats(ctx, qkv_numel(out));
    if (!tmp)
        return;
    int64_t cs[QKV_MAX_DIMS], gs[QKV_MAX_DIMS];
    qkv__broadcast_strides(cond, out->ndim, out->shape, cs);
    qkv__contig_strides(out->ndim, out->shape, gs);
    for (int i = 0; i < 2; i++) {
        if (!qkv__wants(n, i))
            continue;
        float *gi = qkv__grad(ctx, n->in[i]);
        if (!gi)
            return;
        if (i == 0)
            choose(tmp, cond->data, cs, out->grad, gs, 0, NULL, NULL, 0, out->ndim, out->shape);
        else
            choose(tmp, cond->data, cs, NULL, NULL, 0, out->grad, gs, 0, out->ndim, out->shape);
        qkv__reduce_to(gi, n->in[i], tmp, out->ndim, out->shape);
    }
    qkv__floats_done(ctx, tmp, qkv_numel(out));
}

qkv_tensor *qkv_where(qkv_ctx *ctx, qkv_tensor *cond, qkv_tensor *a, qkv_tensor *b)
{
    QKV_INPUTS("where", cond, a, b);
    int64_t shape[QKV_MAX_DIMS];
    qkv_tensor ab = {0};
    ab.ndim = qkv__broadcast_shape(a, b, ab.shape);
    if (ab.ndim < 0)
        return qkv__shape_error("where", a, b, "cannot broadcast");
    int nd = qkv__broadcast_shape(cond, &ab, shape);
    if (nd < 0)
        return qkv__shape_error("where", cond, &ab, "condition cannot broadcast to the values");
    qkv_tensor *out = qkv__tensor(ctx, nd, shape);
    if (!out)
        return NULL;
    int64_t cs[QKV_MAX_DIMS], as[QKV_MAX_DIMS], bs[QKV_MAX_DIMS];
    qkv__broadcast_strides(cond, nd, shape, cs);
    qkv__broadcast_strides(a, nd, shape, as);
    qkv__broadcast_strides(b, nd, shape, bs);
    choose(out->data, cond->data, cs, a->data, as, 0, b->data, bs, 0, nd, shape);
    qkv_node *n = qkv__record(ctx, QKV_OP_WHERE, where_backward, out, 2, (qkv_tensor *[]){a, b});
    if (n)
        n->saved[0] = cond;
    return qkv__done(ctx, QKV_OP_WHERE, out);
}
