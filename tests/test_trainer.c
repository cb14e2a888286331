/* test_trainer.c - the library's one training loop: exact resume, the NaN
 * guard, signals, extra state, ranks in the loader, schedules. */
#include "test.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- a small model: a two-layer MLP with dropout on noisy synthetic data ---- */

#define IN 6
#define HID 16
#define K 3
#define N_EX 90

typedef struct {
    qkv_params *ps;
    qkv_tensor *w1, *b1, *w2, *b2;
    qkv_params *ema; /* an EMA copy of w1: extra state, as MoCo's key encoder */
    qkv_tensor *ema_w1;
    float data[N_EX][IN];
    int64_t label[N_EX];
    int64_t stop_at;       /* interrupt when this many steps are done (0: never) */
    int use_signal;        /* interrupt by raising SIGINT instead of qkv_trainer_interrupt */
    int64_t nan_at;        /* the loss goes NaN at this step (0: never) */
} mlp;

/* a batch: x (B, IN) with noise from the batch's rng, then labels (B) */
typedef struct {
    float x[32][IN];
    int64_t y[32];
} mlp_batch;

static qkv_status mlp_fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    const mlp *m = user;
    mlp_batch *b = batch;
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < IN; j++)
            b->x[i][j] = m->data[idx[i]][j] + 0.1f * (float)qkv_rng_normal(rng);
        b->y[i] = m->label[idx[i]];
    }
    return QKV_OK;
}

static qkv_tensor *mlp_loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user)
{
    const mlp *m = user;
    const mlp_batch *mb = b->batch;
    int64_t rows = b->hi - b->lo;
    qkv_tensor *x = qkv_from_data(ctx, 2, (int64_t[]){rows, IN}, mb->x[b->lo]);
    qkv_tensor *h = qkv_dropout(ctx, qkv_relu(ctx, qkv_linear(ctx, x, m->w1, m->b1)), 0.2f);
    qkv_tensor *logits = qkv_linear(ctx, h, m->w2, m->b2);
    if (m->nan_at && b->step + 1 == m->nan_at) /* log of a negative number: NaN */
        logits = qkv_log(ctx, qkv_affine(ctx, logits, 1.0f, -1e4f));
    qkv_ce_opts sum = {.ignore_index = QKV_NO_IGNORE, .reduction = QKV_REDUCE_SUM};
    qkv_tensor *l = qkv_cross_entropy(ctx, logits, mb->y + b->lo, &sum);
    b->stats[0] += (double)rows;
    return qkv_scale(ctx, l, 1.0f / (float)b->n_global);
}

static qkv_status mlp_post_step(qkv_trainer *t, void *user)
{
    mlp *m = user;
    for (int64_t i = 0; i < qkv_numel(m->w1); i++)
        m->ema_w1->data[i] = 0.9f * m->ema_w1->data[i] + 0.1f * m->w1->data[i];
    if (m->stop_at && qkv_trainer_step(t) + 1 == m->stop_at) {
        if (m->use_signal)
            raise(SIGINT);
        else
            qkv_trainer_interrupt(t);
    }
    return QKV_OK;
}

static void mlp_make(mlp *m)
{
    memset(m, 0, sizeof *m);
    m->ps = qkv_params_new();
    m->w1 = qkv_params_add(m->ps, "w1", 2, (int64_t[]){HID, IN}, 0);
    m->b1 = qkv_params_add(m->ps, "b1", 1, (int64_t[]){HID}, 0);
    m->w2 = qkv_params_add(m->ps, "w2", 2, (int64_t[]){K, HID}, 0);
    m->b2 = qkv_params_add(m->ps, "b2", 1, (int64_t[]){K}, 0);
    qkv_params_alloc(m->ps);
    m->ema = qkv_params_new();
    m->ema_w1 = qkv_params_add(m->ema, "w1", 2, (int64_t[]){HID, IN}, 0);
    qkv_params_alloc(m->ema);
    qkv_rng r;
    qkv_rng_seed(&r, 7);
    qkv_init_normal(&r, m->w1, 0.0f, 0.3f);
    qkv_init_normal(&r, m->w2, 0.0f, 0.3f);
    for (int i = 0; i < N_EX; i++) {
        m->label[i] = i % K;
        for (int j = 0; j < IN; j++)
            m->data[i][j] = (float)qkv_rng_normal(&r) + (j % K == m->label[i] ? 1.5f : 0.0f);
    }
}

