/* ops_matmul.c - matmul with transpose flags and broadcast batch axes, and
 * linear (x W^T + b). Strided inputs whose last two axes are row- or
 * column-major go to GEMM as they are, with a transpose flag, not a copy. */
#include "../kernels/gemm.h"
#include "../kernels/kernels.h"
#include "../qkv_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* How GEMM sees the last two axes of t: data, leading dimension and
 * whether the storage is transposed relative to the logical (r, c). */
typedef struct {
    int64_t ld;
    bool flip;
} mat_layout;

static bool layout_of(const qkv_tensor *t, mat_layout *L)
{
    int nd = t->ndim;
    int64_t r = t->shape[nd - 2], c = t->shape[nd - 1];
    int64_t sr = t->stride[nd - 2], sc = t->stride[nd - 1];
    if (sc == 1 || c == 1) {
        L->ld = r == 1 ? (c > 1 ? c : 1) : sr;
        L->flip = false;
        return L->ld >= c;
    }
    if (sr == 1 || r == 1) {
        L->ld = c == 1 ? (r > 1 ? r : 1) : sc;
        L->flip = true;
        return L->ld >= r;
    }
    return false;
}

/* batch offsets: for batch index bi of the broadcast batch shape, the
 * offset into t's data (strides) or into its contiguous grad */
static int64_t batch_offset(const qkv_tensor *t, int nb, const int64_t *bshape, int64_t bi,
                            bool contiguous)
{
    int64_t cs[QKV_MAX_DIMS];
    qkv__contig_strides(t->ndim, t->shape, cs);
    int64_t off = 0;
    for (int i = nb - 1; i >= 0; i--) {
        int64_t k = bi % bshape[i];
        bi /= bshape[i];
        int it = t->ndim - 2 - nb + i;
        if (it >= 0 && t->shape[it] != 1)
            off += k * (contiguous ? cs[it] : t->stride[it]);
    }
    return off;
}

static void matmul_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *a = n->in[0], *b = n->in[1], *out = n->out;
    bool ta = n->iarg[0], tb = n->iarg[1];
    int nb = out->ndim - 2;
    int64_t N = out->shape[nb], M = out->shape[nb + 1], K = n->iarg[2];
    int64_t nbatch = qkv__shape_numel(nb, out->shape);
    mat_layout La = {0}, Lb = {0};
    layout_of(a, &La);
    layout_of(b, &Lb);
    bool ea = ta != La.flip, eb = tb != Lb.flip; /* effective GEMM flags */
    float *ga = qkv__wants(n, 0) ? qkv__grad(ctx, a) : NULL;
    float *gb = qkv__wants(n, 1) ? qkv__grad(ctx, b) : NULL;
    for (int64_t bi = 0; bi < nbatch; bi++) {
        const float *G = out->grad + bi * N * M;
        const float *A = a->data + batch_offset(a, nb, out->shape, bi, false);
        const float *B = b->data + batch_offset(b, nb, out->shape, bi, false);
        if (ga) {
            float *dA = ga + batch_offset(a, nb, out->shape, bi, true);
            if (!ta) /* out = A op(B): dA (N,K) += G op(B)^T */
                qkv_k_gemm(false, !eb, N, K, M, 1.0f, G, M, B, Lb.ld, 1.0f, dA, K);
            else /* out = A^T op(B): dA (K,N) += op(B) G^T */
                qkv_k_gemm(eb, true, K, N, M, 1.0f, B, Lb.ld, G, M, 1.0f, dA, N);
        }
        if (gb) {
            float *dB = gb + batch_offset(b, nb, out->shape, bi, true);
            if (!tb) /* out = op(A) B: dB (K,M) += op(A)^T G */
                qkv_k_gemm(!ea, false, K, M, N, 1.0f, A, La.ld, G, M, 1.0f, dB, M);
            else /* out = op(A) B^T: dB (M,K) += G^T op(A) */
                qkv_k_gemm(true, ea, M, K, N, 1.0f, G, M, A, La.ld, 1.0f, dB, K);
        }
    }
}

qkv_tensor *qkv_matmul(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b, int trans_a, int trans_b)
{
    QKV_INPUTS("matmul", a, b);
    if (a->ndim < 2 || b->ndim < 2)
        return qkv__shape_error("matmul", a, b, "both inputs need at least 2 dimensions");
    int64_t N = a->shape[a->ndim - (trans_a ? 1 : 2)], Ka = a->shape[a->ndim - (trans_a ? 2 : 1)];
    int64_t Kb = b->shape[b->ndim - (trans_b ? 1 : 2)], M = b->shape[b->ndim - (trans_b ? 2 : 1)];
    if (Ka != Kb)
        return qkv__shape_error("matmul", a, b, "inner sizes differ");
    /* broadcast batch axes */
    int nba = a->ndim - 2, nbb = b->ndim - 2, nb = nba > nbb ? nba : nbb;
    int64_t shape[QKV_MAX_DIMS];
    for (int i = 0; i < nb; i++) {
        int ia = nba - nb + i, ib = nbb - nb + i;
        int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1)
            return qkv__shape_error("matmul", a, b, "batch axes do not broadcast");
        shape[i] = sa == 1 ? sb : sa;
    }
    mat_layout La = {0}, Lb = {0};
    if (!layout_of(a, &La))
        a = qkv_contiguous(ctx, a);
    if (!layout_of(b, &Lb))
        b = qkv_contiguous(ctx, b);
    if (!a || !b || !layout_of(a, &La) || !layout_of(b, &Lb))
        return NULL;
    shape[nb] = N;
    shape[nb + 1] = M;
    qkv_tensor *out = qkv__tensor(ctx, nb + 2, shape);
    if (!out)
        return NULL;
    bool ea = (trans_a != 0) != La.flip, eb = (trans_b != 0) != Lb.flip;
    int64_t nbatch = qkv__shape_numel(nb, shape);
    for (int64_t bi = 0; bi < nbatch; bi++) {
        const float *A = a->data + batch_offset(a, nb, shape, bi, false);
        const float *B = b->data + batch_offset(b, nb, shape, bi, false);
        qkv_k_gemm(ea, eb, N, M, Ka, 1.0f, A, La.ld, B, Lb.ld, 0.0f, out->data + bi * N * M, M);
    }
    qkv_node *n = qkv__record(ctx, QKV_OP_MATMUL, matmul_backward, out, 2, (qkv_tensor *[]){a, b});
    if (n) {
        n->iarg[0] = trans_a != 0;
        n->iarg[1] = trans_b != 0;
        n->iarg[2] = Ka;
    }
    return qkv__done(ctx, QKV_OP_MATMUL, out);
}

