/* ops_attention.c - masked softmax and scaled dot-product attention.
 *
 * qkv_attention has two paths with the same meaning. The fused one
 * (kernels/attention.c) saves only the output and one log-sum-exp per query
 * and recomputes the weights in its backward. The unfused one is the
 * textbook chain matmul -> scale -> masked softmax -> dropout -> matmul,
 * built from recorded ops; it runs when the weights are asked for (they
 * must exist, and carry gradients) or when ctx->unfused forces it, and the
 * tests hold the fused path to it. Both apply the masks of one qkv_k_attn_mask and draw
 * dropout from the same hash, so they agree for the same context seed. */
#include "../kernels/attention.h"
#include "../qkv_internal.h"

#include <math.h>

static const qkv_attn_opts no_opts;

/* ---- masks: from the public options to the kernel's form ---- */

/* A float copy of mask m (read through broadcast strides) as a contiguous
 * (shape) array; with is_bool, nonzero becomes -inf and zero 0. */
static float *mask_copy(qkv_ctx *ctx, const qkv_tensor *m, int ndim, const int64_t *shape,
                        bool is_bool)
{
    int64_t n = qkv__shape_numel(ndim, shape), dst_stride[QKV_MAX_DIMS], src_stride[QKV_MAX_DIMS];
    float *out = qkv__floats(ctx, n);
    if (!out)
        return NULL;
    qkv__contig_strides(ndim, shape, dst_stride);
    qkv__broadcast_strides(m, ndim, shape, src_stride);
    qkv__strided_copy(out, dst_stride, m->data, src_stride, ndim, shape, false);
    if (is_bool)
        for (int64_t i = 0; i < n; i++)
            out[i] = out[i] != 0.0f ? -INFINITY : 0.0f;
    return out;
}

/* Fills mk from opts for scores (B, H, N, M); false (error set) if a mask
 * does not fit. */
static bool prepare_mask(qkv_ctx *ctx, const char *op, const qkv_attn_opts *o, int64_t B,
                         int64_t H, int64_t N, int64_t M, qkv_k_attn_mask *mk)
{
    memset(mk, 0, sizeof *mk);
    char s[64];
    if (o->attn_mask) {
        const qkv_tensor *am = o->attn_mask;
        const int64_t full[4] = {B, H, N, M};
        bool ok = am->ndim >= 1 && am->ndim <= 4;
        for (int d = 0; ok && d < am->ndim; d++) {
            int64_t want = full[4 - am->ndim + d], got = am->shape[d];
            ok = got == want || got == 1;
        }
        if (!ok) {
            qkv_set_error(QKV_ERR_SHAPE, "%s: attn_mask %s does not broadcast to the scores "
                          "(%lld, %lld, %lld, %lld)", op, qkv_shape_str(am, s, sizeof s),
                          (long long)B, (long long)H, (long long)N, (long long)M);
            return false;
        }
        /* keep batch and head axes only where the mask has them */
        int64_t Bm = am->ndim == 4 ? am->shape[0] : 1;
        int64_t Hm = am->ndim >= 3 ? am->shape[am->ndim - 3] : 1;
        mk->add = mask_copy(ctx, am, 4, (int64_t[]){Bm, Hm, N, M}, o->attn_mask_bool);
        if (!mk->add)
            return false;
        mk->add_sh = Hm == 1 ? 0 : N * M;
        mk->add_sb = Bm == 1 ? 0 : Hm * N * M;
    }
    if (o->key_padding_mask) {
        const qkv_tensor *kp = o->key_padding_mask;
        if (kp->ndim != 2 || kp->shape[0] != B || kp->shape[1] != M) {
            qkv_set_error(QKV_ERR_SHAPE, "%s: key_padding_mask %s should be (B, M) = (%lld, %lld)",
                          op, qkv_shape_str(kp, s, sizeof s), (long long)B, (long long)M);
            return false;
        }
        mk->kpm = mask_copy(ctx, kp, 2, kp->shape, o->key_padding_bool);
        if (!mk->kpm)
            return false;
    }
    mk->causal = o->causal != 0;
    if (o->valid_lens) {
        if (o->valid_lens_ndim != 1 && o->valid_lens_ndim != 2) {
            qkv_set_error(QKV_ERR_ARG, "%s: valid_lens_ndim must be 1 (B) or 2 (B, N), got %d", op,
                          o->valid_lens_ndim);
            return false;
        }
        int64_t n = o->valid_lens_ndim == 2 ? B * N : B;
        int64_t *lens = qkv__alloc(ctx, (size_t)(n ? n : 1) * sizeof(int64_t));
        if (!lens)
            return false;
        memcpy(lens, o->valid_lens, (size_t)n * sizeof(int64_t));
        mk->valid_lens = lens;
        mk->valid_ndim = o->valid_lens_ndim;
    }
    return true;
}

