/* test_distributed.c - training over several processes: the communicator
 * (one process in this binary; two ranks through `mpirun -np 2 qkv ...`),
 * two ranks giving the weights of one process with the same global batch,
 * a rank that dies or hangs stopping the other within a bounded time,
 * files written once, and a run resumed on another number of ranks. */
#include "test.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* As root mpirun wants --allow-run-as-root; on a machine of fewer cores
 * than ranks, --oversubscribe (docs/distributed.md). Each rank one thread
 * whatever $QKV_THREADS says (CI exports 2): two ranks of one shard each
 * cut a batch as one process of two threads does (QKV_THREADS=1 in the
 * environment mpirun hands every rank). Under the sanitizers
 * the ranks leave OpenMPI's own leaks out (tests/lsan-openmpi.supp). */
#define MPIRUN_NP(n)                                                             \
    "LSAN_OPTIONS=suppressions=tests/lsan-openmpi.supp:fast_unwind_on_malloc=0:"  \
    "print_suppressions=0 QKV_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np " n
#define MPIRUN MPIRUN_NP("2")

/* ---- the communicator in one process ---- */

TEST(comm_local_is_a_world_of_one)
{
    qkv_comm *c = qkv_comm_open(&(qkv_comm_opts){.kind = QKV_COMM_LOCAL});
    REQUIRE(c, "open: %s", qkv_error());
    CHECK(qkv_comm_rank(c) == 0 && qkv_comm_size(c) == 1 && qkv_comm_local_size(c) == 1,
          "rank %d of %d", qkv_comm_rank(c), qkv_comm_size(c));
    CHECK(!strcmp(qkv_comm_backend(c), "local"), "backend %s", qkv_comm_backend(c));
    float f[3] = {1.5f, -2.0f, 3.25f};
    CHECK(qkv_comm_allreduce(c, f, 3, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    CHECK(f[0] == 1.5f && f[1] == -2.0f && f[2] == 3.25f, "all-reduce of one rank changed it");
    int64_t g[2] = {7, 8}, out[2] = {0, 0};
    CHECK(qkv_comm_allgather(c, g, sizeof g, out) == QKV_OK && out[0] == 7 && out[1] == 8,
          "all-gather of one rank is a copy");
    CHECK(qkv_comm_broadcast(c, g, sizeof g, 0) == QKV_OK, "%s", qkv_error());
    int req = qkv_comm_iallreduce(c, f, 3, QKV_DT_F32), done = 0;
    CHECK(req >= 0 && qkv_comm_test(c, req, &done) == QKV_OK && done, "request %d", req);
    CHECK(qkv_comm_check(c) == QKV_OK, "%s", qkv_error());
    CHECK(qkv_comm_barrier(c) == QKV_OK, "%s", qkv_error());
    qkv_comm_stats s;
    qkv_comm_get_stats(c, &s);
    CHECK(s.calls >= 1 && s.bytes >= 12, "stats: %lld calls, %lld bytes", (long long)s.calls,
          (long long)s.bytes);
    CHECK(qkv_comm_close(c) == QKV_OK, "close: %s", qkv_error());
    /* NULL is one process too */
    CHECK(qkv_comm_size(NULL) == 1 && qkv_comm_rank(NULL) == 0, "NULL's world");
    CHECK(qkv_comm_allreduce(NULL, f, 3, QKV_DT_F64) == QKV_OK, "NULL all-reduce");
    CHECK(qkv_comm_allgather(NULL, g, sizeof g, out) == QKV_OK, "NULL all-gather");
    CHECK(qkv_comm_wait(NULL, qkv_comm_iallreduce(NULL, f, 3, QKV_DT_F32)) == QKV_OK, "NULL wait");
}

TEST(comm_bad_arguments_are_errors)
{
    qkv_comm *c = qkv_comm_open(&(qkv_comm_opts){.kind = QKV_COMM_LOCAL});
    REQUIRE(c, "open: %s", qkv_error());
    float f[4] = {0};
    CHECK(qkv_comm_allreduce(c, f, 4, QKV_DT_U8) == QKV_ERR_ARG &&
              strstr(qkv_error(), "dtype"), "U8 sums: %s", qkv_error());
    CHECK(qkv_comm_allreduce(c, NULL, 4, QKV_DT_F32) == QKV_ERR_ARG, "NULL buf");
    CHECK(qkv_comm_broadcast(c, f, sizeof f, 1) == QKV_ERR_ARG && strstr(qkv_error(), "root 1"),
          "root 1 of 1: %s", qkv_error());
    CHECK(qkv_comm_allgather(c, f, 8, f + 1) == QKV_ERR_ARG && strstr(qkv_error(), "overlap"),
          "overlap: %s", qkv_error());
    CHECK(qkv_comm_wait(c, 5) == QKV_ERR_ARG, "no request 5");
    /* the request table runs out, then comes back */
    int reqs[QKV_COMM_REQUESTS];
    for (int i = 0; i < QKV_COMM_REQUESTS; i++)
        reqs[i] = qkv_comm_iallreduce(c, f, 4, QKV_DT_F32);
    CHECK(qkv_comm_iallreduce(c, f, 4, QKV_DT_F32) < 0 && strstr(qkv_error(), "under way"),
          "request %d: %s", QKV_COMM_REQUESTS + 1, qkv_error());
    for (int i = 0; i < QKV_COMM_REQUESTS; i++)
        CHECK(reqs[i] >= 0 && qkv_comm_wait(c, reqs[i]) == QKV_OK, "request %d", i);
    CHECK(qkv_comm_iallreduce(c, f, 4, QKV_DT_F32) >= 0, "after the waits: %s", qkv_error());
    CHECK(qkv_comm_close(c) != QKV_OK && strstr(qkv_error(), "still under way"),
          "close with a request open: %s", qkv_error());
    CHECK(!qkv_comm_open(&(qkv_comm_opts){.kind = QKV_COMM_LOCAL, .timeout_s = -1}) &&
              strstr(qkv_error(), "negative"), "timeout -1: %s", qkv_error());
    setenv("QKV_COMM_LINK", "fast", 1);
    CHECK(!qkv_comm_open(NULL) && strstr(qkv_error(), "QKV_COMM_LINK='fast'"),
          "bad link: %s", qkv_error());
    unsetenv("QKV_COMM_LINK");
}

TEST(comm_abandoned_fails_every_call_at_once)
{
    qkv_comm *c = qkv_comm_open(&(qkv_comm_opts){.kind = QKV_COMM_LOCAL});
    REQUIRE(c, "open: %s", qkv_error());
    qkv_comm_abandon(c);
    double d = 1.0;
    CHECK(qkv_comm_allreduce(c, &d, 1, QKV_DT_F64) == QKV_ERR_COMM &&
              strstr(qkv_error(), "left the run"), "after abandon: %s", qkv_error());
    CHECK(qkv_comm_iallreduce(c, &d, 1, QKV_DT_F64) < 0 && qkv_error_status() == QKV_ERR_COMM,
          "non-blocking after abandon: %s", qkv_error());
    CHECK(qkv_comm_close(c) == QKV_ERR_COMM, "close returns the error");
}

/* ---- two ranks through mpirun ---- */

/* Fails the test unless this qkv has the MPI backend and mpirun runs. */
static bool have_mpi(void)
{
    char out[512], cmd[1024];
    snprintf(cmd, sizeof cmd, "%s version", test_qkv_bin());
    if (test_run(cmd, out, sizeof out) != 0 || !strstr(out, "mpi")) {
        test_fail(__FILE__, __LINE__, "this qkv was built without MPI (`qkv version`: %s): "
                  "install libopenmpi-dev (scripts/install-deps.sh) and rebuild", out);
        return false;
    }
    return true;
}

/* A fresh directory under /tmp for a run's files. */
static void temp_dir(char *dir, size_t n, const char *what)
{
    snprintf(dir, n, "/tmp/qkv-dist-%s-XXXXXX", what);
    if (!mkdtemp(dir))
        dir[0] = '\0';
}

static void remove_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup of %s", dir);
}

/* Every float tensor of two safetensors files within atol + rtol |b|,
 * except that a tensor of b within `noise` of zero everywhere (rounding
 * noise of what is zero in exact arithmetic, such as the running mean of a
 * batch-normalised layer's bias-free output) need only stay within noise
 * in a too; returns the largest difference (+inf if a file or a tensor is
 * missing). */
static double compare_files_noise(const char *a, const char *b, double atol, double rtol,
                                  double noise)
{
    qkv_st_file *fa = qkv_st_open(a), *fb = qkv_st_open(b);
    qkv_ctx *ctx = qkv_ctx_new();
    double worst = INFINITY;
    if (!fa || !fb || !ctx) {
        test_fail(__FILE__, __LINE__, "cannot open %s or %s: %s", a, b, qkv_error());
        goto done;
    }
    CHECK(qkv_st_count(fa) == qkv_st_count(fb), "%s has %lld tensors, %s %lld", a,
          (long long)qkv_st_count(fa), b, (long long)qkv_st_count(fb));
    worst = 0.0;
    for (int64_t i = 0; i < qkv_st_count(fa); i++) {
        if (qkv_st_dtype(fa, i) != QKV_DT_F32)
            continue;
        const char *name = qkv_st_name(fa, i);
        qkv_tensor *x = qkv_st_load(ctx, fa, name), *y = qkv_st_load(ctx, fb, name);
        if (!x || !y) {
            test_fail(__FILE__, __LINE__, "%s: missing from %s", name, y ? a : b);
            worst = INFINITY;
            continue;
        }
        double top = 0.0, top_x = 0.0;
        for (int64_t k = 0; k < qkv_numel(y); k++)
            top = fmax(top, fabs((double)y->data[k]));
        for (int64_t k = 0; k < qkv_numel(x); k++)
            top_x = fmax(top_x, fabs((double)x->data[k]));
        if (top > 0 && top <= noise)
            CHECK(top_x <= noise, "%s: %s's largest value %g is past the noise %g of %s's %g",
                  name, a, top_x, noise, b, top);
        else
            check_close(__FILE__, __LINE__, name, x, y, atol, rtol);
        for (int64_t k = 0; k < qkv_numel(x) && qkv_numel(x) == qkv_numel(y); k++)
            worst = fmax(worst, fabs((double)x->data[k] - (double)y->data[k]));
        qkv_ctx_reset(ctx);
    }
done:
    qkv_st_close(fa);
    qkv_st_close(fb);
    qkv_ctx_free(ctx);
    return worst;
}

static double compare_files(const char *a, const char *b, double atol, double rtol)
{
    return compare_files_noise(a, b, atol, rtol, 0.0);
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = 0, ch;
    while (f && (ch = fgetc(f)) != EOF)
        n += ch == '\n';
    if (f)
        fclose(f);
    return f ? n : -1;
}

/* Runs cmd (stdout and stderr into out); returns its status, *seconds the
 * time it took. */
static int run_timed(const char *cmd, char *out, size_t n, double *seconds)
{
    double t0 = qkv_now();
    int rc = test_run(cmd, out, n);
    *seconds = qkv_now() - t0;
    return rc;
}

TEST(comm_two_ranks_agree_on_every_collective)
{
    if (!have_mpi())
        return;
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "%s %s comm --max-kb 64 --iters 3 2>&1", MPIRUN, test_qkv_bin());
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "backend mpi") && strstr(out, "2 ranks") &&
              strstr(out, "collectives agree"), "rc %d:\n%s", rc, out);
}

