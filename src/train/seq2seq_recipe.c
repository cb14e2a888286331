/*
 * seq2seq_recipe.c - the book's Transformer trained to translate English to
 * French on fra.txt through the library's trainer: what `qkv train
 * transformer` runs (d2l r0.17 "transformer": load_data_nmt, train_seq2seq,
 * predict_seq2seq, bleu; docs/transformer.md).
 *
 * The model's part: a batch layout and its fill (source ids and valid
 * lengths, the decoder's input - <bos> then the target shifted right - and
 * the target), a loss callback (the masked cross-entropy of a shard's rows,
 * r0.17's sum or v1.0.3's token mean), an evaluation callback (the d2l
 * loss, tokens/s and the held-out loss), and after training the book's four
 * sentences and the held-out corpus BLEU.
 */
#include "train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* The book's check: d2l's four sentences and their references. */
static const char *const book_en[4] = {"go .", "i lost .", "he's calm .", "i'm home ."};
static const char *const book_fr[4] = {"va !", "j'ai perdu .", "il est calme .",
                                       "je suis chez moi ."};

qkv_status qkv_seq2seq_recipe_preset(qkv_seq2seq_recipe *r, const char *name)
{
    if (!r || !name)
        return qkv_set_error(QKV_ERR_ARG, "seq2seq_recipe_preset: NULL argument");
    qkv_seq2seq_recipe keep = *r;
    /* d2l r0.17: 600 examples, num_steps 10, E 32, 2 blocks, 4 heads, FFN
     * 64, dropout 0.1, batch 64, Adam 0.005, 200 epochs, clip 1 */
    *r = (qkv_seq2seq_recipe){.examples = 600, .num_steps = 10, .hidden = 32, .blocks = 2,
                              .heads = 4, .ffn = 64, .dropout = 0.1, .batch_size = 64,
                              .epochs = 200, .lr = 0.005, .clip = 1.0, .beam = 1,
                              .save_every = 50};
    if (!strcmp(name, "v1")) {
        /* d2l v1.0.3: MTFraEng(num_train 512, num_val 128, num_steps 9) */
        r->examples = 639, r->held_out = 128, r->num_steps = 9, r->hidden = 256;
        r->dropout = 0.2, r->batch_size = 128, r->lr = 0.001, r->epochs = 30;
        r->split_tail = 1, r->loss_mean = 1;
    } else if (!strcmp(name, "large")) {
        r->examples = 40000, r->held_out = 2000, r->num_steps = 12, r->hidden = 128;
        r->ffn = 256, r->dropout = 0.1, r->batch_size = 128, r->lr = 0.001, r->epochs = 12;
        r->save_every = 1;
    } else if (strcmp(name, "book")) {
        return qkv_set_error(QKV_ERR_ARG, "transformer: unknown preset '%s' (book, v1, large)",
                             name);
    }
    r->data = keep.data, r->out_dir = keep.out_dir, r->seed = keep.seed;
    r->resume = keep.resume, r->threads = keep.threads, r->quiet = keep.quiet;
    r->comm = keep.comm;
    return QKV_OK;
}

/* ---- the model's part ---- */

typedef struct {
    const qkv_seq2seq_recipe *r;
    int quiet;                      /* the recipe's, or a rank other than 0 */
    int lead;                       /* rank 0 (or one process): it evaluates */
    qkv_nmt_data d;
    qkv_model *model;
    qkv_seq2seq *m;
    int64_t bos, eos, pad, t, B;
    int64_t n_train, n_val;
    int64_t *train_rows, *val_rows; /* rows of d */
    int64_t *eval_buf;              /* one batch for the held-out loss */
    double train_seconds, train_tokens, loss, val_loss;
} s2s_run;

/* A batch of B rows: src (B, t), valid (B), dec_in (B, t), target (B, t),
 * tokens (B): the target's valid length. */
typedef struct {
    int64_t *src, *valid, *dec_in, *target, *tokens;
} s2s_batch;

static s2s_batch batch_at(const s2s_run *s, const void *mem)
{
    int64_t *p = (int64_t *)(void *)mem, B = s->B, t = s->t;
    return (s2s_batch){p, p + B * t, p + B * t + B, p + 2 * B * t + B, p + 3 * B * t + B};
}

