/* seq2seq.c - the book's Transformer for translation (d2l's
 * TransformerEncoder and TransformerDecoder inside an EncoderDecoder):
 * embeddings scaled by sqrt(E), sinusoidal positions, the blocks of
 * nn/transformer.c and a Linear to the target vocabulary; greedy decoding
 * (d2l's predict_seq2seq) and beam search over the cached decoder; the
 * attention weights of a translation, recorded step by step. */
#include "../nn/nn_internal.h"

#include <math.h>

qkv_status qkv_seq2seq_init(qkv_seq2seq *m, qkv_params *ps, const qkv_tf_config *cfg,
                            int64_t src_vocab, int64_t tgt_vocab)
{
    memset(m, 0, sizeof *m);
    if (!cfg || cfg->layout != QKV_TF_D2L || src_vocab <= 0 || tgt_vocab <= 0)
        return qkv_set_error(QKV_ERR_ARG,
                             "qkv_seq2seq_init: needs a d2l-layout config and vocabularies, "
                             "got %lld and %lld tokens",
                             (long long)src_vocab, (long long)tgt_vocab);
    m->src_vocab = src_vocab;
    m->tgt_vocab = tgt_vocab;
    int64_t e = cfg->d_model;
    m->src_embedding = qkv_params_add(ps, "encoder.embedding.weight", 2,
                                      (int64_t[]){src_vocab, e}, 0);
    if (!m->src_embedding)
        return qkv_error_status();
    qkv_status s = qkv_transformer_init(&m->tf, ps, "", cfg);
    if (s != QKV_OK)
        return s;
    m->tgt_embedding = qkv_params_add(ps, "decoder.embedding.weight", 2,
                                      (int64_t[]){tgt_vocab, e}, 0);
    if (!m->tgt_embedding)
        return qkv_error_status();
    return qkv_nn_linear_init(&m->dense, ps, "decoder.dense", e, tgt_vocab, 1);
}

void qkv_seq2seq_reset(qkv_seq2seq *m, qkv_rng *r)
{
    qkv_init_normal(r, m->src_embedding, 0.0f, 1.0f);
    qkv_init_normal(r, m->tgt_embedding, 0.0f, 1.0f);
    qkv_transformer_reset(&m->tf, r);
    qkv_nn_linear_reset(&m->dense, r);
    qkv_init_xavier_uniform(r, m->dense.weight, 1.0f);
}

/* P[offset .. offset + t) (t, E), the sinusoid of nn/posenc.c's d2l
 * table, no gradient. d2l builds the angles in float32: i / 10000^(j / E). */
static qkv_tensor *pos_table(qkv_ctx *ctx, int64_t t, int64_t e, int64_t offset)
{
    qkv_tensor *p = qkv__tensor(ctx, 2, (int64_t[]){t, e});
    if (!p)
        return NULL;
    for (int64_t i = 0; i < t; i++)
        for (int64_t j = 0; j < e; j += 2) {
            float angle = (float)(offset + i) / powf(10000.0f, (float)j / (float)e);
            p->data[i * e + j] = sinf(angle);
            if (j + 1 < e)
                p->data[i * e + j + 1] = cosf(angle);
        }
    return p;
}

/* x (B, T, E) -> x + P[offset .. offset + T). The offset is why this is
 * not qkv_nn_posenc: an incremental step adds its own position (d2l's
 * predict_seq2seq adds P[0] at every step, since its decoder sees one token
 * at a time; see docs). */
static qkv_tensor *pos_encoding(qkv_ctx *ctx, qkv_tensor *x, int64_t offset)
{
    QKV_INPUTS("pos_encoding", x);
    if (x->ndim != 3 || offset < 0) {
        char s[64];
        qkv_set_error(QKV_ERR_SHAPE, "pos_encoding: x %s should be (B, T, E), offset %lld >= 0",
                      qkv_shape_str(x, s, sizeof s), (long long)offset);
        return NULL;
    }
    qkv_tensor *p = pos_table(ctx, x->shape[1], x->shape[2], offset);
    return p ? qkv_add(ctx, x, p) : NULL;
}

/* ids (B, T) -> dropout(pos(embedding * sqrt(E))) (B, T, E) */
static qkv_tensor *embed(qkv_ctx *ctx, const qkv_seq2seq *m, qkv_tensor *weight,
                         const int64_t *ids, int64_t b, int64_t t, int64_t offset)
{
    int64_t e = m->tf.cfg.d_model;
    qkv_tensor *x = qkv_embedding(ctx, weight, ids, b * t);
    x = x ? qkv_reshape(ctx, x, 3, (int64_t[]){b, t, e}) : NULL;
    x = pos_encoding(ctx, qkv_scale(ctx, x, sqrtf((float)e)), offset);
    return qkv_dropout(ctx, x, m->tf.cfg.dropout);
}