/* linear: x (R, in) [R = all leading axes], w (out, in), bias (out)
 * -> y (R, out) = x w^T + bias */
/* dx (R,in) (+)= G (R,out) W (out,in) */
static void linear_dx(const float *G, const float *W, float *gx, bool acc, int64_t R, int64_t in,
                      int64_t outf)
{
    qkv_k_gemm(false, false, R, in, outf, 1.0f, G, outf, W, in, acc ? 1.0f : 0.0f, gx, in);
}

/* db[j] += sum over the R rows of G (R, out) of column j, for the columns
 * of blocks b0 .. b1 of 64 */
static void bias_grad_cols(const float *G, float *gb, int64_t R, int64_t outf, int64_t b0,
                           int64_t b1)
{
    int64_t j0 = b0 * 64, j1 = b1 * 64 < outf ? b1 * 64 : outf;
    for (int64_t r = 0; r < R; r++) {
        const float *g = G + r * outf;
#pragma omp simd
        for (int64_t j = j0; j < j1; j++)
            gb[j] += g[j];
    }
}

/* dW (out,in) += G^T (out,R) x (R,in); db += the sum of G's rows */
void qkv__linear_dw(const float *G, const float *X, float *gw, float *gb, int64_t R, int64_t in,
                    int64_t outf)
{
    if (gw)
        qkv_k_gemm(true, false, outf, in, R, 1.0f, G, outf, X, in, 1.0f, gw, in);
    if (!gb)
        return;
    /* columns j0 .. j0+64 of G summed over its rows, a block per task */
    int64_t blocks = (outf + 63) / 64;
    bool par = (double)R * outf > (1 << 18) && blocks > 1 && qkv_threads() > 1;
#ifdef _OPENMP
    par = par && !omp_in_parallel();
#endif
    if (!par) {
        bias_grad_cols(G, gb, R, outf, 0, blocks);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t cb = 0; cb < blocks; cb++)
        bias_grad_cols(G, gb, R, outf, cb, cb + 1);
}

static void linear_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *x = n->in[0], *w = n->in[1], *bias = n->in[2], *y = n->out;
    int64_t in = w->shape[1], outf = w->shape[0], R = qkv_numel(x) / (in ? in : 1);
    const float *G = y->grad;
    bool acc_x = false;
    float *gx = qkv__wants(n, 0) ? qkv__grad_for_write(ctx, x, &acc_x) : NULL;
    float *gw = qkv__wants(n, 1) ? qkv__grad(ctx, w) : NULL;
    float *gb = bias && qkv__wants(n, 2) ? qkv__grad(ctx, bias) : NULL;
    /* dx and dW are independent products: below the size where one GEMM
     * splits across threads, two threads take one each */
    if (gx && (gw || gb) && qkv_threads() > 1 &&
        (double)R * in * outf < QKV_GEMM_PARALLEL_WORK) {
#pragma omp parallel sections num_threads(2)
        {
#pragma omp section
            linear_dx(G, w->data, gx, acc_x, R, in, outf);
#pragma omp section
            qkv__linear_dw(G, x->data, gw, gb, R, in, outf);
        }
        return;
    }
    if (gx)
        linear_dx(G, w->data, gx, acc_x, R, in, outf);
    qkv__linear_dw(G, x->data, gw, gb, R, in, outf);
}

qkv_tensor *qkv_linear(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *w, qkv_tensor *bias)
{
    QKV_INPUTS("linear", x, w);
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
        return qkv__shape_error("linear", x, w, "input's last size must equal weight's (out, in) in");
    if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0]))
        return qkv__shape_error("linear", w, bias, "bias must be (out)");
    x = qkv_contiguous(ctx, x);
    if (!qkv_is_contiguous(w) || (bias && !qkv_is_contiguous(bias))) {
        qkv_set_error(QKV_ERR_ARG, "linear: weight and bias must be contiguous");
        return NULL;
    }
    if (!x)
        return NULL;
    int64_t in = w->shape[1], outf = w->shape[0], R = qkv_numel(x) / (in ? in : 1);
    int64_t shape[QKV_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = outf;
    qkv_tensor *y = qkv__tensor(ctx, x->ndim, shape);
    if (!y)
        return NULL;
    if (bias) {
        for (int64_t r = 0; r < R; r++)
            memcpy(y->data + r * outf, bias->data, (size_t)outf * sizeof(float));
    }
    qkv_k_gemm(false, true, R, outf, in, 1.0f, x->data, in, w->data, in, bias ? 1.0f : 0.0f,
               y->data, outf);
    qkv__record(ctx, QKV_OP_LINEAR, linear_backward, y, 3, (qkv_tensor *[]){x, w, bias});
    return qkv__done(ctx, QKV_OP_LINEAR, y);
}