/* The injected link ($QKV_COMM_LINK) holds each collective back to a
 * ring's time over it: 2 ms and 1 Gb/s make a 512 KiB all-reduce of two
 * ranks at least 2 (2 ms) + 512 KiB / 125 MB/s = 8.2 ms. */
TEST(comm_injected_link_slows_all_reduce_to_the_model)
{
    if (!have_mpi())
        return;
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "QKV_COMM_LINK=2000:1 %s %s comm --max-kb 512 --iters 3 2>&1",
             MPIRUN, test_qkv_bin());
    int rc = test_run(cmd, out, sizeof out);
    const char *row = strstr(out, "\n    524288 ");
    double us = row ? atof(row + 12) : -1;
    CHECK(rc == 0 && us >= 8200 && us < 200000, "512 KiB took %.0f us (rc %d):\n%s", us, rc, out);
}

/* 20 steps of the default ViT at batch 16, dropout off, no augmentation:
 * two ranks of one thread against one process of two threads, which cuts
 * each batch into the same two halves. */
TEST(ddp_vit_two_ranks_give_one_process_weights)
{
    if (!have_mpi())
        return;
    char one[256], two[256], cmd[2048], out[8192], a[300], b[300];
    temp_dir(one, sizeof one, "vit1");
    temp_dir(two, sizeof two, "vit2");
    REQUIRE(one[0] && two[0], "mkdtemp");
    const char *args = "train vit --preset demo --limit 320 --batch-size 16 --epochs 1 "
                       "--no-augment --eval-limit 100";
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s --threads 2 %s --out-dir %s 2>&1",
             test_qkv_bin(), args, one);
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "one process: rc %d\n%s", rc, out);
    /* small buckets: several all-reduces overlap the backward; rank 1
     * (mpirun's second app context) is told another --out-dir, which it
     * must not create: rank 0 alone writes */
    char other[300];
    snprintf(other, sizeof other, "%s-rank1", two);
    snprintf(cmd, sizeof cmd,
             "QKV_PROGRESS=0 QKV_BUCKET_KB=128 %s %s %s --out-dir %s : -np 1 %s %s --out-dir %s "
             "2>&1",
             MPIRUN_NP("1"), test_qkv_bin(), args, two, test_qkv_bin(), args, other);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "on each of 2 ranks (mpi)"), "two ranks: rc %d\n%s", rc, out);
    struct stat sb;
    CHECK(stat(other, &sb) != 0, "rank 1 wrote into its --out-dir %s", other);
    remove_dir(other);
    /* rank 0 alone prints */
    const char *e1 = strstr(out, "epoch 1/1:");
    CHECK(e1 && !strstr(e1 + 1, "epoch 1/1:"), "the epoch's line twice or never:\n%s", out);
    CHECK(strstr(out, "buckets") && !strstr(out, "0.0 of them started while backward"),
          "no bucket started during backward:\n%s", out);
    snprintf(a, sizeof a, "%s/metrics.jsonl", two);
    CHECK(count_lines(a) == 1, "%s has %d lines, not 1", a, count_lines(a));
    snprintf(a, sizeof a, "%s/model.safetensors", one);
    snprintf(b, sizeof b, "%s/model.safetensors", two);
    double d = compare_files(a, b, 1e-5, 0.0);
    printf("    ViT, 20 steps: max |two ranks - one process| = %.3g\n", d);
    snprintf(a, sizeof a, "%s/checkpoint.safetensors", one);
    snprintf(b, sizeof b, "%s/checkpoint.safetensors", two);
    compare_files(a, b, 1e-5, 0.0); /* the optimizer's moments too */
    remove_dir(one);
    remove_dir(two);
}