static void mlp_free(mlp *m)
{
    qkv_params_free(m->ps);
    qkv_params_free(m->ema);
}

/* A trainer for m: 3 epochs of 90 examples in batches of 32 (the last
 * partial), Adam with cosine schedule, clipping, 2 shards. */
static qkv_trainer *mlp_trainer(mlp *m, const char *dir, int resume, int64_t epochs)
{
    qkv_trainer *t = qkv_trainer_new(&(qkv_trainer_config){
        .params = m->ps, .loss = mlp_loss, .user = m, .epochs = epochs, .threads = 2,
        .data = {.n_examples = N_EX, .batch_size = 32, .shuffle = 1, .seed = 5,
                 .batch_bytes = sizeof(mlp_batch), .fill = mlp_fill, .user = m},
        .optim = {.kind = QKV_ADAM, .lr = 0.05f},
        .schedule = {.kind = QKV_LR_COSINE, .warmup_epochs = 0.5},
        .clip = 1.0f, .seed = 11, .post_step = mlp_post_step, .out_dir = dir,
        .resume = resume, .print_every = -1, .stat_names = {"examples"}});
    if (t && qkv_trainer_add_state(t, "ema", m->ema) != QKV_OK) {
        qkv_trainer_free(t);
        return NULL;
    }
    return t;
}

static bool same_bits(const qkv_params *a, const qkv_params *b)
{
    int64_t na, nb;
    const float *va = qkv_params_values((qkv_params *)a, &na);
    const float *vb = qkv_params_values((qkv_params *)b, &nb);
    return na == nb && !memcmp(va, vb, (size_t)na * sizeof(float));
}

static int read_file(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t k = fread(buf, 1, n - 1, f);
    buf[k] = '\0';
    fclose(f);
    return (int)k;
}

/* Stopped after step 5 (in the middle of epoch 2) and resumed by a new
 * trainer from the checkpoint alone: the weights, the extra state, the
 * metrics of every epoch and the loss all come out bit for bit as the run
 * that did not stop. Checked that it fails when the epoch's running sums
 * or the EMA store are not restored. */
