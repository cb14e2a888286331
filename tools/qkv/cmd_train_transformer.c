/*
 * cmd_train_transformer.c - `qkv train transformer`: the book's Transformer
 * trained for English-to-French translation (d2l r0.17 "transformer", its
 * train_seq2seq and predict_seq2seq). Loads fra.txt as load_data_nmt,
 * trains with Adam, the masked softmax cross-entropy and gradient clipping,
 * prints loss and tokens/s per epoch, writes metrics.jsonl, a resumable
 * checkpoint and model.safetensors (the weights under d2l's names, the
 * configuration and both vocabularies in its metadata, all that `qkv
 * translate` needs), then translates the book's four sentences with their
 * BLEU.
 */
#include "args.h"
#include "cli_util.h"
#include "commands.h"
#include "qkv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

typedef struct {
    const char *preset, *data, *out_dir, *split, *loss;
    int64_t examples, num_steps, hidden, blocks, heads, ffn, batch, epochs, held_out, beam;
    int64_t save_every;
    double dropout, lr, clip;
    uint64_t seed;
    int resume, norm_first;
} options;

/* The book's check: d2l's four sentences and their references. */
static const char *const book_en[] = {"go .", "i lost .", "he's calm .", "i'm home ."};
static const char *const book_fr[] = {"va !", "j'ai perdu .", "il est calme .",
                                      "je suis chez moi ."};

/* The tokens of a vocabulary, one per line (tokens never hold spaces or
 * newlines: they come from splitting lines on spaces). malloc'd. */
static char *vocab_lines(const qkv_vocab *v)
{
    size_t n = 1;
    for (int64_t i = 0; i < qkv_vocab_size(v); i++)
        n += strlen(qkv_vocab_token(v, i)) + 1;
    char *s = malloc(n), *p = s;
    if (!s)
        return NULL;
    for (int64_t i = 0; i < qkv_vocab_size(v); i++)
        p += sprintf(p, "%s%s", i ? "\n" : "", qkv_vocab_token(v, i));
    *p = '\0';
    return s;
}

static void config_json(char *buf, size_t n, const options *o, const qkv_seq2seq *m)
{
    const qkv_tf_config *c = &m->tf.cfg;
    snprintf(buf, n,
             "{\"model\": \"d2l-transformer\", \"d_model\": %lld, \"n_heads\": %lld, "
             "\"d_ffn\": %lld, \"n_enc\": %lld, \"n_dec\": %lld, \"dropout\": %g, "
             "\"norm_first\": %d, \"num_steps\": %lld, \"src_vocab\": %lld, \"tgt_vocab\": %lld, "
             "\"examples\": %lld, \"preset\": \"%s\", \"lr\": %g, \"batch\": %lld}",
             (long long)c->d_model, (long long)c->n_heads, (long long)c->d_ffn,
             (long long)c->n_enc, (long long)c->n_dec, (double)c->dropout, c->norm_first,
             (long long)o->num_steps, (long long)m->src_vocab, (long long)m->tgt_vocab,
             (long long)o->examples, o->preset, o->lr, (long long)o->batch);
}

/* model.safetensors: every parameter, and in the metadata the
 * configuration and the two vocabularies. */
static qkv_status save_model(const char *path, qkv_params *ps, const char *config,
                             const qkv_nmt_data *d)
{
    qkv_st_writer *w = qkv_st_writer_new();
    char *src = vocab_lines(d->src_vocab), *tgt = vocab_lines(d->tgt_vocab);
    qkv_status s = w && src && tgt ? QKV_OK : qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; s == QKV_OK && i < qkv_params_count(ps); i++) {
        qkv_tensor *p = qkv_params_at(ps, i);
        s = qkv_st_add_tensor(w, p->name, p);
    }
    if (s == QKV_OK)
        s = qkv_st_set_meta(w, "config", config);
    if (s == QKV_OK)
        s = qkv_st_set_meta(w, "src_vocab", src);
    if (s == QKV_OK)
        s = qkv_st_set_meta(w, "tgt_vocab", tgt);
    if (s == QKV_OK)
        s = qkv_st_write(w, path);
    free(src);
    free(tgt);
    qkv_st_writer_free(w);
    return s;
}