/* The book's Transformer, 2 epochs of 10 steps, the mean over target
 * tokens (the ranks sum their tokens before the loss divides by them). */
TEST(ddp_transformer_two_ranks_give_one_process_weights)
{
    if (!have_mpi())
        return;
    char one[256], two[256], cmd[2048], out[8192], a[300], b[300];
    temp_dir(one, sizeof one, "tf1");
    temp_dir(two, sizeof two, "tf2");
    REQUIRE(one[0] && two[0], "mkdtemp");
    const char *args = "train transformer --epochs 2 --dropout 0 --loss mean";
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s --threads 2 %s --out-dir %s 2>&1",
             test_qkv_bin(), args, one);
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "one process: rc %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 QKV_BUCKET_KB=32 %s %s %s --out-dir %s 2>&1",
             MPIRUN, test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "on each of 2 ranks"), "two ranks: rc %d\n%s", rc, out);
    const char *g = strstr(out, "go . =>");
    CHECK(g && !strstr(g + 1, "go . =>"), "translations printed twice or never:\n%s", out);
    snprintf(a, sizeof a, "%s/model.safetensors", one);
    snprintf(b, sizeof b, "%s/model.safetensors", two);
    double d = compare_files(a, b, 1e-5, 0.0);
    printf("    Transformer, 20 steps: max |two ranks - one process| = %.3g\n", d);
    remove_dir(one);
    remove_dir(two);
}

/* The text after `key` in out up to the line's end ("" if absent). */
static void line_after(char *dst, size_t n, const char *out, const char *key)
{
    const char *a = strstr(out, key);
    size_t k = 0;
    for (a = a ? a + strlen(key) : ""; *a && *a != '\n' && k + 1 < n; a++)
        dst[k++] = *a;
    dst[k] = '\0';
}

/* MoCo v2 on a ResNet-18 of width 8 (`qkv train moco`'s default model,
 * narrower), 4 steps of 16 images with augmentation, the queue of 64 and
 * shuffle BN in 8 groups: two ranks of one thread (each 8 images: 4 groups
 * of 2, the permutation over all 16, the keys all-gathered) against one
 * process of two threads (each shard 8 images in 4 groups): the same
 * query and key encoders (batch norms' running statistics included), the
 * same queue and SGD momentum within 1e-5 relative (they are equal bit for
 * bit), and the same kNN monitor. */
static void moco_two_ranks(const char *flags, const char *what)
{
    char one[256], two[256], cmd[2048], out[8192], a[300], b[300];
    temp_dir(one, sizeof one, "moco1");
    temp_dir(two, sizeof two, "moco2");
    REQUIRE(one[0] && two[0], "mkdtemp");
    char args[512];
    snprintf(args, sizeof args, "train moco %s --limit 64 --batch-size 16 --queue 64 --epochs 1 "
             "--eval-limit 40 --knn-bank 64", flags);
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s --threads 2 %s --out-dir %s 2>&1",
             test_qkv_bin(), args, one);
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "one process: rc %d\n%s", rc, out);
    char knn1[64], knn2[64];
    line_after(knn1, sizeof knn1, out, "kNN test accuracy ");
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s %s %s --out-dir %s 2>&1", MPIRUN,
             test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "on each of 2 ranks (mpi)"), "two ranks: rc %d\n%s", rc, out);
    line_after(knn2, sizeof knn2, out, "kNN test accuracy ");
    const char *e1 = strstr(out, "epoch 1/1:");
    CHECK(e1 && !strstr(e1 + 1, "epoch 1/1:"), "the epoch's line twice or never:\n%s", out);
    CHECK(knn1[0] && !strcmp(knn1, knn2), "kNN accuracy: one process '%s', two ranks '%s'",
          knn1, knn2);
    snprintf(a, sizeof a, "%s/metrics.jsonl", two);
    CHECK(count_lines(a) == 1, "%s has %d lines, not 1", a, count_lines(a));
    snprintf(a, sizeof a, "%s/model.safetensors", one);
    snprintf(b, sizeof b, "%s/model.safetensors", two);
    double d = compare_files(a, b, 0.0, 1e-5);
    printf("    MoCo %s, 4 steps: max |two ranks - one process| = %.3g\n", what, d);
    snprintf(a, sizeof a, "%s/checkpoint.safetensors", one);
    snprintf(b, sizeof b, "%s/checkpoint.safetensors", two);
    compare_files(a, b, 0.0, 1e-5);
    remove_dir(one);
    remove_dir(two);
}

