/* test_checkpoint.c - state_dict save/load (strict, by name), checkpoints,
 * bit-identical resume, and a kill during a save. */
#include "test.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* a two-layer MLP with PyTorch's names for nn.Sequential(Linear, Tanh, Linear) */
typedef struct {
    qkv_nn_linear l0, l2;
} mlp;

static qkv_params *mlp_new(mlp *m, int64_t in, int64_t hid, int64_t out, uint64_t seed)
{
    qkv_params *ps = qkv_params_new();
    qkv_nn_linear_init(&m->l0, ps, "0", in, hid, 1);
    qkv_nn_linear_init(&m->l2, ps, "2", hid, out, 1);
    if (qkv_params_alloc(ps) != QKV_OK)
        return NULL;
    qkv_rng r;
    qkv_rng_seed(&r, seed);
    qkv_nn_linear_reset(&m->l0, &r);
    qkv_nn_linear_reset(&m->l2, &r);
    return ps;
}

static void tmp_path(char *buf, size_t n, const char *leaf)
{
    snprintf(buf, n, "/tmp/qkv-test-%d-%s", (int)getpid(), leaf);
}

TEST(state_dict_round_trip_and_strict_errors)
{
    mlp a, b, c;
    qkv_params *pa = mlp_new(&a, 3, 4, 2, 1), *pb = mlp_new(&b, 3, 4, 2, 2);
    char path[256];
    tmp_path(path, sizeof path, "sd.safetensors");
    REQUIRE(qkv_params_save(pa, path, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_params_load(pb, path, 1) == QKV_OK, "%s", qkv_error());
    CHECK(!memcmp(a.l0.weight->data, b.l0.weight->data, 12 * sizeof(float)), "weights differ");
    CHECK(!memcmp(a.l2.bias->data, b.l2.bias->data, 2 * sizeof(float)), "bias differs");

    /* a model with another layout: missing and unexpected keys by name */
    qkv_params *pc = qkv_params_new();
    qkv_nn_linear_init(&c.l0, pc, "0", 3, 4, 1);
    qkv_nn_linear_init(&c.l2, pc, "3", 4, 2, 1);
    qkv_params_alloc(pc);
    float before = c.l0.weight->data[0] = 123.0f;
    CHECK(qkv_params_load(pc, path, 1) != QKV_OK, "strict load accepted other keys");
    CHECK(strstr(qkv_error(), "missing key(s) (2): [3.weight, 3.bias]") &&
              strstr(qkv_error(), "unexpected key(s) (2): [2.weight, 2.bias]"),
          "message: %s", qkv_error());
    CHECK(c.l0.weight->data[0] == before, "a failed load changed the model");
    qkv_params_free(pc);

    /* wrong shape names the key and both shapes */
    mlp d;
    qkv_params *pd = mlp_new(&d, 3, 5, 2, 3);
    CHECK(qkv_params_load(pd, path, 1) == QKV_ERR_SHAPE, "shape mismatch accepted");
    CHECK(strstr(qkv_error(), "0.weight: file (4, 3), model (5, 3)"), "message: %s", qkv_error());
    qkv_params_free(pd);

    /* a missing file names the file */
    CHECK(qkv_params_load(pb, "/nonexistent/x.safetensors", 1) == QKV_ERR_IO, "no error");
    CHECK(strstr(qkv_error(), "/nonexistent/x.safetensors"), "message: %s", qkv_error());
    unlink(path);
    qkv_params_free(pa);
    qkv_params_free(pb);
}

TEST(state_dict_pytorch_both_ways)
{
    /* PyTorch writes an nn.Sequential(Linear(3,4), Tanh(), Linear(4,2))
     * state_dict; qkv loads it strictly, runs it, saves it back; PyTorch
     * loads qkv's file with strict=True and compares outputs. */
    char in[256], out[256], cmd[1024];
    tmp_path(in, sizeof in, "torch.safetensors");
    tmp_path(out, sizeof out, "qkv.safetensors");
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/parity/state_dict_io.py write %s", in);
    REQUIRE(system(cmd) == 0, "python writer failed: %s", cmd);
    mlp m;
    qkv_params *ps = mlp_new(&m, 3, 4, 2, 9);
    REQUIRE(qkv_params_load(ps, in, 1) == QKV_OK, "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_st_file *f = qkv_st_open(in);
    REQUIRE(f, "%s", qkv_error());
    qkv_tensor *x = qkv_st_load(ctx, f, "__x"), *want = qkv_st_load(ctx, f, "__y");
    qkv_tensor *h = qkv_nn_linear_forward(ctx, &m.l0, x);
    qkv_tensor *y = qkv_nn_linear_forward(ctx, &m.l2, qkv_tanh(ctx, h));
    CHECK_CLOSE(y, want, 1e-7, 5e-7);
    qkv_st_close(f);
    REQUIRE(qkv_params_save(ps, out, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/parity/state_dict_io.py check %s %s", in,
             out);
    CHECK(system(cmd) == 0, "PyTorch did not accept qkv's state_dict: %s", cmd);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    unlink(in);
    unlink(out);
}

/* ---- resume: 2N steps in one go == N steps, checkpoint, fresh process
 * state, resume, N steps; bit for bit ---- */

typedef struct {
    mlp m;
    qkv_params *ps;
    qkv_optim *opt;
    qkv_ctx *ctx;
    qkv_rng data_rng;
} run;

static void run_init(run *r)
{
    r->ps = mlp_new(&r->m, 4, 8, 1, 5);
    r->opt = qkv_optim_new(r->ps, &(qkv_optim_config){.kind = QKV_ADAMW, .lr = 1e-2f,
                                                       .weight_decay = 0.01f});
    r->ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(r->ctx), 11);
    qkv_rng_seed(&r->data_rng, 12);
}

static void run_free(run *r)
{
    qkv_optim_free(r->opt);
    qkv_params_free(r->ps);
    qkv_ctx_free(r->ctx);
}

static bool run_steps(run *r, int n)
{
    for (int s = 0; s < n; s++) {
        float xs[16 * 4], ys[16];
        for (int i = 0; i < 16; i++) {
            double t = 0;
            for (int j = 0; j < 4; j++)
                t += (xs[i * 4 + j] = (float)qkv_rng_normal(&r->data_rng)) * (j + 1);
            ys[i] = (float)sin(t);
        }
        qkv_tensor *x = qkv_from_data(r->ctx, 2, SHAPE(16, 4), xs);
        qkv_tensor *y = qkv_from_data(r->ctx, 2, SHAPE(16, 1), ys);
        qkv_tensor *h = qkv_dropout(r->ctx, qkv_tanh(r->ctx, qkv_nn_linear_forward(r->ctx, &r->m.l0, x)), 0.1f);
        qkv_tensor *loss = qkv_mse_loss(r->ctx, qkv_nn_linear_forward(r->ctx, &r->m.l2, h), y,
                                        QKV_REDUCE_MEAN);
        if (!loss || qkv_backward(r->ctx, loss) != QKV_OK)
            return false;
        qkv_clip_grad_norm(r->ps, 1.0f);
        qkv_optim_step(r->opt);
        qkv_params_zero_grad(r->ps);
        qkv_ctx_reset(r->ctx);
    }
    return true;
}

static bool same_params(qkv_params *a, qkv_params *b)
{
    for (int64_t i = 0; i < qkv_params_count(a); i++) {
        qkv_tensor *x = qkv_params_at(a, i), *y = qkv_params_at(b, i);
        if (memcmp(x->data, y->data, (size_t)qkv_numel(x) * sizeof(float)))
            return false;
    }
    return true;
}

TEST(resume_is_bit_identical)
{
    char path[256];
    tmp_path(path, sizeof path, "resume.safetensors");
    run once, first, second;
    run_init(&once);
    REQUIRE(run_steps(&once, 40), "%s", qkv_error());

    run_init(&first);
    REQUIRE(run_steps(&first, 20), "%s", qkv_error());
    qkv_checkpoint_info info = {.step = 20, .epoch = 1, .config = "{\"lr\": 0.01}"};
    info.rng[0] = *qkv_ctx_rng(first.ctx);
    info.rng[1] = first.data_rng;
    REQUIRE(qkv_checkpoint_save(path, first.ps, first.opt, &info) == QKV_OK, "%s", qkv_error());
    run_free(&first);

    run_init(&second); /* fresh state: different until loaded */
    qkv_checkpoint_info got;
    REQUIRE(qkv_checkpoint_load(path, second.ps, second.opt, &got) == QKV_OK, "%s", qkv_error());
    CHECK(got.step == 20 && got.epoch == 1, "step %lld epoch %lld", (long long)got.step,
          (long long)got.epoch);
    CHECK(got.config && !strcmp(got.config, "{\"lr\": 0.01}"), "config lost");
    *qkv_ctx_rng(second.ctx) = got.rng[0];
    second.data_rng = got.rng[1];
    REQUIRE(run_steps(&second, 20), "%s", qkv_error());
    CHECK(same_params(once.ps, second.ps), "40 steps and 20 + resume + 20 differ");
    CHECK(qkv_optim_steps(second.opt) == 40, "optimizer steps %lld",
          (long long)qkv_optim_steps(second.opt));
    run_free(&once);
    run_free(&second);
    unlink(path);
}

TEST(kill_during_checkpoint_keeps_previous)
{
    char path[256];
    tmp_path(path, sizeof path, "kill.safetensors");
    /* a model big enough that a save takes a while */
    qkv_params *ps = qkv_params_new();
    qkv_tensor *w = qkv_params_add(ps, "w", 2, SHAPE(1024, 1024), 0);
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "%s", qkv_error());
    qkv_init_constant(w, 1.0f);
    qkv_checkpoint_info info = {.step = 1};
    REQUIRE(qkv_checkpoint_save(path, ps, NULL, &info) == QKV_OK, "%s", qkv_error());
    for (int trial = 0; trial < 8; trial++) {
        pid_t pid = fork();
        REQUIRE(pid >= 0, "fork");
        if (pid == 0) {
            qkv_init_constant(w, 2.0f);
            for (int k = 0; k < 1000; k++)
                qkv_checkpoint_save(path, ps, NULL, &info);
            _exit(0);
        }
        usleep(2000 + 3000 * trial);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        qkv_init_constant(w, 0.0f);
        CHECK(qkv_checkpoint_load(path, ps, NULL, NULL) == QKV_OK, "trial %d: %s", trial,
              qkv_error());
        CHECK(w->data[0] == 1.0f || w->data[0] == 2.0f, "trial %d: loaded %g", trial,
              w->data[0]);
        CHECK(w->data[1024 * 1024 - 1] == w->data[0], "trial %d: a torn file loaded", trial);
    }
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unlink(tmp);
    unlink(path);
    qkv_params_free(ps);
}