static size_t batch_bytes(const s2s_run *s)
{
    return (size_t)(s->B * (3 * s->t + 2)) * sizeof(int64_t);
}

/* rows[0..n) of the data into a batch, with teacher forcing's decoder input */
static void gather(const s2s_run *s, const int64_t *rows, int64_t n, s2s_batch *b)
{
    int64_t t = s->t;
    for (int64_t i = 0; i < n; i++) {
        int64_t r = rows[i];
        memcpy(b->src + i * t, s->d.src + r * t, (size_t)t * sizeof(int64_t));
        memcpy(b->target + i * t, s->d.tgt + r * t, (size_t)t * sizeof(int64_t));
        b->valid[i] = s->d.src_valid[r];
        b->tokens[i] = s->d.tgt_valid[r];
        b->dec_in[i * t] = s->bos;
        memcpy(b->dec_in + i * t + 1, s->d.tgt + r * t, (size_t)(t - 1) * sizeof(int64_t));
    }
}

static qkv_status fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *mem)
{
    const s2s_run *s = user;
    int64_t rows[4096];
    s2s_batch b = batch_at(s, mem);
    for (int64_t at = 0; at < n; at += 4096) {
        int64_t k = n - at < 4096 ? n - at : 4096;
        for (int64_t i = 0; i < k; i++)
            rows[i] = s->train_rows[idx[at + i]];
        s2s_batch part = {b.src + at * s->t, b.valid + at, b.dec_in + at * s->t,
                          b.target + at * s->t, b.tokens + at};
        gather(s, rows, k, &part);
    }
    (void)rng;
    return QKV_OK;
}

/* The target tokens of rows [0, n) of a batch: the trainer sums them over
 * ranks (weight_global), v1.0.3's loss divides by the sum. */
static double batch_tokens(const void *batch, int64_t n, void *user)
{
    const s2s_run *s = user;
    s2s_batch b = batch_at(s, batch);
    double tokens = 0.0;
    for (int64_t i = 0; i < n; i++)
        tokens += (double)b.tokens[i];
    return tokens;
}

/* Shard rows [lo, hi): teacher forcing and the masked cross-entropy.
 * r0.17's MaskedSoftmaxCELoss: each sequence's CE summed over its tokens /
 * num_steps, summed over the batch (l.sum().backward()); v1.0.3: the mean
 * over the global batch's target tokens. stats[0] sums the sequences'
 * losses as r0.17 prints them, stats[1] the target tokens. */
static qkv_tensor *loss(qkv_ctx *ctx, const qkv_train_batch *tb, void *user)
{
    const s2s_run *s = user;
    s2s_batch b = batch_at(s, tb->batch);
    int64_t t = s->t, lo = tb->lo, n = tb->hi - tb->lo;
    double tokens = 0.0, all = tb->weight_global;
    for (int64_t i = lo; i < tb->hi; i++)
        tokens += (double)b.tokens[i];
    float scale = s->r->loss_mean ? 1.0f / (float)(all > 0 ? all : 1) : 1.0f / (float)t;
    qkv_tensor *l = qkv_seq2seq_loss(ctx, s->m, b.src + lo * t, b.valid + lo, n, t,
                                     b.dec_in + lo * t, b.target + lo * t, t, s->pad);
    if (!l)
        return NULL;
    tb->stats[0] += (double)l->data[0] / (double)t;
    tb->stats[1] += tokens;
    return qkv_scale(ctx, l, scale);
}

/* The d2l loss of rows[0..n) in eval mode (the held-out pairs). */
static double eval_loss(qkv_ctx *ctx, s2s_run *s, const int64_t *rows, int64_t n)
{
    int was_t = qkv_set_training(ctx, 0), was_g = qkv_set_grad_enabled(ctx, 0);
    int64_t t = s->t;
    s2s_batch b = batch_at(s, s->eval_buf);
    double sum = 0.0, tokens = 0.0;
    for (int64_t at = 0; at < n; at += s->B) {
        int64_t k = n - at < s->B ? n - at : s->B;
        gather(s, rows + at, k, &b);
        for (int64_t i = 0; i < k; i++)
            tokens += (double)b.tokens[i];
        qkv_tensor *l = qkv_seq2seq_loss(ctx, s->m, b.src, b.valid, k, t, b.dec_in, b.target, t,
                                         s->pad);
        sum += l ? (double)l->data[0] / (double)t : NAN;
        qkv_ctx_reset(ctx);
    }
    qkv_set_training(ctx, was_t);
    qkv_set_grad_enabled(ctx, was_g);
    return sum / fmax(tokens, 1.0);
}