TEST(ddp_moco_v2_shuffle_bn_two_ranks_give_one_process_weights)
{
    if (have_mpi())
        moco_two_ranks("--version 2 --arch resnet18 --width 8", "v2 ResNet-18");
}

/* v3: no queue; every rank's keys are the negatives of every query */
TEST(ddp_moco_v3_two_ranks_give_one_process_weights)
{
    if (have_mpi())
        moco_two_ranks("--version 3 --arch resnet18 --width 8", "v3 ResNet-18");
}

/* `qkv train detr`'s default model (ResNet-18 of width 32 with batch
 * statistics, transformer width 128, 3 + 3 layers, 20 queries), no
 * pretraining or augmentation, 2 steps of 4 of 8 scenes of 64 pixels: two
 * ranks of one thread (2 images each; the box count and the class loss's
 * weights summed over ranks before the loss) against one process of two
 * threads: every weight, batch norm's running statistics and AdamW's
 * moments within 1e-5 relative (equal bit for bit), and the same epoch
 * line (the losses and the COCO numbers of the 4 validation images, which
 * the ranks evaluate 2 + 2 and gather). */
TEST(ddp_detr_two_ranks_give_one_process_weights)
{
    if (!have_mpi())
        return;
    char data[256], one[256], two[256], cmd[2048], out[8192], a[300], b[300];
    temp_dir(data, sizeof data, "detr-data");
    temp_dir(one, sizeof one, "detr1");
    temp_dir(two, sizeof two, "detr2");
    REQUIRE(data[0] && one[0] && two[0], "mkdtemp");
    snprintf(cmd, sizeof cmd, "%s data scenes --out %s --train 8 --val 4 --size 64 --seed 4 2>&1",
             test_qkv_bin(), data);
    int rc = test_run(cmd, out, sizeof out);
    REQUIRE(rc == 0, "data scenes: exit %d\n%s", rc, out);
    char args[512], line1[512], line2[512];
    snprintf(args, sizeof args, "train detr --data %s --epochs 1 --batch-size 4 "
             "--pretrain-epochs 0 --no-augment", data);
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s --threads 2 %s --out-dir %s 2>&1",
             test_qkv_bin(), args, one);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "one process: rc %d\n%s", rc, out);
    line_after(line1, sizeof line1, out, "epoch 1/1:");
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s %s %s --out-dir %s 2>&1", MPIRUN,
             test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "on each of 2 ranks (mpi)"), "two ranks: rc %d\n%s", rc, out);
    line_after(line2, sizeof line2, out, "epoch 1/1:");
    const char *e1 = strstr(out, "epoch 1/1:"), *v1 = strstr(out, "validation (");
    CHECK(e1 && !strstr(e1 + 1, "epoch 1/1:") && v1 && !strstr(v1 + 1, "validation ("),
          "the epoch's line or the scores twice or never:\n%s", out);
    /* the line up to its timing, which differs */
    char *t1 = strstr(line1, " ("), *t2 = strstr(line2, " (");
    if (t1 && t2)
        *t1 = *t2 = '\0';
    CHECK(line1[0] && !strcmp(line1, line2), "one process:%s\ntwo ranks:  %s", line1, line2);
    snprintf(a, sizeof a, "%s/checkpoint.safetensors", one);
    snprintf(b, sizeof b, "%s/checkpoint.safetensors", two);
    double d = compare_files(a, b, 0.0, 1e-5);
    printf("    DETR, 2 steps: max |two ranks - one process| = %.3g\n", d);
    remove_dir(data);
    remove_dir(one);
    remove_dir(two);
}

/* MoCo v3 with --sync-bn (moco-v3's SyncBatchNorm in place of each rank's
 * own batch statistics), one step of 16 images: two ranks of one thread
 * (every batch norm over both ranks' 8 images, the statistics all-gathered
 * in forward and the sums all-reduced in backward) against one process of
 * one thread (each batch norm over the 16). The ranks sum their gradients
 * in another order and merge the moments pairwise, so the weights agree to
 * rounding: within 1e-7 + 1e-4 relative (measured 5e-6 relative at most);
 * the predictor's first running mean, zero but for rounding (~2e-8), stays
 * below 1e-7. (Rounding grows over steps: after 4 steps the BN biases
 * differ by 4 %, as two runs of one process with other thread counts do.) */
TEST(ddp_moco_v3_sync_bn_two_ranks_give_one_process_weights)
{
    if (!have_mpi())
        return;
    char one[256], two[256], cmd[2048], out[8192], a[300], b[300];
    temp_dir(one, sizeof one, "msync1");
    temp_dir(two, sizeof two, "msync2");
    REQUIRE(one[0] && two[0], "mkdtemp");
    const char *args = "train moco --version 3 --arch resnet18 --width 8 --limit 16 "
                       "--batch-size 16 --epochs 1 --knn-every -1 --sync-bn";
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s --threads 1 %s --out-dir %s 2>&1",
             test_qkv_bin(), args, one);
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "one process: rc %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s %s %s --out-dir %s 2>&1", MPIRUN,
             test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "2 ranks (mpi), batch norm synchronised"),
          "two ranks: rc %d\n%s", rc, out);
    snprintf(a, sizeof a, "%s/model.safetensors", one);
    snprintf(b, sizeof b, "%s/model.safetensors", two);
    double d = compare_files_noise(a, b, 1e-7, 1e-4, 1e-7);
    printf("    MoCo v3 with SyncBatchNorm, 1 step: max |two ranks - one process| = %.3g\n", d);
    /* and with two threads a rank: refused, naming the cause */
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s %s --threads 2 %s --out-dir %s 2>&1", MPIRUN,
             test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "--threads 1"), "two threads a rank: rc %d\n%s", rc, out);
    remove_dir(one);
    remove_dir(two);
}

/* MoCo: two ranks train an epoch, one process of two threads the second
 * (the key encoder and the queue come back from the checkpoint): the
 * weights, key encoder and queue of two straight epochs of one process. */
