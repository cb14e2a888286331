/* ops_view.c - reshape, transpose, permute, contiguous: views where the
 * strides allow, copies where they do not. A view's gradient is its own
 * contiguous buffer; its backward adds it into the input's, laid out the
 * input's way. */
#include "../qkv_internal.h"

/* contiguous: out (shape of x, contiguous) = x (any strides) */
static void contiguous_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = copy(x): dx += g (both contiguous in the same shape) */
    qkv__pass_grad(ctx, n, n->in[0]);
}

qkv_tensor *qkv_contiguous(qkv_ctx *ctx, qkv_tensor *x)
{
    QKV_INPUTS("contiguous", x);
    if (qkv_is_contiguous(x))
        return x;
    qkv_tensor *out = qkv__tensor(ctx, x->ndim, x->shape);
    if (!out)
        return NULL;
    qkv__strided_copy(out->data, out->stride, x->data, x->stride, x->ndim, x->shape, false);
    qkv__record(ctx, QKV_OP_CONTIGUOUS, contiguous_backward, out, 1, &x);
    return out;
}

/* A bump arena cannot free a tensor in the middle, and a define-by-run
 * forward cannot know which tensors a later op will read; but a block's
 * caller knows that only the block's output is read after it. So the
 * block's whole stretch of the arena goes, its output moved down to where
 * the stretch began: memory holds one block's intermediates at a time. */
qkv_tensor *qkv_ctx_rewind_keep(qkv_ctx *ctx, qkv_arena_pos mark, qkv_tensor *y)
{
    if (ctx->grad_enabled)
        return y; /* the tape reads the intermediates in the backward */
    if (y && !qkv_is_contiguous(y))
        y = qkv_contiguous(ctx, y);
    if (!y) {
        qkv_arena_rewind(ctx->arena, mark);
        return NULL;
    }
    qkv_tensor keep = *y;
    keep.data = qkv__arena_rewind_keep(ctx->arena, mark, y->data,
                                       (size_t)qkv_numel(y) * sizeof(float));
    qkv_tensor *t = keep.data ? qkv__alloc(ctx, sizeof *t) : NULL;
    if (!t)
        return NULL;
    *t = keep;
    t->grad = NULL;
    t->node = NULL;
    t->requires_grad = 0;
    return t;
}

/* reshape of a contiguous x: same element order, so dx += g elementwise */
static void reshape_backward(qkv_ctx *ctx, qkv_node *n) { contiguous_backward(ctx, n); }

qkv_tensor *qkv_reshape(qkv_ctx *ctx, qkv_tensor *x, int ndim, const int64_t *shape)
{
    QKV_INPUTS("reshape", x);
    if (ndim < 0 || ndim > QKV_MAX_DIMS || (ndim > 0 && !shape)) {
        qkv_set_error(QKV_ERR_ARG, "reshape: bad target rank %d", ndim);
        return NULL;
    }
    int64_t s[QKV_MAX_DIMS], known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        s[i] = shape[i];
        if (s[i] == -1) {
            if (infer >= 0) {
                qkv_set_error(QKV_ERR_ARG, "reshape: more than one -1 in the target shape");
                return NULL;
            }
            infer = i;
        } else if (s[i] < 0) {
            qkv_set_error(QKV_ERR_ARG, "reshape: negative size %lld", (long long)s[i]);
            return NULL;
        } else
            known *= s[i];
    }
    int64_t n = qkv_numel(x);
    if (infer >= 0)
        s[infer] = known ? n / known : 0;
    if (qkv__shape_numel(ndim, s) != n) {
        char a[128], b[128];
        qkv_tensor tmp = {0};
        tmp.ndim = ndim;
        memcpy(tmp.shape, s, sizeof(int64_t) * (size_t)ndim);
        qkv_set_error(QKV_ERR_SHAPE, "reshape: cannot reshape %s (%lld elements) to %s",
                      qkv_shape_str(x, a, sizeof a), (long long)n,
                      qkv_shape_str(&tmp, b, sizeof b));
        return NULL;
    }
    qkv_tensor *src = qkv_contiguous(ctx, x);
    if (!src)
        return NULL;
    int64_t stride[QKV_MAX_DIMS];
    qkv__contig_strides(ndim, s, stride);
    qkv_tensor *out = qkv__view(ctx, src, ndim, s, stride, 0);
    if (!out)
        return NULL;
    qkv__record(ctx, QKV_OP_RESHAPE, reshape_backward, out, 1, &src);
    return out;
}

/* permute: out axis i is input axis perm[i]; dx (contiguous in x's shape)
 * += g laid back: walk g in out's order, write x's grad through permuted
 * strides. iarg[0..ndim) holds perm. */
static void permute_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *x = n->in[0], *out = n->out;
    bool acc;
    float *gx = qkv__grad_for_write(ctx, x, &acc);
    if (!gx)
        return;
    int64_t xs[QKV_MAX_DIMS], ds[QKV_MAX_DIMS], gs[QKV_MAX_DIMS];
    qkv__contig_strides(x->ndim, x->shape, xs);
    for (int i = 0; i < out->ndim; i++)
        ds[i] = xs[n->iarg[i]];
    qkv__contig_strides(out->ndim, out->shape, gs);
    qkv__strided_copy(gx, ds, out->grad, gs, out->ndim, out->shape, acc);
}

qkv_tensor *qkv_permute(qkv_ctx *ctx, qkv_tensor *x, const int *perm)
{
    QKV_INPUTS("permute", x);
    int seen[QKV_MAX_DIMS] = {0}, p[QKV_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) {
        int a = perm[i] < 0 ? perm[i] + x->ndim : perm[i];
        if (a < 0 || a >= x->ndim || seen[a]) {
            char s[128];
            qkv_set_error(QKV_ERR_ARG, "permute: invalid permutation for shape %s",
                          qkv_shape_str(x, s, sizeof s));
            return NULL;
        }
        seen[a] = 1;
        p[i] = a;
    }
    int64_t shape[QKV_MAX_DIMS], stride[QKV_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) {
        shape[i] = x->shape[p[i]];
        stride[i] = x->stride[p[i]];
    }
    qkv_tensor *out = qkv__view(ctx, x, x->ndim, shape, stride, 0);
    if (!out)
        return NULL;
    qkv_node *n = qkv__record(ctx, QKV_OP_PERMUTE, permute_backward, out, 1, &x);
    if (n)
        for (int i = 0; i < x->ndim; i++)
            n->iarg[i] = p[i];
    return out;
}

qkv_tensor *qkv_transpose(qkv_ctx *ctx, qkv_tensor *x, int axis0, int axis1)
{
    QKV_INPUTS("transpose", x);
    int a = qkv_axis(x, axis0, "transpose"), b = qkv_axis(x, axis1, "transpose");
    if (a < 0 || b < 0)
        return NULL;
    int perm[QKV_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        perm[i] = i;
    perm[a] = b;
    perm[b] = a;
    return qkv_permute(ctx, x, perm);
}