qkv_tensor *qkv_seq2seq_hidden(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                               const int64_t *src_valid, int64_t batch, int64_t src_len,
                               const int64_t *dec_in, int64_t tgt_len, const qkv_tf_opts *opts)
{
    if (!src || !dec_in || batch <= 0 || src_len <= 0 || tgt_len <= 0) {
        qkv_set_error(QKV_ERR_ARG, "qkv_seq2seq: no ids or empty batch (%lld, %lld, %lld)",
                      (long long)batch, (long long)src_len, (long long)tgt_len);
        return NULL;
    }
    qkv_tf_opts mk = {.src_valid_lens = src_valid, .tgt_causal = 1};
    if (opts) { /* what the caller collects */
        mk.enc_weights = opts->enc_weights;
        mk.dec_self_weights = opts->dec_self_weights;
        mk.dec_cross_weights = opts->dec_cross_weights;
        mk.dec_intermediate = opts->dec_intermediate;
    }
    qkv_tensor *memory = qkv_transformer_encode(
        ctx, &m->tf, embed(ctx, m, m->src_embedding, src, batch, src_len, 0), &mk);
    return qkv_transformer_decode(
        ctx, &m->tf, embed(ctx, m, m->tgt_embedding, dec_in, batch, tgt_len, 0), memory, &mk);
}

qkv_tensor *qkv_seq2seq_forward(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                                const int64_t *src_valid, int64_t batch, int64_t src_len,
                                const int64_t *dec_in, int64_t tgt_len, const qkv_tf_opts *opts)
{
    qkv_tensor *y = qkv_seq2seq_hidden(ctx, m, src, src_valid, batch, src_len, dec_in, tgt_len,
                                       opts);
    return y ? qkv_nn_linear_forward(ctx, &m->dense, y) : NULL;
}

/* ---- the training loss over the kept rows ---- */

/* The kept rows of ids (B, T), len[b] of row b: r->at, and the ids and
 * positions of the kept rows (arena). */
static bool keep_rows(qkv_ctx *ctx, qkv_rows *r, int64_t B, int64_t T, const int64_t *len,
                      const int64_t *ids, int64_t **kept_ids, int64_t **pos)
{
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++)
        n += len[b];
    int64_t *at = qkv__alloc(ctx, (size_t)(3 * (n ? n : 1)) * sizeof(int64_t));
    if (!at)
        return false;
    *kept_ids = at + n, *pos = at + 2 * n;
    int64_t k = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < len[b]; t++, k++) {
            at[k] = b * T + t;
            (*kept_ids)[k] = ids[b * T + t];
            (*pos)[k] = t;
        }
    *r = (qkv_rows){.B = B, .T = T, .n = n, .at = at};
    return true;
}

/* ids at the kept rows -> dropout(embedding * sqrt(E) + P[t]) (n, E) */
static qkv_tensor *embed_rows(qkv_ctx *ctx, const qkv_seq2seq *m, qkv_tensor *weight,
                              const qkv_rows *r, const int64_t *ids, const int64_t *pos)
{
    int64_t e = m->tf.cfg.d_model;
    qkv_tensor *table = pos_table(ctx, r->T, e, 0);
    qkv_tensor *p = table ? qkv_index_select(ctx, table, 0, pos, r->n) : NULL;
    qkv_tensor *x = p ? qkv_scale(ctx, qkv_embedding(ctx, weight, ids, r->n), sqrtf((float)e))
                      : NULL;
    return qkv_dropout(ctx, x ? qkv_add(ctx, x, p) : NULL, m->tf.cfg.dropout);
}

