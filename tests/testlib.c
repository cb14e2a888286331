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

/* ---- slack: how tight each check's tolerance is (QKV_TEST_SLACK=1) ---- */

static bool slack_wanted(void)
{
    const char *e = getenv("QKV_TEST_SLACK");
    return e && *e && strcmp(e, "0") != 0;
}

/* |diff| / (atol + rtol * |want|): <= 1 passes; NaN scores +inf */
static double excess_ratio(double got, double want, double atol, double rtol)
{
    double d = fabs(got - want), bound = atol + rtol * fabs(want);
    if (isnan(d))
        return INFINITY;
    return bound > 0 ? d / bound : (d == 0 ? 0.0 : INFINITY);
}

enum { N_RT = 6 };
static const double slack_rtols[N_RT] = {0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3};

typedef struct {
    double ratio, max_diff, largest;
    double needs[N_RT]; /* the atol each of slack_rtols would need */
} slack_stats;

static void slack_add(slack_stats *st, double got, double want, double ratio)
{
    double d = fabs(got - want);
    st->ratio = fmax(st->ratio, isnan(ratio) ? INFINITY : ratio);
    st->max_diff = fmax(st->max_diff, d);
    st->largest = fmax(st->largest, fabs(want));
    for (int k = 0; k < N_RT; k++)
        st->needs[k] = fmax(st->needs[k], d - slack_rtols[k] * fabs(want));
}

/* "slack FILE:LINE R ..." (one line per check; gradient checks one per input) */
static void slack_print(const char *file, int line, const char *what, int input,
                        const slack_stats *st)
{
    char in[32] = "";
    if (input >= 0)
        snprintf(in, sizeof in, " input %d", input);
    fprintf(stderr,
            "slack %s:%d R %.3g max|diff| %.3g max|want| %.3g atol needed at rtol "
            "0/1e-7/1e-6/1e-5/1e-4/1e-3: %.2g %.2g %.2g %.2g %.2g %.2g [%s] (%s%s)\n",
            file, line, st->ratio, st->max_diff, st->largest, st->needs[0], st->needs[1],
            st->needs[2], st->needs[3], st->needs[4], st->needs[5], test_current_note(), what,
            in);
}

/* where the running gradient check was called from, for its slack lines */
static struct {
    const char *file, *what;
    int line;
} gc_site = {"(gradcheck_run)", "gradcheck", 0};