static void resume_case(int use_signal)
{
    char a[] = "/tmp/qkv_trainer_aXXXXXX", b[] = "/tmp/qkv_trainer_bXXXXXX";
    REQUIRE(mkdtemp(a) && mkdtemp(b), "mkdtemp");
    mlp m1, m2;
    mlp_make(&m1);
    mlp_make(&m2);
    qkv_trainer *t1 = mlp_trainer(&m1, a, 0, 3);
    REQUIRE(t1, "%s", qkv_error());
    REQUIRE(qkv_trainer_run(t1) == QKV_OK, "%s", qkv_error());
    CHECK(qkv_trainer_epoch(t1) == 3 && qkv_trainer_step(t1) == 9, "epoch %lld step %lld",
          (long long)qkv_trainer_epoch(t1), (long long)qkv_trainer_step(t1));
    qkv_trainer_free(t1);

    m2.stop_at = 5;
    m2.use_signal = use_signal;
    qkv_trainer *t2 = mlp_trainer(&m2, b, 0, 3);
    REQUIRE(t2, "%s", qkv_error());
    qkv_status st = qkv_trainer_run(t2);
    CHECK(st == QKV_ERR_INTERRUPTED, "run: %s", qkv_error());
    CHECK(strstr(qkv_error(), "epoch 2, batch 2 of 3") && strstr(qkv_error(), "checkpoint"),
          "message: %s", qkv_error());
    qkv_trainer_free(t2);
    mlp_free(&m2);
    /* a new process, as it were: the model and the EMA store start afresh */
    mlp_make(&m2);
    qkv_trainer *t3 = mlp_trainer(&m2, b, 1, 3);
    REQUIRE(t3, "resume: %s", qkv_error());
    CHECK(qkv_trainer_epoch(t3) == 1 && qkv_trainer_step(t3) == 5, "resumed at epoch %lld step "
          "%lld", (long long)qkv_trainer_epoch(t3), (long long)qkv_trainer_step(t3));
    REQUIRE(qkv_trainer_run(t3) == QKV_OK, "%s", qkv_error());
    qkv_trainer_free(t3);
    CHECK(same_bits(m1.ps, m2.ps), "weights differ from the run that did not stop");
    CHECK(same_bits(m1.ema, m2.ema), "the extra state differs");
    /* the epochs' metrics: the straight run's three lines equal the resumed
     * run's (one before the stop, two after) but for their timings */
    static char ma[8192], mb[8192];
    char path[256];
    snprintf(path, sizeof path, "%s/metrics.jsonl", a);
    CHECK(read_file(path, ma, sizeof ma) > 0, "no %s", path);
    snprintf(path, sizeof path, "%s/metrics.jsonl", b);
    CHECK(read_file(path, mb, sizeof mb) > 0, "no %s", path);
    for (char *la = ma, *lb = mb; *la && *lb;) {
        char *ea = strstr(la, "\"examples_per_s\""), *eb = strstr(lb, "\"examples_per_s\"");
        REQUIRE(ea && eb, "metrics lines:\n%s\n%s", ma, mb);
        CHECK(ea - la == eb - lb && !memcmp(la, lb, (size_t)(ea - la)),
              "epoch metrics differ:\n%.*s\n%.*s", (int)(ea - la), la, (int)(eb - lb), lb);
        la = strchr(la, '\n'), lb = strchr(lb, '\n');
        if (!la || !lb)
            break;
        la++, lb++;
    }
    mlp_free(&m1);
    mlp_free(&m2);
    snprintf(path, sizeof path, "rm -rf %s %s", a, b);
    CHECK(system(path) == 0, "cleanup");
}

TEST(trainer_resume_in_mid_epoch_is_bit_identical) { resume_case(0); }

/* SIGINT during a run ends the step under way, writes a checkpoint of that
 * point and returns QKV_ERR_INTERRUPTED; the run resumes from it exactly. */
TEST(trainer_sigint_leaves_a_checkpoint_that_resumes) { resume_case(1); }

/* A step whose loss turns NaN stops the run: the message names the step and
 * the first op whose output held the NaN (found by running the step again
 * with checks on), nothing of that step is applied, and the checkpoint of
 * the last good epoch stays as it was. */
TEST(trainer_nan_guard_names_the_step_and_the_op)
{
    char dir[] = "/tmp/qkv_trainer_nanXXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    mlp m;
    mlp_make(&m);
    m.nan_at = 5; /* epoch 2, batch 2 */
    qkv_trainer *t = mlp_trainer(&m, dir, 0, 3);
    REQUIRE(t, "%s", qkv_error());
    char path[256];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
    qkv_status st = qkv_trainer_run(t);
    CHECK(st == QKV_ERR_NAN, "status %s: %s", qkv_status_name(st), qkv_error());
    CHECK(strstr(qkv_error(), "step 5 (epoch 2, batch 2 of 3)"), "no step in: %s", qkv_error());
    CHECK(strstr(qkv_error(), "log: output"), "no op in: %s", qkv_error());
    CHECK(strstr(qkv_error(), "last good checkpoint") && strstr(qkv_error(), "(epoch 1)"),
          "no checkpoint in: %s", qkv_error());
    CHECK(qkv_trainer_step(t) == 4, "steps applied: %lld", (long long)qkv_trainer_step(t));
    for (int64_t i = 0; i < qkv_numel(m.w1); i++)
        REQUIRE(isfinite(m.w1->data[i]), "w1[%lld] is %g: the NaN step was applied",
                (long long)i, m.w1->data[i]);
    qkv_trainer_free(t);
    /* the checkpoint is epoch 1's: resuming starts at step 3 */
    mlp_free(&m);
    mlp_make(&m);
    t = mlp_trainer(&m, dir, 1, 3);
    CHECK(t && qkv_trainer_step(t) == 3 && qkv_trainer_epoch(t) == 1, "checkpoint: %s",
          t ? "not epoch 1's" : qkv_error());
    qkv_trainer_free(t);
    mlp_free(&m);
    snprintf(path, sizeof path, "rm -rf %s", dir);
    CHECK(system(path) == 0, "cleanup");
}