qkv_tensor *qkv_seq2seq_loss(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                             const int64_t *src_valid, int64_t batch, int64_t src_len,
                             const int64_t *dec_in, const int64_t *target, int64_t tgt_len,
                             int64_t pad)
{
    if (!src || !src_valid || !dec_in || !target || batch <= 0 || src_len <= 0 || tgt_len <= 0) {
        qkv_set_error(QKV_ERR_ARG, "qkv_seq2seq_loss: no ids or empty batch (%lld, %lld, %lld)",
                      (long long)batch, (long long)src_len, (long long)tgt_len);
        return NULL;
    }
    int64_t *len = qkv__alloc(ctx, (size_t)(2 * batch) * sizeof(int64_t));
    if (!len)
        return NULL;
    int64_t *slen = len, *tlen = len + batch, n_tgt = 0;
    for (int64_t b = 0; b < batch; b++) {
        int64_t v = src_valid[b];
        slen[b] = v <= 0 ? src_len : v < src_len ? v : src_len;
        tlen[b] = 0;
        for (int64_t t = tgt_len - 1; t >= 0; t--)
            if (target[b * tgt_len + t] != pad) {
                tlen[b] = t + 1;
                break;
            }
        n_tgt += tlen[b];
    }
    qkv_ce_opts ce = {.ignore_index = pad, .reduction = QKV_REDUCE_SUM};
    if (n_tgt == 0) { /* no target counts: the plain forward's zero */
        qkv_tensor *logits = qkv_seq2seq_forward(ctx, m, src, src_valid, batch, src_len, dec_in,
                                                 tgt_len, NULL);
        logits = logits ? qkv_reshape(ctx, logits, 2, (int64_t[]){batch * tgt_len, m->tgt_vocab})
                        : NULL;
        return qkv_cross_entropy(ctx, logits, target, &ce);
    }
    qkv_rows sr, tr;
    int64_t *s_ids, *s_pos, *d_ids, *t_pos, *t_ids, *unused;
    if (!keep_rows(ctx, &sr, batch, src_len, slen, src, &s_ids, &s_pos) ||
        !keep_rows(ctx, &tr, batch, tgt_len, tlen, dec_in, &d_ids, &t_pos) ||
        !keep_rows(ctx, &(qkv_rows){0}, batch, tgt_len, tlen, target, &t_ids, &unused))
        return NULL;
    qkv_tf_opts mk = {.src_valid_lens = src_valid, .tgt_causal = 1};
    qkv_tensor *memory = qkv__transformer_encode_rows(
        ctx, &m->tf, embed_rows(ctx, m, m->src_embedding, &sr, s_ids, s_pos), &mk, &sr);
    qkv_tensor *y = qkv__transformer_decode_rows(
        ctx, &m->tf, embed_rows(ctx, m, m->tgt_embedding, &tr, d_ids, t_pos), memory, &mk, &tr,
        &sr);
    /* the output layer and the loss in one op: no (n, V) logits */
    return qkv_linear_cross_entropy(ctx, y, m->dense.weight, m->dense.bias, t_ids, &ce);
}

/* ---- decoding ---- */

/* The encoder's memory for `rows` copies of one source, and the cache. */
static qkv_status start(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src, int64_t src_len,
                        int64_t src_valid, int64_t rows, int64_t max_len, qkv_tf_cache *c,
                        qkv_seq2seq_attn *attn)
{
    const qkv_tf_config *cfg = &m->tf.cfg;
    int64_t *ids = qkv__alloc(ctx, (size_t)(rows * src_len) * sizeof(int64_t));
    int64_t *lens = qkv__alloc(ctx, (size_t)rows * sizeof(int64_t));
    if (!ids || !lens)
        return qkv_error_status();
    for (int64_t r = 0; r < rows; r++) {
        memcpy(ids + r * src_len, src, (size_t)src_len * sizeof(int64_t));
        lens[r] = src_valid;
    }
    qkv_tensor *enc_w[QKV_TF_MAX_LAYERS] = {0};
    qkv_tf_opts mk = {.src_valid_lens = lens, .enc_weights = attn ? enc_w : NULL};
    qkv_tensor *memory = qkv_transformer_encode(
        ctx, &m->tf, embed(ctx, m, m->src_embedding, ids, rows, src_len, 0), &mk);
    if (qkv_tf_cache_init(ctx, &m->tf, c, memory, max_len, &mk) != QKV_OK)
        return qkv_error_status();
    if (attn) {
        int64_t h = cfg->n_heads, per = h * src_len * src_len;
        for (int64_t l = 0; l < cfg->n_enc; l++)
            for (int64_t k = 0; k < per; k++)
                attn->enc[l * per + k] = qkv_get(enc_w[l], k);
        memset(attn->dec_self, 0, (size_t)(cfg->n_dec * h * max_len * max_len) * sizeof(float));
        memset(attn->dec_cross, 0, (size_t)(cfg->n_dec * h * max_len * src_len) * sizeof(float));
        c->self_weights = attn->dec_self;
        c->cross_weights = attn->dec_cross;
    }
    return QKV_OK;
}

/* The next tokens of `rows` hypotheses (rows) -> log-probabilities
 * (rows, V) in arena memory, or NULL. */