gc_result gradcheck_run(gc_fn f, int n, gc_input *in, void *ud, double step, double atol,
                        double rtol)
{
    gc_result res = {.ok = true, .input = -1, .index = -1};
    qkv_ctx *ctx = qkv_ctx_new();
    float *grads[16] = {0};
    if (isnan(eval_loss(ctx, f, n, in, ud, true, NULL, grads))) {
        qkv_ctx_free(ctx);
        res.ok = false;
        res.op_failed = true;
        return res;
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
    for (int i = 0; i < n; i++) {
        if (!in[i].grad)
            continue;
        int64_t m = numel_of(&in[i]);
        double *num = malloc((size_t)(m ? m : 1) * sizeof(double));
        double largest = 0;
        for (int64_t k = 0; k < m; k++) {
            float x0 = in[i].data[k];
            double h = step * fmax(1.0, fabs(x0));
            in[i].data[k] = (float)(x0 + h);
            double hp = (double)in[i].data[k] - x0;
            double lp = eval_loss(ctx, f, n, in, ud, false, NULL, NULL);
            in[i].data[k] = (float)(x0 - h);
            double hm = x0 - (double)in[i].data[k];
            double lm = eval_loss(ctx, f, n, in, ud, false, NULL, NULL);
            in[i].data[k] = x0;
            num[k] = (lp - lm) / (hp + hm);
            largest = fmax(largest, fabs(num[k]));
        }
        slack_stats st = {0};
        for (int64_t k = 0; k < m; k++) {
            double r = excess_ratio(ana[i][k], num[k], atol, rtol);
            slack_add(&st, ana[i][k], num[k], r);
            if (res.input < 0 || !(r <= res.ratio)) {
                res.ratio = r;
                res.input = i;
                res.index = k;
                res.analytic = ana[i][k];
                res.numeric = num[k];
            }
        }
        if (slack_wanted())
            slack_print(gc_site.file, gc_site.line, gc_site.what, i, &st);
        if (res.ratio > 1)
            res.ok = false;
        if (largest > 0 && largest * (1 - rtol) <= atol && !res.vacuous) {
            res.ok = false;
            res.vacuous = true;
            res.input = i;
            res.numeric = largest;
        }
        free(num);
        if (res.vacuous)
            break;
    }
    for (int i = 0; i < n; i++)
        free(ana[i]);
    qkv_ctx_free(ctx);
    return res;
}

bool test_gradcheck(const char *file, int line, const char *what, gc_fn f, int n, gc_input *in,
                void *ud, double step, double atol, double rtol)
{
    char w[256];
    snprintf(w, sizeof w, "gradcheck %s", what);
    gc_site.file = file, gc_site.line = line, gc_site.what = w;
    gc_result r = gradcheck_run(f, n, in, ud, step, atol, rtol);
    gc_site.file = "(gradcheck_run)", gc_site.line = 0, gc_site.what = "gradcheck";
    if (r.ok)
        return true;
    if (r.op_failed)
        test_fail(file, line, "gradcheck %s: the op failed: %s", what, qkv_error());
    else if (r.vacuous)
        test_fail(file, line,
                  "gradcheck %s: input %d: zeros would pass: its largest numeric gradient "
                  "%.3g is within atol %g + rtol %g * |numeric| (state atol below the "
                  "gradient's scale)",
                  what, r.input, r.numeric, atol, rtol);
    else
        test_fail(file, line,
                  "gradcheck %s: input %d element %lld: analytic %.9g, numeric %.9g (|diff| "
                  "%.3g > atol %g + rtol %g * |numeric|)",
                  what, r.input, (long long)r.index, r.analytic, r.numeric,
                  fabs(r.analytic - r.numeric), atol, rtol);
    return false;
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

double test_max_abs(const float *x, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

void test_seq2seq_gelu(qkv_seq2seq *m)
{
    for (int64_t l = 0; l < m->tf.cfg.n_enc; l++)
        m->tf.enc[l].ffn.activation = QKV_ACT_GELU;
    for (int64_t l = 0; l < m->tf.cfg.n_dec; l++)
        m->tf.dec[l].ffn.activation = QKV_ACT_GELU;
    m->tf.cfg.activation = QKV_ACT_GELU;
}

qkv_st_file *fixture_open(const char *name)
{
    const char *dir = getenv("QKV_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir ? dir : "build/parity", name);
    test_note("%s", name);
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

typedef double (*getter)(const void *, int64_t);
static double get_tensor(const void *t, int64_t i) { return qkv_get(t, i); }
static double get_f32(const void *b, int64_t i) { return ((const float *)b)[i]; }
static double get_f64(const void *b, int64_t i) { return ((const double *)b)[i]; }

/* Compares n elements; `shape` names want's shape in messages. */
static bool close_report(const char *file, int line, const char *what, const char *shape,
                         int64_t n, getter gg, const void *got, getter gw, const void *want,
                         double atol, double rtol)
{
    if (!(atol >= 0) || !(rtol >= 0 && rtol < 1)) {
        test_fail(file, line, "%s: bad tolerance atol %g, rtol %g (atol >= 0, 0 <= rtol < 1)",
                  what, atol, rtol);
        return false;
    }
    int64_t worst = -1;
    double worst_ratio = 0, largest = 0;
    bool slack = slack_wanted();
    slack_stats st = {0};
    for (int64_t i = 0; i < n; i++) {
        double g = gg(got, i), w = gw(want, i), r = excess_ratio(g, w, atol, rtol);
        largest = fmax(largest, fabs(w));
        if (slack)
            slack_add(&st, g, w, r);
        if (worst < 0 || !(r <= worst_ratio)) {
            worst = i;
            worst_ratio = r;
        }
    }
    if (slack)
        slack_print(file, line, what, -1, &st);
    if (worst >= 0 && worst_ratio > 1) {
        double g = gg(got, worst), w = gw(want, worst);
        test_fail(file, line,
                  "%s: element %lld of %s: got %.9g, want %.9g (|diff| %.3g > atol %g + rtol %g "
                  "* |want|)",
                  what, (long long)worst, shape, g, w, fabs(g - w), atol, rtol);
        return false;
    }
    if (largest > 0 && largest * (1 - rtol) <= atol) {
        test_fail(file, line,
                  "%s: zeros would pass: the largest |want| %.3g of %s is within atol %g + "
                  "rtol %g * |want| (state atol below the values' scale)",
                  what, largest, shape, atol, rtol);
        return false;
    }
    return true;
}

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
    return close_report(file, line, what, qkv_shape_str(want, ws, sizeof ws), qkv_numel(want),
                        get_tensor, got, get_tensor, want, atol, rtol);
}

bool check_close_buf(const char *file, int line, const char *what, const float *got,
                     const qkv_tensor *want, double atol, double rtol)
{
    char ws[128];
    if (!got || !want) {
        test_fail(file, line, "%s: %s is NULL (%s)", what, got ? "want" : "got", qkv_error());
        return false;
    }
    return close_report(file, line, what, qkv_shape_str(want, ws, sizeof ws), qkv_numel(want),
                        get_f32, got, get_tensor, want, atol, rtol);
}

bool check_close_grad(const char *file, int line, const char *what, const qkv_tensor *t,
                      const qkv_tensor *want, double atol, double rtol)
{
    char ts[128], ws[128];
    if (!t || !t->grad || !want) {
        test_fail(file, line, "%s: %s (%s)", what,
                  !t ? "the tensor is NULL" : !want ? "want is NULL" : "no gradient reached it",
                  qkv_error());
        return false;
    }
    if (!qkv_same_shape(t, want)) {
        test_fail(file, line, "%s: shape %s, want %s", what, qkv_shape_str(t, ts, sizeof ts),
                  qkv_shape_str(want, ws, sizeof ws));
        return false;
    }
    return close_report(file, line, what, qkv_shape_str(want, ws, sizeof ws), qkv_numel(want),
                        get_f32, t->grad, get_tensor, want, atol, rtol);
}

bool check_close_arrays(const char *file, int line, const char *what, const void *got,
                        int got_size, const void *want, int want_size, int64_t n, double atol,
                        double rtol)
{
    char shape[48];
    snprintf(shape, sizeof shape, "(%lld)", (long long)n);
    if (!got || !want) {
        test_fail(file, line, "%s: %s is NULL", what, got ? "want" : "got");
        return false;
    }
    return close_report(file, line, what, shape, n, got_size == 8 ? get_f64 : get_f32, got,
                        want_size == 8 ? get_f64 : get_f32, want, atol, rtol);
}

bool check_close_scalar(const char *file, int line, const char *what, double got, double want,
                        double atol, double rtol)
{
    return close_report(file, line, what, "a scalar", 1, get_f64, &got, get_f64, &want, atol,
                        rtol);
}