/* Bad configurations are refused with a message naming the problem. */
TEST(trainer_refuses_bad_configs)
{
    mlp m;
    mlp_make(&m);
    qkv_trainer *t = qkv_trainer_new(&(qkv_trainer_config){.params = m.ps, .epochs = 1});
    CHECK(!t && strstr(qkv_error(), "loss callback"), "no loss: %s", qkv_error());
    t = mlp_trainer(&m, "/tmp/qkv_trainer_no_such_dir_for_resume", 1, 1);
    CHECK(!t && strstr(qkv_error(), "cannot resume"), "resume without checkpoint: %s",
          qkv_error());
    rmdir("/tmp/qkv_trainer_no_such_dir_for_resume");
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = m.ps, .loss = mlp_loss, .epochs = 1,
        .data = {.n_examples = 10, .batch_size = 0, .batch_bytes = 8, .fill = mlp_fill}});
    CHECK(!t && strstr(qkv_error(), "batch_size"), "batch size 0: %s", qkv_error());
    mlp_free(&m);
}

static int saves;
static qkv_status count_save(qkv_trainer *t, const char *dir, void *user)
{
    saves++;
    return QKV_OK;
}

/* save_model runs with every checkpoint (each epoch here), and with epochs 0
 * once, so that the model as initialised can be evaluated. */
TEST(trainer_saves_the_model_each_epoch_and_at_zero_epochs)
{
    char d[] = "/tmp/qkv_trainer_sXXXXXX";
    REQUIRE(mkdtemp(d), "mkdtemp");
    mlp m;
    mlp_make(&m);
    for (int64_t epochs = 0; epochs <= 2; epochs += 2) {
        qkv_trainer *t = qkv_trainer_new(&(qkv_trainer_config){
            .params = m.ps, .loss = mlp_loss, .user = &m, .epochs = epochs, .threads = 1,
            .data = {.n_examples = N_EX, .batch_size = 32, .seed = 5,
                     .batch_bytes = sizeof(mlp_batch), .fill = mlp_fill, .user = &m},
            .optim = {.kind = QKV_SGD, .lr = 0.01f}, .save_model = count_save, .out_dir = d,
            .print_every = -1});
        REQUIRE(t, "%s", qkv_error());
        saves = 0;
        CHECK(qkv_trainer_run(t) == QKV_OK, "%s", qkv_error());
        CHECK(saves == (epochs ? epochs : 1), "%lld epochs: %d saves", (long long)epochs, saves);
        qkv_trainer_free(t);
    }
    char path[64];
    const char *names[] = {"metrics.jsonl", "checkpoint.safetensors", "curves.png"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", d, names[i]);
        remove(path);
    }
    CHECK(rmdir(d) == 0, "%s: files left behind", d);
    mlp_free(&m);
}

/* The loader over two ranks: each global batch is cut between them as
 * qkv_shard_rows cuts it, and the ranks together see what one process
 * sees (order from the seed and the epoch only). */
static qkv_status fill_ids(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    memcpy(batch, idx, (size_t)n * sizeof *idx);
    (void)user, (void)rng;
    return QKV_OK;
}