/* ids (until eos or padding) as space-separated tokens into buf. */
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

typedef struct {
    int64_t bos, eos, pad;
} specials;

/* Greedy (or beam) translation of a source row of the data. */
static void translate_ids(qkv_ctx *ctx, const qkv_seq2seq *m, const qkv_nmt_data *d,
                          const options *o, const specials *sp, const int64_t *src, int64_t valid,
                          char *out, size_t n)
{
    int64_t ids[256];
    int64_t max_len = o->num_steps < 256 ? o->num_steps : 256;
    int64_t k = qkv_seq2seq_translate(ctx, m, src, o->num_steps, valid, sp->bos, sp->eos, max_len,
                                      (int)o->beam, 0.75f, ids, NULL);
    qkv_ctx_reset(ctx);
    if (k < 0) {
        snprintf(out, n, "(error: %s)", qkv_error());
        return;
    }
    ids_text(out, n, d->tgt_vocab, ids, k, sp->eos, sp->pad);
}

/* Rows rows[0..b) of d into a batch: src (b, t), valid (b), dec_in (b, t) =
 * <bos> then the target shifted right (teacher forcing), target (b, t).
 * Returns the number of target tokens that count. */
static double gather_batch(const qkv_nmt_data *d, const specials *sp, const int64_t *rows,
                           int64_t b, int64_t t, int64_t *src, int64_t *valid, int64_t *dec_in,
                           int64_t *target)
{
    double tokens = 0.0;
    for (int64_t i = 0; i < b; i++) {
        int64_t r = rows[i];
        memcpy(src + i * t, d->src + r * t, (size_t)t * sizeof(int64_t));
        memcpy(target + i * t, d->tgt + r * t, (size_t)t * sizeof(int64_t));
        valid[i] = d->src_valid[r];
        dec_in[i * t] = sp->bos;
        memcpy(dec_in + i * t + 1, d->tgt + r * t, (size_t)(t - 1) * sizeof(int64_t));
        tokens += (double)d->tgt_valid[r];
    }
    return tokens;
}

/* One batch as the shards see it. */
typedef struct {
    const qkv_seq2seq *m;
    int64_t b, t;
    const int64_t *src, *valid, *dec_in, *target;
    int64_t pad;
    float scale;
    double *loss; /* one per shard: its loss / scale */
} batch;

/* Shard i's rows of the batch: forward with teacher forcing, the loss,
 * backward. r0.17's MaskedSoftmaxCELoss: the masked CE averaged over
 * num_steps per sequence, summed over the batch (l.sum().backward());
 * v1.0.3's Seq2Seq.loss: the mean over the batch's target tokens (scale
 * holds the whole batch's count, so the shards' gradients add up to it). */
static qkv_status train_shard(qkv_ctx *ctx, int i, int n, void *arg)
{
    batch *bt = arg;
    int64_t lo, hi, t = bt->t;
    qkv_shard_rows(bt->b, i, n, &lo, &hi);
    bt->loss[i] = 0.0;
    if (hi == lo)
        return QKV_OK;
    qkv_tensor *loss = qkv_scale(ctx,
                                 qkv_seq2seq_loss(ctx, bt->m, bt->src + lo * t, bt->valid + lo,
                                                  hi - lo, t, bt->dec_in + lo * t,
                                                  bt->target + lo * t, t, bt->pad),
                                 bt->scale);
    if (!loss)
        return qkv_error_status();
    bt->loss[i] = (double)loss->data[0] / (double)bt->scale;
    return qkv_backward(ctx, loss);
}

/* One epoch over rows order[0..n) in batches, each cut into one shard per
 * thread (qkv_shards). Returns the epoch's loss as d2l prints it (sum of
 * the per-sequence losses over the tokens). */
