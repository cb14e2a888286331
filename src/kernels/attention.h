/*
 * attention.h - scaled dot-product attention as one fused kernel in the
 * style of FlashAttention-2, and the mask and dropout rules it shares with
 * the unfused path (ops_attention.c) so that both give the same numbers.
 *
 * Legend: B batch, H heads, N queries, M keys, D query/key size, Dv value
 * size. Element [b, h, i, d] of a strided (B, H, N, D) operand lies at
 * b*sb + h*sh + i*sn + d: the last axis is contiguous, the others may be
 * any view (so multi-head attention needs no copy to split its heads).
 */
#ifndef QKV_KERNELS_ATTENTION_H
#define QKV_KERNELS_ATTENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The score a d2l valid length gives to keys past it (not -inf: a row of
 * length 0 becomes uniform, as the book's masked_softmax). */
#define QKV_ATTN_VALID_FILL (-1e6f)

/* Masks, applied to a scaled score s[b, h, i, j] in this order:
 *   s += add[b, h, i, j]           additive mask (bool masks arrive as 0 / -inf)
 *   s += kpm[b, j]                 key padding, additive (0 / -inf)
 *   s  = -inf       if causal and j > i
 *   s  = VALID_FILL if j >= valid length of (b) or (b, i)
 * The last one replaces the score, so no gradient reaches it. */
typedef struct {
    const float *add;            /* (B|1, H|1, N, M) or NULL               */
    int64_t add_sb, add_sh;      /* 0 on a broadcast axis; row stride is M */
    const float *kpm;            /* (B, M) or NULL                         */
    bool causal;
    const int64_t *valid_lens;   /* (B) or (B, N), or NULL                 */
    int valid_ndim;              /* 1 or 2                                 */
} qkv_k_attn_mask;

/* Applies the masks to s (n) = scores of query i against keys j0 .. j0+n
 * of (b, h). */
void qkv_k_attn_mask_row(const qkv_k_attn_mask *mk, int64_t N, int64_t M, int64_t b, int64_t h,
                         int64_t i, int64_t j0, int64_t n, float *s);
/* The valid length of (b, i), or M when there is none. */
int64_t qkv_k_attn_valid_len(const qkv_k_attn_mask *mk, int64_t N, int64_t M, int64_t b,
                             int64_t i);

/* Dropout without a stored mask: element (bh, i, j) of the (B*H, N, M)
 * weights is kept when the top 32 bits of a SplitMix64 hash of
 * seed + index * golden ratio are >= p 2^32. Any thread, any tile order,
 * forward or backward, gets the same decision. */
static inline uint64_t qkv_k_attn_hash(uint64_t seed, uint64_t index)
{
    uint64_t z = seed + index * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* p 2^32 as the comparison threshold (p in [0, 1)); p == 1 drops all. */
static inline uint64_t qkv_k_attn_threshold(float p) { return (uint64_t)((double)p * 4294967296.0); }
/* keep (n) = 1 / (1 - p) or 0 for elements j0 .. j0+n of row (bh, i). */
void qkv_k_attn_dropout_row(float *keep, uint64_t seed, float p, int64_t bh, int64_t i,
                            int64_t j0, int64_t n, int64_t N, int64_t M);

typedef struct {
    int64_t B, H, N, M, D, Dv;
    float scale;                   /* scores are scale * q . k            */
    const float *q, *k, *v;        /* (B,H,N,D), (B,H,M,D), (B,H,M,Dv)    */
    int64_t q_sb, q_sh, q_sn;
    int64_t k_sb, k_sh, k_sn;
    int64_t v_sb, v_sh, v_sn;
    /* where rows of out and dout (o_), dq, dk, dv go: contiguous
     * (B, H, rows, cols) for qkv_attention, the inputs' own (B, N, H D)
     * layout for multi-head attention (heads side by side, no transposes) */
    int64_t o_sb, o_sh, o_sn;
    int64_t dq_sb, dq_sh, dq_sn;
    int64_t dk_sb, dk_sh, dk_sn;
    int64_t dv_sb, dv_sh, dv_sn;
    qkv_k_attn_mask mask;
    float dropout_p;               /* 0: no dropout                       */
    uint64_t seed;                 /* of the dropout hash                 */
} qkv_k_attn;

/* Rows of at most this many keys take the short-row path: a whole row of
 * scores in registers, one task per (batch, head), no tiles. */
#ifndef QKV_ATTN_SHORT_M
#define QKV_ATTN_SHORT_M 64
#endif

/* Sets the o_ and d*_ strides to contiguous (B, H, rows, cols) layouts. */
void qkv_k_attn_contiguous_outputs(qkv_k_attn *a);

/* Floats of workspace the kernels need for `threads` threads. */
size_t qkv_k_attn_forward_work(const qkv_k_attn *a, int threads);
size_t qkv_k_attn_backward_work(const qkv_k_attn *a, int threads);

/* out (B, H, N, Dv) (rows placed by o_ strides) = dropout(softmax(s)) v,
 * and lse (2, B, H, N) contiguous:
 * the row maxima m_i of the masked scores, then log sum_j exp(s_ij - m_i)
 * (kept apart: their float sum would round a large m). A row whose every
 * score is -inf gives NaN in out and lse (as PyTorch's softmax). */
void qkv_k_attn_forward(const qkv_k_attn *a, float *out, float *lse, float *work, int threads);

/* The backward of out = dropout(softmax(scale q k^T + masks)) v from out,
 * lse (2, B, H, N) and dout (out's layout): accumulates (+=) into dq
 * (B,H,N,D), dk (B,H,M,D), dv (B,H,M,Dv), laid out by their strides; any
 * may be NULL. */
void qkv_k_attn_backward(const qkv_k_attn *a, const float *out, const float *lse,
                         const float *dout, float *dq, float *dk, float *dv, float *work,
                         int threads);

/* Masked softmax over rows: y (B, H, N, M) = softmax(masks(x)) with
 * x (B, H, N, M) contiguous; a row of -inf gives NaN. */
void qkv_k_masked_softmax_forward(float *y, const float *x, const qkv_k_attn_mask *mk,
                                  int64_t B, int64_t H, int64_t N, int64_t M);
/* dx += y * (dy - sum(dy * y)), zero where a valid length replaced x. */
void qkv_k_masked_softmax_backward(float *dx, const float *y, const float *dy,
                                   const qkv_k_attn_mask *mk, int64_t B, int64_t H, int64_t N,
                                   int64_t M);

#endif