TEST(trainer_loader_ranks_cut_each_global_batch)
{
    qkv_loader_config c = {.n_examples = 23, .batch_size = 8, .shuffle = 1, .seed = 3,
                           .batch_bytes = 8 * sizeof(int64_t), .fill = fill_ids};
    qkv_loader *one = qkv_loader_new(&c);
    c.world = 2, c.rank = 0;
    qkv_loader *r0 = qkv_loader_new(&c);
    c.rank = 1;
    qkv_loader *r1 = qkv_loader_new(&c);
    REQUIRE(one && r0 && r1, "%s", qkv_error());
    for (int64_t e = 0; e < 2; e++) {
        qkv_loader_start_epoch(one, e);
        qkv_loader_start_epoch(r0, e);
        qkv_loader_start_epoch(r1, e);
        for (int b = 0; b < 3; b++) {
            int64_t n, n0, n1, all[8], part[8];
            const int64_t *x = qkv_loader_next(one, &n);
            REQUIRE(x, "%s", qkv_error());
            memcpy(all, x, (size_t)n * sizeof *all);
            const int64_t *x0 = qkv_loader_next(r0, &n0);
            REQUIRE(x0, "%s", qkv_error());
            memcpy(part, x0, (size_t)n0 * sizeof *part);
            const int64_t *x1 = qkv_loader_next(r1, &n1);
            REQUIRE(x1, "%s", qkv_error());
            memcpy(part + n0, x1, (size_t)n1 * sizeof *part);
            int64_t lo, hi;
            qkv_shard_rows(n, 0, 2, &lo, &hi);
            CHECK(n0 == hi - lo && n0 + n1 == n, "batch %d: %lld + %lld rows of %lld", b,
                  (long long)n0, (long long)n1, (long long)n);
            CHECK(!memcmp(all, part, (size_t)n * sizeof *all), "epoch %lld batch %d: the "
                  "ranks' rows are not the batch's", (long long)e, b);
        }
    }
    c.rank = 2;
    CHECK(!qkv_loader_new(&c) && strstr(qkv_error(), "rank 2 of world 2"), "bad rank: %s",
          qkv_error());
    qkv_loader_free(one);
    qkv_loader_free(r0);
    qkv_loader_free(r1);
}

/* The schedules at chosen steps against their closed forms (100 steps of
 * which 10 warm up). */
TEST(trainer_schedules_follow_their_formulas)
{
    mlp m;
    mlp_make(&m);
    qkv_trainer_config c = {.params = m.ps, .loss = mlp_loss, .user = &m, .epochs = 10,
                            .data = {.n_examples = 10, .batch_size = 1,
                                     .batch_bytes = sizeof(mlp_batch), .fill = mlp_fill,
                                     .user = &m},
                            .optim = {.kind = QKV_SGD, .lr = 0.5f}, .threads = 1};
    c.schedule = (qkv_lr_schedule){.kind = QKV_LR_COSINE, .warmup_epochs = 1, .min_lr = 0.1f};
    qkv_trainer *t = qkv_trainer_new(&c);
    REQUIRE(t, "%s", qkv_error());
    CHECK_SCALAR(qkv_trainer_lr_at(t, 5), 0.5 * 5 / 10, 1e-7, 1e-6);
    CHECK_SCALAR(qkv_trainer_lr_at(t, 55), 0.1 + 0.4 * 0.5 * (1 + cos(M_PI * 45 / 90)), 1e-7,
                 1e-6);
    qkv_trainer_free(t);
    c.schedule = (qkv_lr_schedule){.kind = QKV_LR_STEP, .step_epochs = 3, .gamma = 0.5f};
    t = qkv_trainer_new(&c);
    REQUIRE(t, "%s", qkv_error());
    CHECK_SCALAR(qkv_trainer_lr_at(t, 29), 0.5, 0, 1e-6);
    CHECK_SCALAR(qkv_trainer_lr_at(t, 30), 0.25, 0, 1e-6);
    CHECK_SCALAR(qkv_trainer_lr_at(t, 95), 0.0625, 0, 1e-6);
    qkv_trainer_free(t);
    mlp_free(&m);
}

/* Ctrl-C on the command line: `qkv train transformer` stops at a step
 * boundary with a message and a checkpoint, exits 130, and --resume goes
 * on from that checkpoint. The interrupt follows an event, not a clock:
 * it is sent once the first epoch's line is out (training under way, the
 * handler installed), however long that took. */