static qkv_status evaluate(qkv_trainer *t, qkv_train_epoch *e, void *user)
{
    s2s_run *s = user;
    s->train_seconds += e->seconds;
    s->train_tokens += e->stats[1];
    s->loss = e->stats[0] / fmax(e->stats[1], 1.0);
    qkv_status st = qkv_train_epoch_put(e, "loss", s->loss); /* as d2l prints it */
    if (!st)
        st = qkv_train_epoch_put(e, "tokens_per_s", e->seconds > 0 ? e->stats[1] / e->seconds
                                                                 : NAN);
    if (!st && s->n_val > 0 && s->lead) { /* only rank 0 prints and logs it */
        s->val_loss = eval_loss(qkv_trainer_eval_ctx(t), s, s->val_rows, s->n_val);
        st = qkv_train_epoch_put(e, "val_loss", s->val_loss);
    }
    return st;
}

static qkv_status save_model(qkv_trainer *t, const char *dir, void *user)
{
    s2s_run *s = user;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    (void)t;
    return qkv_model_save(s->model, path);
}

/* ids until eos or pad as space-separated tokens */
static void ids_text(char *buf, size_t n, const qkv_vocab *v, const int64_t *ids, int64_t len,
                     int64_t eos, int64_t pad)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int64_t i = 0; i < len && ids[i] != eos && ids[i] != pad; i++) {
        int k = snprintf(buf + used, n - used, "%s%s", used ? " " : "", qkv_vocab_token(v, ids[i]));
        if (k < 0 || (size_t)k >= n - used)
            break;
        used += (size_t)k;
    }
}

/* Greedy (or beam) translation of a source row of ids. */
static void translate_ids(qkv_ctx *ctx, const s2s_run *s, const int64_t *src, int64_t valid,
                          char *out, size_t n)
{
    int64_t ids[512];
    int64_t max_len = s->t < 512 ? s->t : 512;
    int64_t k = qkv_seq2seq_translate(ctx, s->m, src, s->t, valid, s->bos, s->eos, max_len,
                                      (int)s->r->beam, 0.75f, ids, NULL);
    qkv_ctx_reset(ctx);
    if (k < 0)
        snprintf(out, n, "(error: %s)", qkv_error());
    else
        ids_text(out, n, s->d.tgt_vocab, ids, k, s->eos, s->pad);
}

/* After training: the book's four sentences, and the held-out corpus BLEU. */
static qkv_status final_checks(qkv_ctx *ctx, s2s_run *s, qkv_seq2seq_result *res)
{
    const qkv_seq2seq_recipe *r = s->r;
    double sum = 0.0;
    for (int i = 0; i < 4 && s->t <= 512; i++) {
        int64_t ids[512];
        int64_t valid = qkv_nmt_encode(s->d.src_vocab, book_en[i], s->t, ids);
        char fr[1024];
        translate_ids(ctx, s, ids, valid, fr, sizeof fr);
        res->book_bleu[i] = qkv_bleu(fr, book_fr[i], 2);
        sum += res->book_bleu[i];
        if (!s->quiet)
            printf("%s => %s, bleu %.3f\n", book_en[i], fr, res->book_bleu[i]);
    }
    res->book_bleu_mean = sum / 4;
    res->held_out_bleu = NAN;
    if (s->n_val == 0)
        return QKV_OK;
    double t0 = qkv_now();
    char **preds = qkv__calloc((size_t)s->n_val, sizeof *preds);
    char **refs = qkv__calloc((size_t)s->n_val, sizeof *refs);
    qkv_status st = preds && refs ? QKV_OK : qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; !st && i < s->n_val; i++) {
        int64_t row = s->val_rows[i];
        char fr[1024];
        translate_ids(ctx, s, s->d.src + row * s->t, s->d.src_valid[row], fr, sizeof fr);
        preds[i] = qkv__strdup(fr);
        ids_text(fr, sizeof fr, s->d.tgt_vocab, s->d.tgt + row * s->t, s->t, s->eos, s->pad);
        refs[i] = qkv__strdup(fr);
        if (!preds[i] || !refs[i])
            st = qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    }
    if (!st) {
        res->held_out_bleu = qkv_corpus_bleu(s->n_val, (const char *const *)preds,
                                             (const char *const *)refs);
        if (!s->quiet) {
            printf("held-out corpus BLEU (%lld pairs, %s): %.2f (%.1f s)\n", (long long)s->n_val,
                   r->beam > 1 ? "beam" : "greedy", 100.0 * res->held_out_bleu, qkv_now() - t0);
            for (int64_t i = 0; i < 5 && i < s->n_val; i++)
                printf("  %s  |  reference: %s\n", preds[i], refs[i]);
        }
    }
    for (int64_t i = 0; i < s->n_val; i++) {
        if (preds)
            qkv__free(preds[i]);
        if (refs)
            qkv__free(refs[i]);
    }
    qkv__free(preds);
    qkv__free(refs);
    return st;
}