/* ---- masked softmax ---- */

/* y = softmax(masks(x)): dx += y (dy - sum(dy y)), none where a valid
 * length replaced x. saved[0]: the mask; iarg: B, H, N, M. */
static void masked_softmax_backward(qkv_ctx *ctx, qkv_node *n)
{
    float *gx = qkv__grad(ctx, n->in[0]);
    if (!gx)
        return;
    qkv_k_masked_softmax_backward(gx, n->out->data, n->out->grad, n->saved[0], n->iarg[0],
                                  n->iarg[1], n->iarg[2], n->iarg[3]);
}

/* x (B, H, N, M) viewed as such (any ndim, B and H from the caller). */
static qkv_tensor *masked_softmax_with(qkv_ctx *ctx, qkv_tensor *x, const qkv_k_attn_mask *mk,
                                       int64_t B, int64_t H)
{
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    int64_t N = x->shape[x->ndim - 2], M = x->shape[x->ndim - 1];
    qkv_tensor *y = qkv__tensor(ctx, x->ndim, x->shape);
    qkv_k_attn_mask *saved = qkv__alloc(ctx, sizeof *saved);
    if (!y || !saved)
        return NULL;
    *saved = *mk;
    qkv_k_masked_softmax_forward(y->data, x->data, mk, B, H, N, M);
    qkv_node *n = qkv__record(ctx, QKV_OP_MASKED_SOFTMAX, masked_softmax_backward, y, 1, &x);
    if (n) {
        n->saved[0] = saved;
        n->iarg[0] = B;
        n->iarg[1] = H;
        n->iarg[2] = N;
        n->iarg[3] = M;
    }
    return qkv__done(ctx, QKV_OP_MASKED_SOFTMAX, y);
}