TEST(trainer_cli_ctrl_c_leaves_a_checkpoint)
{
    char dir[] = "/tmp/qkv_trainer_cliXXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    static char out[16384];
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "QKV_PROGRESS=0 %s train transformer --epochs 1000000 --out-dir %s > %s/log 2>&1 & "
             "pid=$!; n=0; until grep -q '^epoch 1/' %s/log || ! kill -0 $pid 2>/dev/null || "
             "[ $n -ge 6000 ]; do sleep 0.01; n=$((n + 1)); done; kill -INT $pid; wait $pid; "
             "echo \"exit $?\" >> %s/log; cat %s/log",
             test_qkv_bin(), dir, dir, dir, dir, dir);
    test_run(cmd, out, sizeof out);
    CHECK(strstr(out, "interrupted at epoch") && strstr(out, "checkpoint written to") &&
              strstr(out, "exit 130"),
          "no interruption message or status:\n%s", out);
    snprintf(cmd, sizeof cmd, "%s/checkpoint.safetensors", dir);
    CHECK(access(cmd, R_OK) == 0, "no checkpoint after Ctrl-C");
    /* stopped during epoch e: a resume to e epochs finishes that one */
    const char *at = strstr(out, "interrupted at epoch ");
    long e = at ? strtol(at + 21, NULL, 10) : 0;
    REQUIRE(e >= 1, "no epoch in:\n%s", out);
    snprintf(cmd, sizeof cmd,
             "QKV_PROGRESS=0 %s train transformer --epochs %ld --resume --out-dir %s 2>&1; "
             "echo \"exit $?\"",
             test_qkv_bin(), e, dir);
    test_run(cmd, out, sizeof out);
    char resumed[64], last[64];
    snprintf(resumed, sizeof resumed, "resumed at epoch %ld\n", e - 1);
    snprintf(last, sizeof last, "\nepoch %ld/%ld:", e, e);
    CHECK(strstr(out, resumed) && strstr(out, last) && strstr(out, "exit 0"),
          "resume output (want '%s' and '%s'):\n%s", resumed, last + 1, out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

/* `qkv data scenes`: the files, valid COCO annotations (boxes inside the
 * canvas, categories 1-10, one image entry per PNG), the same bytes for the
 * same seed, and bad options refused. */
TEST(scenes_make_a_coco_data_set)
{
    char dir[] = "/tmp/qkv_scenesXXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    static char out[8192];
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s data scenes --out %s/a --train 6 --val 3 --size 64 --seed 4 "
             "2>&1 && %s data scenes --out %s/b --train 6 --val 3 --size 64 --seed 4 2>&1",
             test_qkv_bin(), dir, test_qkv_bin(), dir);
    int rc = test_run(cmd, out, sizeof out);
    REQUIRE(rc == 0, "data scenes: exit %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "cmp -s %s/a/annotations/train.json %s/b/annotations/train.json "
             "&& cmp -s %s/a/val/000003.png %s/b/val/000003.png", dir, dir, dir, dir);
    CHECK(system(cmd) == 0, "the same seed gave other files");
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import json,sys; d=json.load(open('%s/a/annotations/train.json'));"
             "assert len(d['images'])==6 and len(d['categories'])==10;"
             "assert all(0<=a['bbox'][0] and a['bbox'][0]+a['bbox'][2]<=64 and 0<=a['bbox'][1] and "
             "a['bbox'][1]+a['bbox'][3]<=64 and a['bbox'][2]>0 and 1<=a['category_id']<=10 and "
             "a['image_id'] in range(1,7) for a in d['annotations']);"
             "assert len(d['annotations'])>=6; print('ok', len(d['annotations']))\" 2>&1",
             dir);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && !strncmp(out, "ok", 2), "annotations: %s", out);
    snprintf(cmd, sizeof cmd, "%s/a/train/000006.png", dir);
    CHECK(access(cmd, R_OK) == 0, "no image 6");
    snprintf(cmd, sizeof cmd, "%s data scenes --out %s/c --min-scale 2 --max-scale 1 2>&1",
             test_qkv_bin(), dir);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "--max-scale"), "bad scales: exit %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}