TEST(ddp_moco_resumes_on_another_number_of_ranks)
{
    if (!have_mpi())
        return;
    char one[256], two[256], cmd[2048], out[8192], a[300], b[300];
    temp_dir(one, sizeof one, "mres1");
    temp_dir(two, sizeof two, "mres2");
    REQUIRE(one[0] && two[0], "mkdtemp");
    const char *args = "train moco --version 2 --arch resnet18 --width 8 --limit 32 "
                       "--batch-size 16 --queue 64 --knn-every -1";
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s --threads 2 %s --epochs 2 --out-dir %s 2>&1",
             test_qkv_bin(), args, one);
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "straight: rc %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s %s %s --epochs 2 --stop-after 1 --out-dir %s "
             "2>&1", MPIRUN, test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 130, "two ranks, epoch 1: rc %d (the stop's 130)\n%s", rc, out);
    snprintf(cmd, sizeof cmd,
             "QKV_PROGRESS=0 %s --threads 2 %s --epochs 2 --resume --out-dir %s 2>&1",
             test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "resumed at epoch 1"), "resumed: rc %d\n%s", rc, out);
    snprintf(a, sizeof a, "%s/model.safetensors", one);
    snprintf(b, sizeof b, "%s/model.safetensors", two);
    double d = compare_files(a, b, 0.0, 1e-5);
    printf("    MoCo, 1 epoch on 2 ranks + 1 on 1 process: max |diff| = %.3g\n", d);
    remove_dir(one);
    remove_dir(two);
}

/* Two ranks train an epoch; one process of two threads resumes for the
 * second: the weights of two straight epochs. */
TEST(ddp_run_resumes_on_another_number_of_ranks)
{
    if (!have_mpi())
        return;
    char one[256], two[256], cmd[2048], out[8192], a[300], b[300];
    temp_dir(one, sizeof one, "res1");
    temp_dir(two, sizeof two, "res2");
    REQUIRE(one[0] && two[0], "mkdtemp");
    const char *args = "train transformer --dropout 0 --save-every 1";
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s --threads 2 %s --epochs 2 --out-dir %s 2>&1",
             test_qkv_bin(), args, one);
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "straight: rc %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "QKV_PROGRESS=0 %s %s %s --epochs 1 --out-dir %s 2>&1", MPIRUN,
             test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "two ranks, epoch 1: rc %d\n%s", rc, out);
    snprintf(cmd, sizeof cmd,
             "QKV_PROGRESS=0 %s --threads 2 %s --epochs 2 --resume --out-dir %s 2>&1",
             test_qkv_bin(), args, two);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "resumed at epoch 1"), "resumed: rc %d\n%s", rc, out);
    snprintf(a, sizeof a, "%s/model.safetensors", one);
    snprintf(b, sizeof b, "%s/model.safetensors", two);
    compare_files(a, b, 1e-5, 0.0);
    snprintf(a, sizeof a, "%s/metrics.jsonl", two);
    CHECK(count_lines(a) == 4, "%s: %d lines, not 2 x (an epoch + the final scores)", a,
          count_lines(a));
    remove_dir(one);
    remove_dir(two);
}

/* Rank 1 dies (SIGKILL) at step 3: mpirun signals rank 0, which stops
 * with a message naming the all-reduce it waited in; all within seconds. */
TEST(ddp_dead_rank_stops_the_other_with_a_message)
{
    if (!have_mpi())
        return;
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof cmd,
             "QKV_PROGRESS=0 QKV_TEST_FAULT=kill:1:3 %s %s train transformer --epochs 2 "
             "--out-dir /tmp/qkv-dist-dead 2>&1",
             MPIRUN, test_qkv_bin());
    double s;
    int rc = run_timed(cmd, out, sizeof out, &s);
    CHECK(rc != 0 && s < 60, "rc %d after %.1f s", rc, s);
    CHECK(strstr(out, "killing this rank at step 3") && strstr(out, "rank 0 of 2") &&
              strstr(out, "summing the gradients over ranks"),
          "no clear message from rank 0:\n%s", out);
    remove_dir("/tmp/qkv-dist-dead");
}

/* MoCo's own collectives (the keys' all-gathers before the shards run):
 * rank 1 dies at step 2 and rank 0 stops with a message naming them. */
TEST(ddp_moco_dead_rank_stops_the_other_with_a_message)
{
    if (!have_mpi())
        return;
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof cmd,
             "QKV_PROGRESS=0 QKV_TEST_FAULT=kill:1:2 %s %s train moco --width 8 --limit 64 "
             "--batch-size 16 --queue 64 --epochs 1 --knn-every -1 "
             "--out-dir /tmp/qkv-dist-moco-dead 2>&1",
             MPIRUN, test_qkv_bin());
    double s;
    int rc = run_timed(cmd, out, sizeof out, &s);
    CHECK(rc != 0 && s < 60, "rc %d after %.1f s", rc, s);
    /* (were rank 0 descheduled from the end of step 2 until mpirun's SIGTERM,
     * it would stop at the step boundary instead, saying so) */
    CHECK(strstr(out, "killing this rank at step 2") &&
              (strstr(out, "qkv train moco (rank 0 of 2): step 3, the keys of the global "
                           "batch") ||
               strstr(out, "qkv train moco (rank 0 of 2): interrupted at epoch 1")),
          "no clear message from rank 0:\n%s", out);
    remove_dir("/tmp/qkv-dist-moco-dead");
}

/* Rank 1 stops answering at step 3: rank 0 gives up after the 3 s
 * timeout, says so, and the run ends. */
TEST(ddp_hung_rank_times_out_the_other)
{
    if (!have_mpi())
        return;
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof cmd,
             "QKV_PROGRESS=0 QKV_TEST_FAULT=hang:1:3 QKV_COMM_TIMEOUT=3 %s %s train "
             "transformer --epochs 2 --out-dir /tmp/qkv-dist-hang 2>&1",
             MPIRUN, test_qkv_bin());
    double s;
    int rc = run_timed(cmd, out, sizeof out, &s);
    CHECK(rc != 0 && s >= 3 && s < 60, "rc %d after %.1f s", rc, s);
    CHECK(strstr(out, "no answer from the other ranks after 3 s"), "no timeout message:\n%s",
          out);
    remove_dir("/tmp/qkv-dist-hang");
}

/* ---- batch norm synchronised over ranks ---- */

/* Weight, bias and running statistics of C channels in a store of their
 * own: weight 1 + c / 10, bias c / 20, running mean 0 and variance 1. */
static qkv_params *bn_store(int64_t C, qkv_tensor **t)
{
    qkv_params *ps = qkv_params_new();
    const char *names[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int i = 0; i < 4; i++)
        t[i] = qkv_params_add(ps, names[i], 1, &C, i < 2 ? 0 : QKV_PARAM_BUFFER);
    qkv_params_alloc(ps);
    for (int64_t c = 0; c < C; c++) {
        t[0]->data[c] = 1.0f + 0.1f * (float)c, t[1]->data[c] = 0.05f * (float)c;
        t[2]->data[c] = 0.0f, t[3]->data[c] = 1.0f;
    }
    return ps;
}