/* The held-out rows: a fixed random choice (fra.txt is sorted by length,
 * so its last lines are not like the rest), or the last ones as v1.0.3's
 * MTFraEng. The loader shuffles the training rows every epoch. */
static qkv_status split(s2s_run *s)
{
    int64_t n = s->d.n;
    s->n_val = s->r->held_out < n ? s->r->held_out : 0;
    s->n_train = n - s->n_val;
    int64_t *order = qkv__malloc((size_t)n * sizeof *order);
    if (!order)
        return qkv_error_status();
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    if (s->n_val > 0 && !s->r->split_tail) {
        qkv_rng rng;
        qkv_rng_seed(&rng, 1234);
        qkv_rng_shuffle(&rng, order, n);
    }
    s->train_rows = order + (s->r->split_tail ? 0 : s->n_val);
    s->val_rows = order + (s->r->split_tail ? s->n_train : 0);
    s->eval_buf = qkv__malloc(batch_bytes(s));
    if (!s->eval_buf) {
        qkv__free(order);
        s->train_rows = s->val_rows = NULL;
        return qkv_error_status();
    }
    return QKV_OK;
}

qkv_status qkv_seq2seq_train(const qkv_seq2seq_recipe *r, qkv_seq2seq_result *res)
{
    if (!r || r->epochs < 0 || r->batch_size < 1 || r->num_steps < 2)
        return qkv_set_error(QKV_ERR_ARG, "seq2seq_train: %s",
                             r ? "need epochs >= 0, batch_size >= 1, num_steps >= 2"
                               : "the recipe is NULL");
    s2s_run s = {.r = r, .t = r->num_steps, .loss = NAN, .val_loss = NAN,
                 .quiet = r->quiet || qkv_comm_rank(r->comm) != 0,
                 .lead = qkv_comm_rank(r->comm) == 0};
    qkv_seq2seq_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    qkv_trainer *t = NULL;
    double t0 = qkv_now();
    qkv_status st = qkv_nmt_load(&s.d, r->data, r->examples, r->num_steps);
    if (st)
        return st;
    s.bos = qkv_vocab_id(s.d.tgt_vocab, "<bos>");
    s.eos = qkv_vocab_id(s.d.tgt_vocab, "<eos>");
    s.pad = qkv_vocab_id(s.d.tgt_vocab, "<pad>");
    s.B = r->batch_size;
    if ((st = split(&s)) != QKV_OK)
        goto done;
    if (!s.quiet)
        printf("data: %lld pairs (%lld training, %lld held out), num_steps %lld, vocab %lld en, "
               "%lld fr (%.1f s)\n",
               (long long)s.d.n, (long long)s.n_train, (long long)s.n_val, (long long)s.t,
               (long long)qkv_vocab_size(s.d.src_vocab), (long long)qkv_vocab_size(s.d.tgt_vocab),
               qkv_now() - t0);
    qkv_tf_config cfg = {.layout = QKV_TF_D2L, .d_model = r->hidden, .n_heads = r->heads,
                         .d_ffn = r->ffn, .n_enc = r->blocks, .n_dec = r->blocks,
                         .dropout = (float)r->dropout, .norm_first = r->norm_first};
    if (!(s.model = qkv_model_new_seq2seq(&cfg, s.d.src_vocab, s.d.tgt_vocab, s.t))) {
        st = qkv_error_status();
        goto done;
    }
    s.m = qkv_model_seq2seq(s.model);
    qkv_rng init;
    qkv_rng_seed(&init, r->seed);
    qkv_seq2seq_reset(s.m, &init);
    char cfg_json[512];
    snprintf(cfg_json, sizeof cfg_json,
             "{\"examples\": %lld, \"held_out\": %lld, \"lr\": %g, \"batch\": %lld, "
             "\"epochs\": %lld, \"seed\": %llu, \"loss\": \"%s\"}",
             (long long)r->examples, (long long)s.n_val, r->lr, (long long)s.B,
             (long long)r->epochs, (unsigned long long)r->seed, r->loss_mean ? "mean" : "sum");
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = qkv_model_params(s.model), .loss = loss, .user = &s, .epochs = r->epochs,
        .data = {.n_examples = s.n_train, .batch_size = s.B, .shuffle = 1,
                 .seed = r->seed ^ 0x9e3779b97f4a7c15ull, .batch_bytes = batch_bytes(&s),
                 .fill = fill, .user = &s},
        .optim = {.kind = QKV_ADAM, .lr = (float)r->lr}, .clip = (float)r->clip,
        .threads = r->threads, .seed = r->seed + 1, .comm = r->comm,
        .batch_weight = r->loss_mean ? batch_tokens : NULL, .evaluate = evaluate,
        .save_model = save_model, .out_dir = r->out_dir, .save_every = r->save_every,
        .config_json = cfg_json, .resume = r->resume, .label = "epoch",
        .print_every = r->quiet ? -1 : 10, .title = "Transformer, English to French"});
    if (!t) {
        st = qkv_error_status();
        goto done;
    }
    if (!s.quiet) {
        printf("model: %lld parameters, d_model %lld, %lld blocks, %lld heads, ffn %lld, "
               "dropout %g; Adam lr %g, batch %lld, %lld epochs, clip %g, %d threads%s\n",
               (long long)qkv_params_numel(qkv_model_params(s.model)), (long long)r->hidden,
               (long long)r->blocks, (long long)r->heads, (long long)r->ffn, r->dropout, r->lr,
               (long long)s.B, (long long)r->epochs, r->clip,
               qkv_shards_count(qkv_trainer_shards(t)), qkv__ranks_note(r->comm));
        if (r->resume)
            printf("resumed at epoch %lld\n", (long long)qkv_trainer_epoch(t));
        fflush(stdout);
    }
    int64_t first = qkv_trainer_epoch(t);
    if ((st = qkv_trainer_run(t)) != QKV_OK)
        goto done;
    if (!s.quiet)
        qkv__print_comm_summary(t);
    if (r->epochs > first && !s.quiet)
        printf("trained %lld epochs in %.1f s (%.0f tokens/s)%s%s\n",
               (long long)(r->epochs - first), s.train_seconds,
               s.train_tokens / fmax(s.train_seconds, 1e-9), r->out_dir ? "; model: " : "",
               r->out_dir ? r->out_dir : "");
    res->loss = s.loss, res->held_out_loss = s.val_loss;
    /* the translations after training: rank 0's (the others are done) */
    if (s.lead && (st = final_checks(qkv_trainer_eval_ctx(t), &s, res)) != QKV_OK)
        goto done;
    if (r->out_dir && s.lead) { /* the final scores after the epochs' lines */
        char path[4200];
        snprintf(path, sizeof path, "%s/metrics.jsonl", r->out_dir);
        qkv_trainer_free(t);
        t = NULL;
        qkv_metrics *mf = qkv_metrics_append(path);
        const char *names[] = {"book_bleu_mean", "held_out_bleu"};
        double values[] = {res->book_bleu_mean, res->held_out_bleu};
        st = mf ? qkv_metrics_write(mf, r->epochs, s.n_val > 0 ? 2 : 1, names, values)
                : qkv_error_status();
        qkv_status cs = qkv_metrics_close(mf);
        st = st ? st : cs;
    }
done:
    qkv_trainer_free(t);
    qkv_model_free(s.model);
    qkv__free(s.eval_buf);
    qkv__free(s.n_val > 0 && !r->split_tail ? s.val_rows : s.train_rows);
    qkv_nmt_free(&s.d);
    return st;
}