static const float *step(qkv_ctx *ctx, const qkv_seq2seq *m, qkv_tf_cache *c,
                         const int64_t *tokens, int64_t rows)
{
    qkv_tensor *y = embed(ctx, m, m->tgt_embedding, tokens, rows, 1, c->len);
    y = qkv_transformer_decode_step(ctx, &m->tf, c, y);
    qkv_tensor *lp = qkv_log_softmax(ctx, qkv_nn_linear_forward(ctx, &m->dense, y));
    return lp ? lp->data : NULL;
}

static int64_t greedy(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src, int64_t src_len,
                      int64_t src_valid, int64_t bos, int64_t eos, int64_t max_len, int64_t *out,
                      qkv_seq2seq_attn *attn)
{
    qkv_tf_cache c;
    if (start(ctx, m, src, src_len, src_valid, 1, max_len, &c, attn) != QKV_OK)
        return -1;
    int64_t tok = bos, n = 0;
    for (int64_t t = 0; t < max_len; t++) {
        const float *lp = step(ctx, m, &c, &tok, 1);
        if (!lp)
            return -1;
        /* torch.argmax: the first of equal maxima */
        int64_t best = 0;
        for (int64_t v = 1; v < m->tgt_vocab; v++)
            if (lp[v] > lp[best])
                best = v;
        if (best == eos)
            break;
        out[n++] = tok = best;
    }
    return n;
}

/* Teacher forcing through the cached decoder, step by step as greedy runs
 * it (so the weights are recorded the same way): bos, tgt[0], .., one step
 * per output token and one for the eos, at most max_len steps. Returns the
 * steps run. */
static int64_t record(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src, int64_t src_len,
                      int64_t src_valid, int64_t bos, const int64_t *tgt, int64_t n,
                      int64_t max_len, qkv_seq2seq_attn *attn)
{
    qkv_tf_cache c;
    if (start(ctx, m, src, src_len, src_valid, 1, max_len, &c, attn) != QKV_OK)
        return -1;
    int64_t steps = n + 1 < max_len ? n + 1 : max_len;
    for (int64_t t = 0; t < steps; t++) {
        int64_t tok = t ? tgt[t - 1] : bos;
        qkv_tensor *y = embed(ctx, m, m->tgt_embedding, &tok, 1, 1, c.len);
        if (!qkv_transformer_decode_step(ctx, &m->tf, &c, y))
            return -1;
    }
    return steps;
}

/* Beam search. Hypotheses are batch rows of one cache; each step keeps the
 * `beam` best continuations by summed log-probability; one that ends in eos
 * is set aside, scored by its sum / length^alpha. The search stops when
 * `beam` hypotheses have finished or max_len is reached (the live ones then
 * count as finished). */
static int64_t beam_search(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                           int64_t src_len, int64_t src_valid, int64_t bos, int64_t eos,
                           int64_t max_len, int64_t w, float alpha, int64_t *out)
{
    qkv_tf_cache c;
    if (start(ctx, m, src, src_len, src_valid, w, max_len, &c, NULL) != QKV_OK)
        return -1;
    int64_t v_n = m->tgt_vocab;
    int64_t *hyp = qkv__alloc(ctx, (size_t)(w * max_len) * sizeof(int64_t));
    int64_t *next_hyp = qkv__alloc(ctx, (size_t)(w * max_len) * sizeof(int64_t));
    int64_t *last = qkv__alloc(ctx, (size_t)w * sizeof(int64_t));
    int64_t *from = qkv__alloc(ctx, (size_t)w * sizeof(int64_t));
    int64_t *cand = qkv__alloc(ctx, (size_t)(2 * w) * sizeof(int64_t));
    double *cand_s = qkv__alloc(ctx, (size_t)(2 * w) * sizeof(double));
    double *score = qkv__alloc(ctx, (size_t)w * sizeof(double));
    double *next_score = qkv__alloc(ctx, (size_t)w * sizeof(double));
    if (!hyp || !next_hyp || !last || !from || !cand || !cand_s || !score || !next_score)
        return -1;
    for (int64_t b = 0; b < w; b++) {
        last[b] = bos;
        /* only one live hypothesis at first, or the beam would hold copies */
        score[b] = b == 0 ? 0.0 : -INFINITY;
    }
    double best = -INFINITY;
    int64_t best_len = 0, finished = 0;
    for (int64_t t = 0; t < max_len && finished < w; t++) {
        const float *lp = step(ctx, m, &c, last, w);
        if (!lp)
            return -1;
        /* the 2w best (beam, token) pairs, best first: enough for w that
         * do not end. A sorted list with insertion: one pass over w V. */
        int64_t nc = 0;
        for (int64_t k = 0; k < w * v_n; k++) {
            double s = score[k / v_n] + lp[k];
            if (!(s > -INFINITY) || (nc == 2 * w && s <= cand_s[nc - 1]))
                continue;
            int64_t j = nc < 2 * w ? nc++ : nc - 1;
            for (; j > 0 && cand_s[j - 1] < s; j--) {
                cand[j] = cand[j - 1];
                cand_s[j] = cand_s[j - 1];
            }
            cand[j] = k;
            cand_s[j] = s;
        }
        int64_t kept = 0;
        for (int64_t j = 0; j < nc && kept < w; j++) {
            int64_t b = cand[j] / v_n, tok = cand[j] % v_n;
            double s = score[b] + lp[cand[j]];
            if (tok == eos) {
                double norm = s / pow((double)(t + 1), alpha);
                if (norm > best) {
                    best = norm;
                    best_len = t;
                    memcpy(out, hyp + b * max_len, (size_t)t * sizeof(int64_t));
                }
                finished++;
                continue;
            }
            memcpy(next_hyp + kept * max_len, hyp + b * max_len, (size_t)t * sizeof(int64_t));
            next_hyp[kept * max_len + t] = tok;
            next_score[kept] = s;
            from[kept++] = b;
        }
        for (; kept < w; kept++) {
            next_score[kept] = -INFINITY;
            next_hyp[kept * max_len + t] = bos; /* a dead row still feeds a valid id */
            from[kept] = 0;
        }
        int64_t *th = hyp;
        hyp = next_hyp;
        next_hyp = th;
        for (int64_t b = 0; b < w; b++) {
            score[b] = next_score[b];
            last[b] = hyp[b * max_len + t];
        }
        if (qkv_tf_cache_reorder(ctx, &c, from) != QKV_OK)
            return -1;
    }
    if (finished < w)
        for (int64_t b = 0; b < w; b++) {
            if (!isfinite(score[b]))
                continue;
            double norm = score[b] / pow((double)c.len, alpha);
            if (norm > best) {
                best = norm;
                best_len = c.len;
                memcpy(out, hyp + b * max_len, (size_t)c.len * sizeof(int64_t));
            }
        }
    return best_len;
}