static int train_epoch(qkv_shards *sh, const qkv_seq2seq *m, qkv_params *ps, qkv_optim *opt,
                       const qkv_nmt_data *d, const options *o, const specials *sp,
                       const int64_t *order, int64_t n, int64_t *buf, double *shard_loss,
                       double *loss_out, double *tokens_out, qkv_progress *bar, int64_t epoch)
{
    int64_t t = o->num_steps;
    int64_t *src = buf, *valid = src + o->batch * t, *dec_in = valid + o->batch,
            *target = dec_in + o->batch * t;
    double loss_sum = 0.0, tokens = 0.0;
    for (int64_t start = 0; start < n; start += o->batch) {
        int64_t b = n - start < o->batch ? n - start : o->batch;
        tokens += gather_batch(d, sp, order + start, b, t, src, valid, dec_in, target);
        int64_t batch_tokens = 0;
        for (int64_t i = 0; i < b; i++)
            batch_tokens += d->tgt_valid[order[start + i]];
        batch bt = {.m = m, .b = b, .t = t, .src = src, .valid = valid, .dec_in = dec_in,
                    .target = target, .pad = sp->pad, .loss = shard_loss,
                    .scale = !strcmp(o->loss, "mean")
                                 ? 1.0f / (float)(batch_tokens > 0 ? batch_tokens : 1)
                                 : 1.0f / (float)t};
        if (qkv_shards_run(sh, train_shard, &bt) != QKV_OK)
            return 1;
        /* printed as d2l r0.17 prints it, whichever loss is trained */
        for (int i = 0; i < qkv_shards_count(sh); i++)
            loss_sum += shard_loss[i] / (double)t;
        if (o->clip > 0)
            qkv_clip_grad_norm(ps, (float)o->clip);
        if (qkv_optim_step(opt) != QKV_OK)
            return 1;
        qkv_params_zero_grad(ps);
        char extra[64];
        snprintf(extra, sizeof extra, "epoch %lld loss %.4f", (long long)epoch,
                 loss_sum / fmax(tokens, 1.0));
        qkv_progress_update(bar, bar->done + b, extra);
    }
    *loss_out = loss_sum / fmax(tokens, 1.0);
    *tokens_out = tokens;
    return 0;
}

/* Validation loss (d2l's definition) over rows order[0..n), eval mode. */
static double eval_loss(qkv_ctx *ctx, const qkv_seq2seq *m, const qkv_nmt_data *d,
                        const options *o, const specials *sp, const int64_t *order, int64_t n,
                        int64_t *buf)
{
    int was_t = qkv_set_training(ctx, 0), was_g = qkv_set_grad_enabled(ctx, 0);
    int64_t t = o->num_steps;
    int64_t *src = buf, *valid = src + o->batch * t, *dec_in = valid + o->batch,
            *target = dec_in + o->batch * t;
    double sum = 0.0, tokens = 0.0;
    for (int64_t start = 0; start < n; start += o->batch) {
        int64_t b = n - start < o->batch ? n - start : o->batch;
        tokens += gather_batch(d, sp, order + start, b, t, src, valid, dec_in, target);
        qkv_tensor *loss = qkv_seq2seq_loss(ctx, m, src, valid, b, t, dec_in, target, t, sp->pad);
        sum += loss ? (double)loss->data[0] / (double)t : NAN;
        qkv_ctx_reset(ctx);
    }
    qkv_set_training(ctx, was_t);
    qkv_set_grad_enabled(ctx, was_g);
    return sum / fmax(tokens, 1.0);
}

