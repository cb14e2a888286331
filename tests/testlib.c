/* testlib.c - gradient checks and PyTorch fixtures for the tests. */
#include "test.h"

#include <sys/wait.h>

gc_input gc_rand(qkv_rng *r, int ndim, const int64_t *shape, float lo, float hi, bool grad)
{
    gc_input in = {.ndim = ndim, .grad = grad};
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        in.shape[i] = shape[i];
        n *= shape[i];
    }
    in.data = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        in.data[i] = lo + (hi - lo) * (float)qkv_rng_uniform(r);
    return in;
}

void gc_free(int n, gc_input *in)
{
    for (int i = 0; i < n; i++) {
        free(in[i].data);
        in[i].data = NULL;
    }
}

static int64_t numel_of(const gc_input *in)
{
    int64_t n = 1;
    for (int i = 0; i < in->ndim; i++)
        n *= in->shape[i];
    return n;
}

/* loss = sum(out * R), R fixed by a seed; in double */
static double eval_loss(qkv_ctx *ctx, gc_fn f, int n, gc_input *in, void *ud, bool grad,
                        qkv_tensor **wrapped, float **grads)
{
    qkv_ctx_reset(ctx);
    qkv_set_grad_enabled(ctx, grad);
    qkv_tensor *ts[16];
    for (int i = 0; i < n; i++) {
        ts[i] = qkv_wrap(ctx, in[i].ndim, in[i].shape, in[i].data);
        if (grad && in[i].grad)
            qkv_requires_grad(ts[i]);
        if (wrapped)
            wrapped[i] = ts[i];
    }
    qkv_rng_seed(qkv_ctx_rng(ctx), 1234); /* same dropout masks every call */
    qkv_tensor *out = f(ctx, ts, ud);
    if (!out)
        return NAN;
    int64_t m = qkv_numel(out);
    qkv_rng r;
    qkv_rng_seed(&r, 99);
    double loss = 0;
    float *R = malloc((size_t)(m ? m : 1) * sizeof(float));
    for (int64_t i = 0; i < m; i++) {
        R[i] = (float)(qkv_rng_uniform(&r) * 2 - 1);
        loss += (double)qkv_get(out, i) * R[i];
    }
    if (grad) {
        if (qkv_backward_with(ctx, out, R) != QKV_OK) {
            free(R);
            return NAN;
        }
        for (int i = 0; i < n; i++)
            grads[i] = in[i].grad ? ts[i]->grad : NULL;
    }
    free(R);
    return loss;
}

double gradcheck(gc_fn f, int n, gc_input *in, void *ud, double eps)
{
    qkv_ctx *ctx = qkv_ctx_new();
    float *grads[16] = {0};
    double worst = 0;
    if (isnan(eval_loss(ctx, f, n, in, ud, true, NULL, grads))) {
        fprintf(stderr, "    gradcheck: the op failed: %s\n", qkv_error());
        qkv_ctx_free(ctx);
        return NAN;
    }
    /* copy analytic grads out of the arena before it is reset */
    float *ana[16] = {0};
    for (int i = 0; i < n; i++) {
        if (!in[i].grad)
            continue;
        int64_t m = numel_of(&in[i]);
        ana[i] = calloc((size_t)(m ? m : 1), sizeof(float));
        if (grads[i])
            memcpy(ana[i], grads[i], (size_t)m * sizeof(float));
    }
    for (int i = 0; i < n && !isnan(worst); i++) {
        if (!in[i].grad)
            continue;
        int64_t m = numel_of(&in[i]);
        double *num = malloc((size_t)(m ? m : 1) * sizeof(double));
        double scale = 0;
        for (int64_t k = 0; k < m; k++) {
            float x0 = in[i].data[k];
            double h = eps * fmax(1.0, fabs(x0));
            in[i].data[k] = (float)(x0 + h);
            double hp = (double)in[i].data[k] - x0;
            double lp = eval_loss(ctx, f, n, in, ud, false, NULL, NULL);
            in[i].data[k] = (float)(x0 - h);
            double hm = x0 - (double)in[i].data[k];
            double lm = eval_loss(ctx, f, n, in, ud, false, NULL, NULL);
            in[i].data[k] = x0;
            num[k] = (lp - lm) / (hp + hm);
            scale = fmax(scale, fabs(num[k]));
        }
        double floor = fmax(scale * 1e-2, 1e-6);
        for (int64_t k = 0; k < m; k++) {
            double e = fabs(ana[i][k] - num[k]) / fmax(floor, fabs(num[k]));
            if (!(e <= worst)) {
                worst = e;
                if (e > 1e-2)
                    fprintf(stderr, "    input %d element %lld: analytic %.6g numeric %.6g\n", i,
                            (long long)k, ana[i][k], num[k]);
            }
        }
        free(num);
    }
    for (int i = 0; i < n; i++)
        free(ana[i]);
    qkv_ctx_free(ctx);
    return worst;
}