/* Rank r of the ranks of qkv_comm_open(NULL) (one process in the suite,
 * two when batch_norm_synced_over_two_ranks starts this binary under
 * mpirun) normalises rows [4 r, 4 r + 4) of a batch of 4 p rows: its
 * output, its input's gradient and the running statistics are those of
 * plain batch norm over the whole batch, and the ranks' parameter
 * gradients add up to the whole batch's. */
TEST(batch_norm_synced_over_ranks_is_the_whole_batch)
{
    qkv_comm *c = qkv_comm_open(NULL);
    REQUIRE(c, "open: %s", qkv_error());
    int p = qkv_comm_size(c), r = qkv_comm_rank(c);
    int64_t Br = 4, C = 3, S = 5, B = Br * p, per = C * S;
    float *xs = malloc((size_t)(B * per) * sizeof(float));
    float *dys = malloc((size_t)(B * per) * sizeof(float));
    qkv_rng rng;
    qkv_rng_seed(&rng, 7);
    for (int64_t i = 0; i < B * per; i++) /* channel c centred near c */
        xs[i] = 2.0f * qkv_rng_normal(&rng) + (float)((i / S) % C), dys[i] = qkv_rng_normal(&rng);
    qkv_tensor *whole[4], *mine[4];
    qkv_params *pw = bn_store(C, whole), *pm = bn_store(C, mine);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 1);
    qkv_tensor *x = qkv_requires_grad(qkv_from_data(ctx, 3, (int64_t[]){B, C, S}, xs));
    qkv_tensor *xr = qkv_requires_grad(
        qkv_from_data(ctx, 3, (int64_t[]){Br, C, S}, xs + r * Br * per));
    qkv_tensor *y = qkv_batch_norm_ext(ctx, x, whole[0], whole[1],
                                       &(qkv_bn_opts){.running_mean = whole[2],
                                                      .running_var = whole[3],
                                                      .momentum = 0.1, .eps = 1e-5f});
    REQUIRE(y && qkv_backward_with(ctx, y, dys) == QKV_OK, "whole batch: %s", qkv_error());
    qkv_tensor *yr = qkv_batch_norm_ext(ctx, xr, mine[0], mine[1],
                                        &(qkv_bn_opts){.running_mean = mine[2],
                                                       .running_var = mine[3], .momentum = 0.1,
                                                       .eps = 1e-5f, .sync = c});
    REQUIRE(yr && qkv_backward_with(ctx, yr, dys + r * Br * per) == QKV_OK, "rank %d: %s", r,
            qkv_error());
    int64_t n_grads;
    float *g = qkv_params_grads(pm, &n_grads);
    REQUIRE(qkv_comm_allreduce(c, g, n_grads, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    int64_t rows[3] = {Br, C, S};
    CHECK_CLOSE(yr, qkv_wrap(ctx, 3, rows, y->data + r * Br * per), 2e-6, 1e-5);
    CHECK_CLOSE_BUF(xr->grad, qkv_wrap(ctx, 3, rows, x->grad + r * Br * per), 2e-6, 1e-5);
    for (int i = 0; i < 2; i++)
        CHECK_CLOSE_BUF(mine[i]->grad, qkv_wrap(ctx, 1, &C, whole[i]->grad), 1e-5, 1e-5);
    for (int i = 2; i < 4; i++)
        CHECK_CLOSE(mine[i], whole[i], 1e-6, 1e-6);
    /* and with groups (shuffle BN) at once: an error */
    CHECK(!qkv_batch_norm_ext(ctx, xr, mine[0], mine[1],
                              &(qkv_bn_opts){.groups = 2, .eps = 1e-5f, .sync = c}) &&
              strstr(qkv_error(), "synchronised"), "groups and sync: %s", qkv_error());
    qkv_ctx_free(ctx);
    qkv_params_free(pw);
    qkv_params_free(pm);
    free(xs);
    free(dys);
    CHECK(qkv_comm_close(c) == QKV_OK, "close: %s", qkv_error());
}

/* PyTorch parity: torch.nn.SyncBatchNorm over p ranks is F.batch_norm in
 * training over the ranks' rows concatenated (the fixture, 6 rows). Rank r
 * of qkv_comm_open(NULL) (a world of one in the suite, two under mpirun
 * below) normalises rows qkv_shard_rows(6, r, p) with .sync: its output
 * and input gradient are PyTorch's rows, its running statistics PyTorch's
 * after the call (unbiased variance over all 6 rows), and the ranks'
 * weight and bias gradients summed are PyTorch's. */
TEST(batch_norm_synced_over_ranks_matches_pytorch)
{
    qkv_comm *c = qkv_comm_open(NULL);
    REQUIRE(c, "open: %s", qkv_error());
    int p = qkv_comm_size(c), r = qkv_comm_rank(c);
    qkv_st_file *f = fixture_open("batch_norm_sync_whole");
    REQUIRE(f, "no fixture");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = fixture_get(ctx, f, "x"), *out = fixture_get(ctx, f, "out");
    qkv_tensor *gout = fixture_get(ctx, f, "gout"), *gx = fixture_get(ctx, f, "grad_x");
    qkv_tensor *st[4], *want[4] = {fixture_get(ctx, f, "grad_w"), fixture_get(ctx, f, "grad_b"),
                                   fixture_get(ctx, f, "running_mean_after"),
                                   fixture_get(ctx, f, "running_var_after")};
    int64_t C = x->shape[1];
    qkv_params *ps = bn_store(C, st);
    memcpy(st[0]->data, fixture_get(ctx, f, "w")->data, (size_t)C * sizeof(float));
    memcpy(st[1]->data, fixture_get(ctx, f, "b")->data, (size_t)C * sizeof(float));
    memcpy(st[2]->data, fixture_get(ctx, f, "running_mean")->data, (size_t)C * sizeof(float));
    memcpy(st[3]->data, fixture_get(ctx, f, "running_var")->data, (size_t)C * sizeof(float));
    int64_t lo, hi, per = qkv_numel(x) / x->shape[0];
    qkv_shard_rows(x->shape[0], r, p, &lo, &hi);
    int64_t shape[4] = {hi - lo, x->shape[1], x->shape[2], x->shape[3]};
    qkv_set_training(ctx, 1);
    qkv_tensor *xr = qkv_requires_grad(qkv_from_data(ctx, 4, shape, x->data + lo * per));
    qkv_tensor *yr = qkv_batch_norm_ext(ctx, xr, st[0], st[1],
                                        &(qkv_bn_opts){.running_mean = st[2],
                                                       .running_var = st[3], .momentum = 0.1,
                                                       .eps = 1e-5f, .sync = c});
    REQUIRE(yr && qkv_backward_with(ctx, yr, gout->data + lo * per) == QKV_OK, "rank %d: %s", r,
            qkv_error());
    int64_t n_grads;
    float *g = qkv_params_grads(ps, &n_grads);
    REQUIRE(qkv_comm_allreduce(c, g, n_grads, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    CHECK_CLOSE(yr, qkv_wrap(ctx, 4, shape, out->data + lo * per), 1e-5, 1e-5);
    CHECK_CLOSE_BUF(xr->grad, qkv_wrap(ctx, 4, shape, gx->data + lo * per), 1e-5, 1e-4);
    for (int i = 0; i < 2; i++)
        CHECK_CLOSE_BUF(st[i]->grad, want[i], 1e-5, 1e-5);
    for (int i = 2; i < 4; i++)
        CHECK_CLOSE(st[i], want[i], 1e-6, 1e-5);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(f);
    CHECK(qkv_comm_close(c) == QKV_OK, "close: %s", qkv_error());
}

/* The synchronised path (its own backward: sums then dx) by central
 * differences, in a world of one (a local communicator). */
static qkv_tensor *f_bn_sync(qkv_ctx *ctx, qkv_tensor **t, void *ud)
{
    qkv_set_training(ctx, 1);
    return qkv_batch_norm_ext(ctx, t[0], t[1], t[2],
                              &(qkv_bn_opts){.eps = 1e-5f, .sync = (qkv_comm *)ud});
}

TEST(gradcheck_batch_norm_synced)
{
    qkv_comm *c = qkv_comm_open(&(qkv_comm_opts){.kind = QKV_COMM_LOCAL});
    REQUIRE(c, "open: %s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 23);
    gc_input in[3] = {gc_rand(&r, 4, (int64_t[]){3, 2, 2, 3}, -2, 2, true),
                      gc_rand(&r, 1, (int64_t[]){2}, 0.5f, 1.5f, true),
                      gc_rand(&r, 1, (int64_t[]){2}, -1, 1, true)};
    CHECK_GRAD(f_bn_sync, 3, in, c, 5e-4, 1e-3);
    gc_free(3, in);
    qkv_comm_close(c);
}

TEST(batch_norm_synced_over_two_ranks)
{
    if (!have_mpi())
        return;
    char self[2048], cmd[4096], out[8192];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(k > 0, "readlink /proc/self/exe");
    self[k] = '\0';
    /* one mpirun each: MPI starts once per process */
    const char *tests[2] = {"batch_norm_synced_over_ranks_is_the_whole_batch",
                            "batch_norm_synced_over_ranks_matches_pytorch"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s %s %s 2>&1", MPIRUN, self, tests[i]);
        int rc = test_run(cmd, out, sizeof out);
        const char *a = strstr(out, "1 passed, 0 failed");
        CHECK(rc == 0 && a && strstr(a + 1, "1 passed, 0 failed"), "%s: rc %d:\n%s", tests[i],
              rc, out);
    }
}

/* ResNet's sync_bn reaches every batch norm: in one process it is plain
 * batch norm, in a context of several shards an error naming the cause. */
TEST(resnet_sync_bn_is_plain_batch_norm_on_one_rank)
{
    qkv_comm *c = qkv_comm_open(&(qkv_comm_opts){.kind = QKV_COMM_LOCAL});
    REQUIRE(c, "open: %s", qkv_error());
    qkv_resnet_config cfg = {.depth = 18, .in_channels = 1, .num_classes = 4, .small_stem = 1};
    qkv_resnet *m[2];
    qkv_params *ps[2];
    qkv_ctx *ctx = qkv_ctx_new(), *cx[2];
    qkv_tensor *x = qkv_randn(ctx, 4, (int64_t[]){4, 1, 8, 8}, 0.0f, 1.0f), *y[2];
    /* a gradient that differs by row (the sum of the logits would give
     * batch norm a gradient of zero in exact arithmetic, rounding noise) */
    qkv_tensor *dy = qkv_randn(ctx, 2, (int64_t[]){4, 4}, 0.0f, 1.0f);
    for (int i = 0; i < 2; i++) {
        m[i] = calloc(1, sizeof *m[i]);
        ps[i] = qkv_params_new();
        cfg.sync_bn = i ? c : NULL;
        REQUIRE(qkv_resnet_init(m[i], ps[i], "", &cfg) == QKV_OK &&
                    qkv_params_alloc(ps[i]) == QKV_OK, "%s", qkv_error());
        qkv_rng rng;
        qkv_rng_seed(&rng, 3);
        qkv_resnet_reset(m[i], &rng);
        cx[i] = qkv_ctx_new(); /* a tape each: one backward must not run the other's */
        qkv_set_training(cx[i], 1);
        y[i] = qkv_resnet_forward(cx[i], m[i], x, QKV_RESNET_LOGITS, 1);
        REQUIRE(y[i] && qkv_backward_with(cx[i], y[i], dy->data) == QKV_OK, "%s", qkv_error());
    }
    CHECK_CLOSE(y[1], y[0], 1e-6, 1e-6);
    int64_t n;
    float *g1 = qkv_params_grads(ps[1], &n), *v1 = qkv_params_values(ps[1], NULL);
    CHECK_CLOSE_BUF(g1, qkv_wrap(ctx, 1, &n, qkv_params_grads(ps[0], NULL)), 1e-5, 1e-5);
    CHECK_CLOSE_BUF(v1, qkv_wrap(ctx, 1, &n, qkv_params_values(ps[0], NULL)), 1e-6, 1e-6);
    qkv_shards *sh = qkv_shards_new(ps[1], 2);
    REQUIRE(sh, "%s", qkv_error());
    qkv_ctx *s0 = qkv_shards_ctx(sh, 1);
    qkv_set_training(s0, 1);
    CHECK(!qkv_resnet_forward(s0, m[1], x, QKV_RESNET_LOGITS, 1) &&
              strstr(qkv_error(), "one shard per rank"), "in a shard: %s", qkv_error());
    qkv_shards_free(sh);
    for (int i = 0; i < 2; i++) {
        qkv_ctx_free(cx[i]);
        qkv_params_free(ps[i]);
        free(m[i]);
    }
    qkv_ctx_free(ctx);
    qkv_comm_close(c);
}

/* ---- DETR's evaluation split over ranks ---- */

/* 12 scenes of 64 pixels whose validation ground truth is rewritten to one
 * box a scene, [2, 2, 60, 60], of category 1 + i % 3: the boxes of the DETR
 * below (the whole image, 0.95 of each side) match them at every IoU
 * threshold, so its scores and classes alone make the COCO numbers, which
 * are then far from 0. false (and the test failed) if it cannot. */
static bool make_eval_set(const char *dir)
{
    char cmd[1024], out[4096], path[600];
    snprintf(cmd, sizeof cmd, "%s data scenes --out %s --train 2 --val 12 --size 64 --seed 5 2>&1",
             test_qkv_bin(), dir);
    int rc = test_run(cmd, out, sizeof out);
    if (rc != 0) {
        test_fail(__FILE__, __LINE__, "data scenes: exit %d\n%s", rc, out);
        return false;
    }
    snprintf(path, sizeof path, "%s/annotations/val.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        test_fail(__FILE__, __LINE__, "cannot write %s", path);
        return false;
    }
    fprintf(f, "{\"images\": [");
    for (int i = 1; i <= 12; i++)
        fprintf(f, "%s{\"id\": %d, \"file_name\": \"%06d.png\", \"width\": 64, \"height\": 64}",
                i > 1 ? ", " : "", i, i);
    fprintf(f, "], \"annotations\": [");
    for (int i = 1; i <= 12; i++)
        fprintf(f, "%s{\"id\": %d, \"image_id\": %d, \"category_id\": %d, \"bbox\": [2, 2, 60, "
                "60], \"area\": 3600, \"iscrowd\": 0}", i > 1 ? ", " : "", i, i, 1 + i % 3);
    fprintf(f, "], \"categories\": [{\"id\": 1}, {\"id\": 2}, {\"id\": 3}]}\n");
    return fclose(f) == 0;
}

/* Rank r of qkv_comm_open(NULL) (one process in the suite, two under
 * detr_evaluate_split_over_two_ranks) scores a small random DETR on the 12
 * images in batches of 4 split between the ranks (2 + 1 batches), the
 * detections gathered: the 12 numbers and the precision and recall arrays
 * are those of qkv_detr_evaluate on every image in this process, exactly;
 * and AP is not 0 (the check could not pass on empty detections). */
TEST(detr_evaluate_split_over_ranks_is_one_process)
{
    qkv_comm *c = qkv_comm_open(NULL);
    REQUIRE(c, "open: %s", qkv_error());
    char made[256] = "", img[600], ann[600];
    const char *dir = getenv("QKV_TEST_DETR_EVAL");
    if (!dir) {
        temp_dir(made, sizeof made, "detr-eval");
        REQUIRE(made[0] && make_eval_set(made), "the data set");
        dir = made;
    }
    snprintf(ann, sizeof ann, "%s/annotations/val.json", dir);
    snprintf(img, sizeof img, "%s/val", dir);
    qkv_det_dataset *d = qkv_det_dataset_open(ann, img);
    REQUIRE(d, "%s", qkv_error());
    qkv_detr_config mc = {.backbone_depth = 18, .in_channels = 1, .backbone_bn = 1,
                          .backbone_width = 8, .hidden_dim = 16, .num_heads = 2,
                          .dim_feedforward = 32, .enc_layers = 1, .dec_layers = 1,
                          .num_queries = 5, .num_classes = 4};
    qkv_detr_input in = {.size = 64, .max_size = 64, .mean = {0.45f}, .std = {0.25f}};
    qkv_model *model = qkv_model_new_detr(&mc, &in, 0, NULL);
    REQUIRE(model, "%s", qkv_error());
    qkv_detr *m = qkv_model_detr(model);
    qkv_rng rng;
    qkv_rng_seed(&rng, 11);
    qkv_detr_reset(m, &rng);
    /* boxes: sigmoid(0, 0, 3, 3) = the centre, 0.95 of each side */
    qkv_tensor *w = m->bbox_embed[2].weight, *b = m->bbox_embed[2].bias;
    memset(w->data, 0, (size_t)qkv_numel(w) * sizeof(float));
    b->data[0] = b->data[1] = 0.0f, b->data[2] = b->data[3] = 3.0f;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_coco_result one, split;
    REQUIRE(qkv_detr_evaluate(ctx, m, d, 0, &in, 4, &one) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_detr_evaluate_ranks(ctx, m, d, 0, &in, 4, c, &split) == QKV_OK, "rank %d: %s",
            qkv_comm_rank(c), qkv_error());
    CHECK(one.stats[0] > 0.05, "AP %g: the detections do not reach the boxes", one.stats[0]);
    int64_t np = QKV_COCO_T * QKV_COCO_R * one.n_categories * QKV_COCO_A * QKV_COCO_M;
    int64_t nr = QKV_COCO_T * one.n_categories * QKV_COCO_A * QKV_COCO_M;
    /* exactly: the same detections, the same arithmetic */
    for (int i = 0; i < QKV_COCO_NSTATS; i++)
        CHECK_SCALAR(split.stats[i], one.stats[i], 0, 0);
    CHECK(split.n_categories == one.n_categories && !memcmp(split.precision, one.precision,
                                                           (size_t)np * sizeof(double)) &&
              !memcmp(split.recall, one.recall, (size_t)nr * sizeof(double)),
          "rank %d: the precision or recall arrays differ", qkv_comm_rank(c));
    qkv_coco_result_free(&one);
    qkv_coco_result_free(&split);
    qkv_ctx_free(ctx);
    qkv_model_free(model);
    qkv_det_dataset_free(d);
    if (made[0])
        remove_dir(made);
    CHECK(qkv_comm_close(c) == QKV_OK, "close: %s", qkv_error());
}

TEST(detr_evaluate_split_over_two_ranks)
{
    if (!have_mpi())
        return;
    char dir[256], self[2048], cmd[4096], out[8192];
    temp_dir(dir, sizeof dir, "detr-eval2");
    REQUIRE(dir[0] && make_eval_set(dir), "the data set");
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(k > 0, "readlink /proc/self/exe");
    self[k] = '\0';
    snprintf(cmd, sizeof cmd, "QKV_TEST_DETR_EVAL=%s %s %s "
             "detr_evaluate_split_over_ranks_is_one_process 2>&1", dir, MPIRUN, self);
    int rc = test_run(cmd, out, sizeof out);
    const char *a = strstr(out, "1 passed, 0 failed");
    CHECK(rc == 0 && a && strstr(a + 1, "1 passed, 0 failed"), "rc %d:\n%s", rc, out);
    remove_dir(dir);
}