int64_t qkv_seq2seq_translate(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                              int64_t src_len, int64_t src_valid, int64_t bos, int64_t eos,
                              int64_t max_len, int beam, float alpha, int64_t *out,
                              qkv_seq2seq_attn *attn)
{
    if (!src || !out || src_len <= 0 || max_len <= 0 || src_valid < 0 || src_valid > src_len) {
        qkv_set_error(QKV_ERR_ARG,
                      "qkv_seq2seq_translate: bad source or lengths (src_len %lld, valid %lld, "
                      "max_len %lld)",
                      (long long)src_len, (long long)src_valid, (long long)max_len);
        return -1;
    }
    int was_training = qkv_set_training(ctx, 0);
    int was_grad = qkv_set_grad_enabled(ctx, 0);
    int64_t n = beam <= 1 ? greedy(ctx, m, src, src_len, src_valid, bos, eos, max_len, out, attn)
                          : beam_search(ctx, m, src, src_len, src_valid, bos, eos, max_len, beam,
                                        alpha, out);
    /* beam rows are reordered every step: the chosen hypothesis's weights
     * come from decoding it again alone */
    if (beam > 1 && attn && n >= 0 &&
        record(ctx, m, src, src_len, src_valid, bos, out, n, max_len, attn) < 0)
        n = -1;
    qkv_set_grad_enabled(ctx, was_grad);
    qkv_set_training(ctx, was_training);
    return n;
}

int64_t qkv_seq2seq_attention(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                              int64_t src_len, int64_t src_valid, int64_t bos,
                              const int64_t *tgt, int64_t n, int64_t max_len,
                              qkv_seq2seq_attn *attn)
{
    if (!src || (n > 0 && !tgt) || !attn || !attn->enc || !attn->dec_self || !attn->dec_cross ||
        src_len <= 0 || max_len <= 0 || n < 0 || n > max_len || src_valid < 0 ||
        src_valid > src_len) {
        qkv_set_error(QKV_ERR_ARG,
                      "qkv_seq2seq_attention: bad source, target or buffers (src_len %lld, "
                      "valid %lld, %lld target tokens, max_len %lld)",
                      (long long)src_len, (long long)src_valid, (long long)n, (long long)max_len);
        return -1;
    }
    int was_training = qkv_set_training(ctx, 0);
    int was_grad = qkv_set_grad_enabled(ctx, 0);
    int64_t steps = record(ctx, m, src, src_len, src_valid, bos, tgt, n, max_len, attn);
    qkv_set_grad_enabled(ctx, was_grad);
    qkv_set_training(ctx, was_training);
    return steps;
}