static int run(options *o)
{
    int rc = 1;
    qkv_nmt_data d = {0};
    qkv_params *ps = NULL;
    qkv_optim *opt = NULL;
    qkv_ctx *ctx = NULL;
    qkv_shards *sh = NULL;
    double *shard_loss = NULL;
    qkv_metrics *metrics = NULL;
    int64_t *order = NULL, *buf = NULL;
    char **preds = NULL, **refs = NULL;
    char path[4200], config[1024];

    double t0 = cli_now();
    if (qkv_nmt_load(&d, o->data, o->examples, o->num_steps) != QKV_OK)
        goto fail;
    specials sp = {qkv_vocab_id(d.tgt_vocab, "<bos>"), qkv_vocab_id(d.tgt_vocab, "<eos>"),
                   qkv_vocab_id(d.tgt_vocab, "<pad>")};
    int64_t n_val = o->held_out < d.n ? o->held_out : 0, n_train = d.n - n_val;
    printf("data: %lld pairs (%lld training, %lld held out), num_steps %lld, vocab %lld en, "
           "%lld fr (%.1f s)\n",
           (long long)d.n, (long long)n_train, (long long)n_val, (long long)o->num_steps,
           (long long)qkv_vocab_size(d.src_vocab), (long long)qkv_vocab_size(d.tgt_vocab),
           cli_now() - t0);

    qkv_tf_config cfg = {.layout = QKV_TF_D2L, .d_model = o->hidden, .n_heads = o->heads,
                         .d_ffn = o->ffn, .n_enc = o->blocks, .n_dec = o->blocks,
                         .dropout = (float)o->dropout, .norm_first = o->norm_first};
    qkv_seq2seq m;
    ps = qkv_params_new();
    if (!ps || qkv_seq2seq_init(&m, ps, &cfg, qkv_vocab_size(d.src_vocab),
                                qkv_vocab_size(d.tgt_vocab)) != QKV_OK ||
        qkv_params_alloc(ps) != QKV_OK)
        goto fail;
    qkv_rng rng, data_rng;
    qkv_rng_seed(&rng, o->seed);
    qkv_rng_seed(&data_rng, o->seed ^ 0x9e3779b97f4a7c15ull);
    qkv_seq2seq_reset(&m, &rng);
    opt = qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_ADAM, .lr = (float)o->lr});
    ctx = qkv_ctx_new(); /* evaluation and translation */
    sh = qkv_shards_new(ps, 0); /* training: one shard of each batch per thread */
    if (!opt || !ctx || !sh)
        goto fail;
    shard_loss = calloc((size_t)qkv_shards_count(sh), sizeof *shard_loss);
    if (!shard_loss) {
        qkv_set_error(QKV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* dropout: each epoch seeds the shards' generators from this one, so
     * that a checkpoint at an epoch's end holds the whole state */
    qkv_rng drop_rng;
    qkv_rng_seed(&drop_rng, o->seed + 1);
    config_json(config, sizeof config, o, &m);

    order = malloc((size_t)(2 * d.n) * sizeof *order);
    buf = malloc((size_t)(o->batch * (3 * o->num_steps + 1)) * sizeof *buf);
    if (!order || !buf) {
        qkv_set_error(QKV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* the held-out rows: a fixed random choice, not the corpus' last lines
     * (fra.txt is sorted by length) */
    for (int64_t i = 0; i < d.n; i++)
        order[i] = i;
    if (n_val > 0 && !strcmp(o->split, "random")) {
        qkv_rng split;
        qkv_rng_seed(&split, 1234);
        qkv_rng_shuffle(&split, order, d.n);
    }
    /* random: the first n_val of the shuffled rows; tail: the last rows,
     * as v1.0.3's MTFraEng (train on the first num_train) */
    int64_t *train_rows = !strcmp(o->split, "tail") ? order : order + n_val;
    int64_t *val_rows = !strcmp(o->split, "tail") ? order + n_train : order;
    /* each epoch shuffles this fixed order, so that an epoch's batches
     * depend on the data RNG alone and --resume repeats them */
    int64_t *base = order + d.n;
    memcpy(base, train_rows, (size_t)n_train * sizeof *base);

    if (cli_make_dirs(o->out_dir)) {
        qkv_set_error(QKV_ERR_IO, "cannot create %s: %s", o->out_dir, strerror(errno));
        goto fail;
    }
    char ckpt[4200];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", o->out_dir);
    int64_t first_epoch = 0;
    if (o->resume) {
        qkv_checkpoint_info info;
        if (qkv_checkpoint_load(ckpt, ps, opt, &info) != QKV_OK)
            goto fail;
        first_epoch = info.epoch;
        drop_rng = info.rng[0];
        data_rng = info.rng[1];
        printf("resumed from %s at epoch %lld\n", ckpt, (long long)first_epoch);
    }
    snprintf(path, sizeof path, "%s/metrics.jsonl", o->out_dir);
    if (!(metrics = qkv_metrics_open(path)))
        goto fail;

    printf("model: %lld parameters, d_model %lld, %lld blocks, %lld heads, ffn %lld, dropout %g; "
           "Adam lr %g, batch %lld, %lld epochs, clip %g, %d threads\n",
           (long long)qkv_params_numel(ps), (long long)o->hidden, (long long)o->blocks,
           (long long)o->heads, (long long)o->ffn, o->dropout, o->lr, (long long)o->batch,
           (long long)o->epochs, o->clip, qkv_threads());
    qkv_progress bar;
    qkv_progress_start(&bar, (o->epochs - first_epoch) * n_train, "training");
    double train_time = 0.0, total_tokens = 0.0;
    for (int64_t e = first_epoch; e < o->epochs; e++) {
        memcpy(train_rows, base, (size_t)n_train * sizeof *base);
        qkv_rng_shuffle(&data_rng, train_rows, n_train);
        for (int i = 0; i < qkv_shards_count(sh); i++)
            qkv_rng_seed(qkv_ctx_rng(qkv_shards_ctx(sh, i)), qkv_rng_u64(&drop_rng));
        double loss, tokens, te = cli_now();
        if (train_epoch(sh, &m, ps, opt, &d, o, &sp, train_rows, n_train, buf, shard_loss, &loss,
                        &tokens, &bar, e + 1))
            goto fail;
        te = cli_now() - te;
        train_time += te;
        total_tokens += tokens;
        double val = n_val > 0 ? eval_loss(ctx, &m, &d, o, &sp, val_rows, n_val, buf) : NAN;
        const char *names[] = {"loss", "tokens_per_s", "seconds", "val_loss"};
        double values[] = {loss, tokens / te, te, val};
        if (qkv_metrics_write(metrics, e + 1, n_val > 0 ? 4 : 3, names, values) != QKV_OK)
            goto fail;
        if (!bar.enabled && ((e + 1) % 10 == 0 || e + 1 == o->epochs || e == first_epoch)) {
            printf("epoch %lld, loss %.4f, %.0f tokens/s", (long long)e + 1, loss, tokens / te);
            if (n_val > 0)
                printf(", held-out loss %.4f", val);
            printf("\n");
            fflush(stdout);
        }
        if ((o->save_every > 0 && (e + 1) % o->save_every == 0) || e + 1 == o->epochs) {
            qkv_checkpoint_info info = {.step = qkv_optim_steps(opt), .epoch = e + 1,
                                        .config = config};
            info.rng[0] = drop_rng;
            info.rng[1] = data_rng;
            if (qkv_checkpoint_save(ckpt, ps, opt, &info) != QKV_OK)
                goto fail;
        }
    }
    qkv_progress_finish(&bar, NULL);
    snprintf(path, sizeof path, "%s/model.safetensors", o->out_dir);
    if (save_model(path, ps, config, &d) != QKV_OK)
        goto fail;
    if (o->epochs > first_epoch)
        printf("trained %lld epochs in %.1f s (%.0f tokens/s); model: %s\n",
               (long long)(o->epochs - first_epoch), train_time, total_tokens / train_time, path);

    /* the book's check */
    double bleu_sum = 0.0;
    for (int i = 0; i < 4; i++) {
        int64_t ids[512];
        if (o->num_steps > 512)
            break;
        int64_t valid = qkv_nmt_encode(d.src_vocab, book_en[i], o->num_steps, ids);
        char fr[1024];
        translate_ids(ctx, &m, &d, o, &sp, ids, valid, fr, sizeof fr);
        double b = qkv_bleu(fr, book_fr[i], 2);
        bleu_sum += b;
        printf("%s => %s, bleu %.3f\n", book_en[i], fr, b);
    }
    const char *bn[] = {"book_bleu_mean"};
    double bv[] = {bleu_sum / 4};
    qkv_metrics_write(metrics, o->epochs, 1, bn, bv);

    if (n_val > 0) {
        double tb = cli_now();
        preds = calloc((size_t)n_val, sizeof *preds);
        refs = calloc((size_t)n_val, sizeof *refs);
        if (!preds || !refs) {
            qkv_set_error(QKV_ERR_NOMEM, "out of memory");
            goto fail;
        }
        for (int64_t i = 0; i < n_val; i++) {
            int64_t r = val_rows[i];
            char fr[1024];
            translate_ids(ctx, &m, &d, o, &sp, d.src + r * o->num_steps, d.src_valid[r], fr,
                          sizeof fr);
            preds[i] = strdup(fr);
            ids_text(fr, sizeof fr, d.tgt_vocab, d.tgt + r * o->num_steps, o->num_steps, sp.eos,
                     sp.pad);
            refs[i] = strdup(fr);
            if (!preds[i] || !refs[i]) {
                qkv_set_error(QKV_ERR_NOMEM, "out of memory");
                goto fail;
            }
        }
        double cb = qkv_corpus_bleu(n_val, (const char *const *)preds, (const char *const *)refs);
        printf("held-out corpus BLEU (%lld pairs, %s): %.2f (%.1f s)\n", (long long)n_val,
               o->beam > 1 ? "beam" : "greedy", 100.0 * cb, cli_now() - tb);
        for (int64_t i = 0; i < 5 && i < n_val; i++)
            printf("  %s  |  reference: %s\n", preds[i], refs[i]);
        const char *cn[] = {"held_out_bleu"};
        double cv[] = {cb};
        qkv_metrics_write(metrics, o->epochs, 1, cn, cv);
    }
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "qkv train transformer: %s\n", qkv_error());
    if (preds)
        for (int64_t i = 0; i < o->held_out; i++)
            free(preds[i]);
    if (refs)
        for (int64_t i = 0; i < o->held_out; i++)
            free(refs[i]);
    free(preds);
    free(refs);
    qkv_metrics_close(metrics);
    free(order);
    free(buf);
    qkv_ctx_free(ctx);
    qkv_shards_free(sh);
    free(shard_loss);
    qkv_optim_free(opt);
    qkv_params_free(ps);
    qkv_nmt_free(&d);
    return rc;
}

/* Presets set the defaults; options given on the command line win. */
static int apply_preset(options *o, const char *name)
{
    if (!strcmp(name, "book"))
        return 0;
    if (!strcmp(name, "v1")) {
        /* d2l v1.0.3: MTFraEng(num_train 512, num_val 128, num_steps 9) */
        o->examples = 639;
        o->held_out = 128;
        o->num_steps = 9;
        o->hidden = 256;
        o->dropout = 0.2;
        o->batch = 128;
        o->lr = 0.001;
        o->epochs = 30;
        o->split = "tail";
        o->loss = "mean";
        return 0;
    }
    if (!strcmp(name, "large")) {
        o->examples = 40000;
        o->held_out = 2000;
        o->num_steps = 12;
        o->hidden = 128;
        o->ffn = 256;
        o->dropout = 0.1;
        o->batch = 128;
        o->lr = 0.001;
        o->epochs = 12;
        o->save_every = 1;
        return 0;
    }
    fprintf(stderr, "qkv train transformer: unknown preset '%s' (book, v1, large)\n", name);
    return 2;
}

int cmd_train_transformer(int argc, char **argv)
{
    options o = {.preset = "book", .data = QKV_FRA_ENG_PATH, .out_dir = "runs/transformer",
                 .examples = 600, .num_steps = 10, .hidden = 32, .blocks = 2, .heads = 4,
                 .ffn = 64, .batch = 64, .epochs = 200, .dropout = 0.1, .lr = 0.005, .clip = 1.0,
                 .beam = 1, .save_every = 50, .split = "random", .loss = "sum"};
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        if (!strcmp(argv[i], "--preset") && i + 1 < argc)
            v = argv[i + 1];
        else if (!strncmp(argv[i], "--preset=", 9))
            v = argv[i] + 9;
        if (v && apply_preset(&o, v))
            return 2;
    }
    arg_opt opts[] = {
        {.name = "preset", .kind = ARG_CHOICE, .value = &o.preset, .choices = "book|v1|large",
         .help = "book: d2l r0.17's run; v1: v1.0.3's config; large: 40k pairs, held-out BLEU"},
        {.name = "data", .kind = ARG_STRING, .value = &o.data, .metavar = "FILE",
         .help = "fra.txt (english TAB french per line)"},
        {.name = "examples", .kind = ARG_INT, .value = &o.examples, .min = 0, .max = 1e7,
         .help = "pairs read (lines 0..N, as d2l; 0: all)"},
        {.name = "held-out", .kind = ARG_INT, .value = &o.held_out, .min = 0, .max = 1e7,
         .help = "pairs kept out of training for loss and corpus BLEU"},
        {.name = "split", .kind = ARG_CHOICE, .value = &o.split, .choices = "random|tail",
         .help = "held-out pairs: a fixed random choice, or the last ones"},
        {.name = "loss", .kind = ARG_CHOICE, .value = &o.loss, .choices = "sum|mean",
         .help = "sum: r0.17's masked CE / num_steps summed over the batch; mean: v1.0.3's "
                 "per-token mean"},
        {.name = "num-steps", .kind = ARG_INT, .value = &o.num_steps, .min = 2, .max = 512,
         .help = "tokens per sentence after truncation or padding"},
        {.name = "hidden", .kind = ARG_INT, .value = &o.hidden, .min = 1, .max = 8192,
         .help = "num_hiddens (d_model)"},
        {.name = "blocks", .kind = ARG_INT, .value = &o.blocks, .min = 1, .max = QKV_TF_MAX_LAYERS,
         .help = "encoder and decoder blocks"},
        {.name = "heads", .kind = ARG_INT, .value = &o.heads, .min = 1, .max = 256,
         .help = "attention heads (divide --hidden)"},
        {.name = "ffn", .kind = ARG_INT, .value = &o.ffn, .min = 1, .max = 65536,
         .help = "hidden units of the position-wise FFN"},
        {.name = "dropout", .kind = ARG_FLOAT, .value = &o.dropout, .min = 0, .max = 0.99,
         .help = "dropout (positions, attention weights, AddNorm)"},
        {.name = "norm-first", .kind = ARG_FLAG, .value = &o.norm_first,
         .help = "pre-norm blocks instead of the book's post-norm"},
        {.name = "batch", .kind = ARG_INT, .value = &o.batch, .min = 1, .max = 1e6,
         .help = "batch size"},
        {.name = "epochs", .kind = ARG_INT, .value = &o.epochs, .min = 0, .max = 1e6,
         .help = "epochs"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &o.lr, .min = 0, .max = 10,
         .help = "Adam learning rate"},
        {.name = "clip", .kind = ARG_FLOAT, .value = &o.clip, .min = 0, .max = 1e6,
         .help = "gradient norm clipping (0: none)"},
        {.name = "seed", .kind = ARG_U64, .value = &o.seed, .help = "initialisation, dropout, "
                                                                    "shuffling"},
        {.name = "beam", .kind = ARG_INT, .value = &o.beam, .min = 1, .max = 64,
         .help = "beam width of the final translations (1: greedy)"},
        {.name = "save-every", .kind = ARG_INT, .value = &o.save_every, .min = 0, .max = 1e6,
         .help = "epochs between checkpoints (and at the end)"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &o.out_dir, .metavar = "DIR",
         .help = "checkpoint.safetensors, model.safetensors, metrics.jsonl"},
        {.name = "resume", .kind = ARG_FLAG, .value = &o.resume,
         .help = "continue from DIR/checkpoint.safetensors (same options)"},
    };
    args_spec s = {
        .command = "train transformer",
        .summary =
            "Trains the book's Transformer (d2l r0.17) to translate English to French on\n"
            "fra.txt: embeddings, sinusoidal positions, post-norm blocks, masked softmax\n"
            "cross-entropy, Adam, gradient clipping. Prints loss and tokens/s, writes\n"
            "metrics.jsonl, checkpoint.safetensors and model.safetensors (for `qkv\n"
            "translate`), then translates \"go .\", \"i lost .\", \"he's calm .\", \"i'm\n"
            "home .\" with their BLEU (k = 2), and with --held-out the corpus BLEU.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    return rc != ARGS_CONTINUE ? rc : run(&o);
}