qkv_tensor *qkv_masked_softmax(qkv_ctx *ctx, qkv_tensor *x, const qkv_attn_opts *opts)
{
    QKV_INPUTS("masked_softmax", x);
    if (x->ndim != 3 && x->ndim != 4) {
        char s[64];
        qkv_set_error(QKV_ERR_SHAPE, "masked_softmax: x must be (B, N, M) or (B, H, N, M), got %s",
                      qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    int64_t B = x->shape[0], H = x->ndim == 4 ? x->shape[1] : 1;
    qkv_k_attn_mask mk;
    if (!prepare_mask(ctx, "masked_softmax", opts ? opts : &no_opts, B, H,
                      x->shape[x->ndim - 2], x->shape[x->ndim - 1], &mk))
        return NULL;
    return masked_softmax_with(ctx, x, &mk, B, H);
}

/* ---- attention ---- */

/* The kernel's view of the (B, H, rows, cols) operand t (3-D: H = 1). */
static const float *operand(const qkv_tensor *t, int64_t *sb, int64_t *sh, int64_t *sn)
{
    int nd = t->ndim;
    *sb = t->stride[0];
    *sh = nd == 4 ? t->stride[1] : 0;
    *sn = t->stride[nd - 2];
    return t->data;
}

/* out = dropout(softmax(masks(scale q k^T))) v.
 * saved[0]: the kernel arguments (masks included); saved[1]: the row
 * statistics (2, B, H, N). */
static void attention_backward(qkv_ctx *ctx, qkv_node *n)
{
    const qkv_k_attn *a = n->saved[0];
    float *dq, *dk, *dv;
    if (n->n_in == 1) { /* qkv__attention_packed: column blocks of one gradient */
        float *g = qkv__grad(ctx, n->in[0]);
        if (!g)
            return;
        int64_t E = a->H * a->D;
        dq = g, dk = g + E, dv = g + 2 * E;
    } else {
        dq = qkv__wants(n, 0) ? qkv__grad(ctx, n->in[0]) : NULL;
        dk = qkv__wants(n, 1) ? qkv__grad(ctx, n->in[1]) : NULL;
        dv = qkv__wants(n, 2) ? qkv__grad(ctx, n->in[2]) : NULL;
    }
    int threads = qkv_threads();
    int64_t nwork = (int64_t)qkv_k_attn_backward_work(a, threads);
    float *work = qkv__floats(ctx, nwork);
    if (!work)
        return;
    qkv_k_attn_backward(a, n->out->data, n->saved[1], n->out->grad, dq, dk, dv, work, threads);
    qkv__floats_done(ctx, work, nwork);
}

static qkv_tensor *attention_fused(qkv_ctx *ctx, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v,
                                   const qkv_k_attn *args)
{
    int nd = q->ndim;
    int64_t shape[4];
    memcpy(shape, q->shape, sizeof(int64_t) * (size_t)nd);
    shape[nd - 1] = args->H * args->Dv; /* Dv, or H Dv side by side */
    if (nd == 4)
        shape[nd - 1] = args->Dv;
    int threads = qkv_threads();
    qkv_tensor *out = qkv__tensor(ctx, nd, shape);
    float *lse = qkv__floats(ctx, 2 * args->B * args->H * args->N);
    int64_t nwork = (int64_t)qkv_k_attn_forward_work(args, threads);
    float *work = qkv__floats(ctx, nwork);
    qkv_k_attn *saved = qkv__alloc(ctx, sizeof *saved);
    if (!out || !lse || !work || !saved)
        return NULL;
    *saved = *args;
    qkv_k_attn_forward(args, out->data, lse, work, threads);
    qkv__floats_done(ctx, work, nwork);
    /* k == v == NULL: q is the packed (B, N, 3 H D) of qkv__attention_packed */
    qkv_node *n = qkv__record(ctx, QKV_OP_ATTENTION, attention_backward, out, k ? 3 : 1,
                              (qkv_tensor *[]){q, k, v});
    if (n) {
        n->saved[0] = saved;
        n->saved[1] = lse;
    }
    return qkv__done(ctx, QKV_OP_ATTENTION, out);
}

/* The dropout pattern of the fused kernel as a constant (B, H, N, M) tensor
 * of 0 and 1 / (1 - p). */
static qkv_tensor *dropout_keep(qkv_ctx *ctx, const qkv_k_attn *a, int nd)
{
    int64_t shape[4] = {a->B, a->H, a->N, a->M};
    if (nd == 3)
        shape[1] = a->N, shape[2] = a->M;
    qkv_tensor *z = qkv__tensor(ctx, nd, shape);
    if (!z)
        return NULL;
    for (int64_t bh = 0; bh < a->B * a->H; bh++)
        for (int64_t i = 0; i < a->N; i++)
            qkv_k_attn_dropout_row(z->data + (bh * a->N + i) * a->M, a->seed, a->dropout_p, bh,
                                   i, 0, a->M, a->N, a->M);
    return z;
}

static qkv_tensor *attention_unfused(qkv_ctx *ctx, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v,
                                     const qkv_k_attn *a, qkv_tensor **weights)
{
    qkv_tensor *s = qkv_scale(ctx, qkv_matmul(ctx, q, k, 0, 1), a->scale);
    if (!s)
        return NULL;
    qkv_tensor *w = masked_softmax_with(ctx, s, &a->mask, a->B, a->H);
    if (weights)
        *weights = w;
    if (w && a->dropout_p > 0)
        w = qkv_mul(ctx, w, dropout_keep(ctx, a, q->ndim));
    return qkv_matmul(ctx, w, v, 0, 0);
}

/* From o, for a kernel whose sizes are set: the scale (1 / sqrt(D) unless
 * given), the masks, and in training the dropout probability with a seed
 * drawn from the context. false (error set) if a mask is malformed. */
static bool scale_masks_dropout(qkv_ctx *ctx, const qkv_attn_opts *o, qkv_k_attn *a)
{
    a->scale = o->scale != 0.0f ? o->scale : (float)(1.0 / sqrt((double)(a->D ? a->D : 1)));
    if (!prepare_mask(ctx, "attention", o, a->B, a->H, a->N, a->M, &a->mask))
        return false;
    if (ctx->training && o->dropout_p > 0.0f) {
        a->dropout_p = o->dropout_p;
        a->seed = qkv_rng_u64(&ctx->rng);
    }
    return true;
}

qkv_tensor *qkv_attention(qkv_ctx *ctx, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v,
                          const qkv_attn_opts *opts)
{
    QKV_INPUTS("attention", q, k, v);
    const qkv_attn_opts *o = opts ? opts : &no_opts;
    if (o->weights)
        *o->weights = NULL;
    int nd = q->ndim;
    if ((nd != 3 && nd != 4) || k->ndim != nd || v->ndim != nd)
        return qkv__shape_error("attention", q, k,
                                "q, k, v must all be (B, H, N, D) or all (B, N, D)");
    for (int d = 0; d < nd - 2; d++)
        if (q->shape[d] != k->shape[d] || k->shape[d] != v->shape[d])
            return qkv__shape_error("attention", q, v, "batch and head sizes differ");
    if (q->shape[nd - 1] != k->shape[nd - 1])
        return qkv__shape_error("attention", q, k, "q and k sizes D differ");
    if (k->shape[nd - 2] != v->shape[nd - 2])
        return qkv__shape_error("attention", k, v, "k and v have different numbers of keys");
    if (!(o->dropout_p >= 0.0f && o->dropout_p <= 1.0f)) {
        qkv_set_error(QKV_ERR_ARG, "attention: dropout probability %g is outside [0, 1]",
                      (double)o->dropout_p);
        return NULL;
    }
    qkv_k_attn a = {0};
    a.B = q->shape[0];
    a.H = nd == 4 ? q->shape[1] : 1;
    a.N = q->shape[nd - 2];
    a.M = k->shape[nd - 2];
    a.D = q->shape[nd - 1];
    a.Dv = v->shape[nd - 1];
    if (!scale_masks_dropout(ctx, o, &a))
        return NULL;
    if (o->weights || ctx->unfused)
        return attention_unfused(ctx, q, k, v, &a, o->weights);
    /* the kernel reads rows through strides but needs each row contiguous */
    if (q->stride[nd - 1] != 1 && a.D > 1)
        q = qkv_contiguous(ctx, q);
    if (k->stride[nd - 1] != 1 && a.D > 1)
        k = qkv_contiguous(ctx, k);
    if (v->stride[nd - 1] != 1 && a.Dv > 1)
        v = qkv_contiguous(ctx, v);
    if (!q || !k || !v)
        return NULL;
    a.q = operand(q, &a.q_sb, &a.q_sh, &a.q_sn);
    a.k = operand(k, &a.k_sb, &a.k_sh, &a.k_sn);
    a.v = operand(v, &a.v_sb, &a.v_sh, &a.v_sn);
    qkv_k_attn_contiguous_outputs(&a);
    return attention_fused(ctx, q, k, v, &a);
}

/* (B, N, H d) or (N, B, H d), contiguous: where row i of head h of batch b
 * starts, and the axis sizes */
static const float *heads_operand(const qkv_tensor *t, int64_t H, bool bf, int64_t *sb,
                                  int64_t *sh, int64_t *sn)
{
    int64_t E = t->shape[2];
    *sh = E / H;
    *sb = bf ? t->shape[1] * E : E;
    *sn = bf ? E : t->shape[1] * E;
    return t->data;
}

qkv_tensor *qkv__attention_heads(qkv_ctx *ctx, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v,
                                 int64_t H, bool batch_first, const qkv_attn_opts *o)
{
    QKV_INPUTS("attention", q, k, v);
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || H < 1 || q->shape[2] % H ||
        k->shape[2] != q->shape[2] || v->shape[2] % H)
        return qkv__shape_error("attention", q, v, "q, k, v must be 3-D with heads dividing E");
    int bi = batch_first ? 0 : 1, ni = batch_first ? 1 : 0;
    if (k->shape[bi] != q->shape[bi] || v->shape[bi] != q->shape[bi] ||
        k->shape[ni] != v->shape[ni])
        return qkv__shape_error("attention", k, v, "batch or key counts differ");
    q = qkv_contiguous(ctx, q);
    k = qkv_contiguous(ctx, k);
    v = qkv_contiguous(ctx, v);
    if (!q || !k || !v)
        return NULL;
    qkv_k_attn a = {0};
    a.B = q->shape[bi];
    a.H = H;
    a.N = q->shape[ni];
    a.M = k->shape[ni];
    a.D = q->shape[2] / H;
    a.Dv = v->shape[2] / H;
    if (!scale_masks_dropout(ctx, o, &a))
        return NULL;
    a.q = heads_operand(q, H, batch_first, &a.q_sb, &a.q_sh, &a.q_sn);
    a.k = heads_operand(k, H, batch_first, &a.k_sb, &a.k_sh, &a.k_sn);
    a.v = heads_operand(v, H, batch_first, &a.v_sb, &a.v_sh, &a.v_sn);
    /* out is laid out as q with Dv per head; the gradients as their inputs */
    a.o_sh = a.Dv, a.o_sb = batch_first ? a.N * H * a.Dv : H * a.Dv;
    a.o_sn = batch_first ? H * a.Dv : a.B * H * a.Dv;
    a.dq_sb = a.q_sb, a.dq_sh = a.q_sh, a.dq_sn = a.q_sn;
    a.dk_sb = a.k_sb, a.dk_sh = a.k_sh, a.dk_sn = a.k_sn;
    a.dv_sb = a.v_sb, a.dv_sh = a.v_sh, a.dv_sn = a.v_sn;
    return attention_fused(ctx, q, k, v, &a);
}

qkv_tensor *qkv__attention_packed(qkv_ctx *ctx, qkv_tensor *x, int64_t H, const qkv_attn_opts *o)
{
    QKV_INPUTS("attention", x);
    if (x->ndim != 3 || H < 1 || x->shape[2] % (3 * H))
        return qkv__shape_error("attention", x, x, "packed q, k, v must be (B, N, 3 H D)");
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    int64_t E = x->shape[2] / 3;
    qkv_k_attn a = {0};
    a.B = x->shape[0];
    a.H = H;
    a.N = a.M = x->shape[1];
    a.D = a.Dv = E / H;
    if (!scale_masks_dropout(ctx, o, &a))
        return NULL;
    /* head h of q, k, v: columns h D, E + h D, 2 E + h D of each row */
    a.q = x->data, a.k = x->data + E, a.v = x->data + 2 * E;
    a.q_sb = a.k_sb = a.v_sb = a.N * 3 * E;
    a.q_sh = a.k_sh = a.v_sh = a.D;
    a.q_sn = a.k_sn = a.v_sn = 3 * E;
    a.o_sh = a.D, a.o_sb = a.N * E, a.o_sn = E;
    a.dq_sb = a.dk_sb = a.dv_sb = a.q_sb;
    a.dq_sh = a.dk_sh = a.dv_sh = a.q_sh;
    a.dq_sn = a.dk_sn = a.dv_sn = a.q_sn;
    return attention_fused(ctx, x, NULL, NULL, &a);
}