bool test_book_seq2seq(qkv_nmt_data *d, qkv_seq2seq *m, qkv_params **ps, float dropout,
                       uint64_t seed)
{
    *ps = qkv_params_new();
    qkv_tf_config cfg = {.layout = QKV_TF_D2L, .d_model = 32, .n_heads = 4, .d_ffn = 64,
                         .n_enc = 2, .n_dec = 2, .dropout = dropout};
    if (qkv_nmt_load(d, NULL, 600, 10) != QKV_OK || !*ps ||
        qkv_seq2seq_init(m, *ps, &cfg, qkv_vocab_size(d->src_vocab),
                         qkv_vocab_size(d->tgt_vocab)) != QKV_OK ||
        qkv_params_alloc(*ps) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "the book's model: %s", qkv_error());
        return false;
    }
    qkv_rng r;
    qkv_rng_seed(&r, seed);
    qkv_seq2seq_reset(m, &r);
    return true;
}

qkv_st_file *fixture_open(const char *name)
{
    const char *dir = getenv("QKV_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir ? dir : "build/parity", name);
    qkv_st_file *f = qkv_st_open(path);
    if (!f)
        test_fail(__FILE__, __LINE__, "fixture %s: %s (run `make fixtures`)", path, qkv_error());
    return f;
}

qkv_tensor *fixture_get(qkv_ctx *ctx, qkv_st_file *f, const char *name)
{
    if (!f)
        return NULL;
    qkv_tensor *t = qkv_st_load(ctx, f, name);
    if (!t)
        test_fail(__FILE__, __LINE__, "fixture tensor %s: %s", name, qkv_error());
    return t;
}

double max_rel_diff(const qkv_tensor *got, const qkv_tensor *want)
{
    if (qkv_numel(got) != qkv_numel(want))
        return INFINITY;
    int64_t n = qkv_numel(want);
    double scale = 1, worst = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(qkv_get(want, i)));
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)qkv_get(got, i) - qkv_get(want, i)) / scale;
        if (!(d <= worst))
            worst = d;
    }
    return worst;
}

double max_rel_diff_buf(const float *got, const qkv_tensor *want)
{
    int64_t n = qkv_numel(want);
    double scale = 1, worst = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(qkv_get(want, i)));
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - qkv_get(want, i)) / scale;
        if (!(d <= worst))
            worst = d;
    }
    return worst;
}

const char *test_qkv_bin(void)
{
    const char *b = getenv("QKV_BIN");
    return b && *b ? b : "build/qkv";
}

int test_run(const char *cmd, char *out, size_t n)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t len = fread(out, 1, n - 1, p);
    out[len] = '\0';
    while (fgetc(p) != EOF)
        ;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- closeness: |got - want| <= atol + rtol * |want| ---- */

static bool close_report(const char *file, int line, const char *what, int64_t n,
                         float (*get)(const void *, int64_t), const void *got,
                         const qkv_tensor *want, double atol, double rtol)
{
    int64_t worst = -1;
    double worst_excess = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double g = get(got, i), w = qkv_get(want, i);
        double excess = fabs(g - w) - (atol + rtol * fabs(w));
        if (!(excess <= 0.0) && (worst < 0 || !(excess <= worst_excess))) {
            worst = i;
            worst_excess = isnan(excess) ? INFINITY : excess;
        }
    }
    if (worst < 0)
        return true;
    char ws[128];
    test_fail(file, line,
              "%s: element %lld of %s: got %.9g, want %.9g (|diff| %.3g > atol %g + rtol %g * "
              "|want|)",
              what, (long long)worst, qkv_shape_str(want, ws, sizeof ws), get(got, worst),
              qkv_get(want, worst), fabs((double)get(got, worst) - qkv_get(want, worst)), atol,
              rtol);
    return false;
}

static float get_tensor(const void *t, int64_t i) { return qkv_get(t, i); }
static float get_buf(const void *b, int64_t i) { return ((const float *)b)[i]; }

bool check_close(const char *file, int line, const char *what, const qkv_tensor *got,
                 const qkv_tensor *want, double atol, double rtol)
{
    char gs[128], ws[128];
    if (!got || !want) {
        test_fail(file, line, "%s: %s is NULL (%s)", what, got ? "want" : "got", qkv_error());
        return false;
    }
    if (!qkv_same_shape(got, want)) {
        test_fail(file, line, "%s: shape %s, want %s", what, qkv_shape_str(got, gs, sizeof gs),
                  qkv_shape_str(want, ws, sizeof ws));
        return false;
    }
    return close_report(file, line, what, qkv_numel(want), get_tensor, got, want, atol, rtol);
}

bool check_close_buf(const char *file, int line, const char *what, const float *got,
                     const qkv_tensor *want, double atol, double rtol)
{
    if (!got || !want) {
        test_fail(file, line, "%s: %s is NULL (%s)", what, got ? "want" : "got", qkv_error());
        return false;
    }
    return close_report(file, line, what, qkv_numel(want), get_buf, got, want, atol, rtol);
}

bool check_close_scalar(const char *file, int line, const char *what, double got, double want,
                        double atol, double rtol)
{
    if (fabs(got - want) <= atol + rtol * fabs(want))
        return true;
    test_fail(file, line, "%s = %.9g, want %.9g (|diff| %.3g > atol %g + rtol %g * |want|)",
              what, got, want, fabs(got - want), atol, rtol);
    return false;
}
