/* optim.c - SGD (momentum, dampening, Nesterov, weight decay), Adam and AdamW
 * with torch.optim's update rules, float for float where it matters: the
 * coefficients are computed in double as PyTorch does in Python, the
 * elementwise updates in float.
 *
 * The moments are flat buffers parallel to the parameter values (same
 * offsets), allocated once in qkv_optim_new: a step allocates nothing.
 * PyTorch keeps a step count per parameter; here one count serves all, so a
 * parameter frozen for a while is bias-corrected as if it had been updated
 * throughout. */
#include "params.h"

#include <math.h>

/* below this many elements an update runs on one thread */
#define PARALLEL_MIN 32768

struct qkv_optim {
    qkv_params *ps;
    qkv_optim_config cfg; /* defaults filled in */
    float *m;             /* SGD momentum buffer or Adam exp_avg; NULL if none */
    float *v;             /* Adam exp_avg_sq; NULL for SGD */
    int64_t steps;        /* updates done (Adam's t before this step) */
    float *group_scale;   /* n_groups lr multipliers; groups beyond are 1 */
    int n_groups;
};

/* ---- the updates ---- */

/* p, g, buf (n): torch.optim.SGD on one parameter. first: the momentum
 * buffer is still empty and becomes the gradient itself (no dampening), as
 * PyTorch's. */
static void sgd_update(float *p, const float *g, float *buf, int64_t n, double lr,
                       const qkv_optim_config *c, bool first)
{
    const float wd = c->weight_decay, mom = c->momentum;
    const float damp = (float)(1.0 - c->dampening); /* alpha=1 - dampening */
    const float neg_lr = (float)-lr;
    const bool nesterov = c->nesterov;
    for (int64_t i = 0; i < n; i++) {
        float d = g[i];
        if (wd != 0.0f)
            d += wd * p[i]; /* d_p = d_p.add(param, alpha=weight_decay) */
        if (mom != 0.0f) {
            buf[i] = first ? d : buf[i] * mom + d * damp;
            d = nesterov ? d + mom * buf[i] : buf[i];
        }
        p[i] += neg_lr * d; /* param.add_(d_p, alpha=-lr) */
    }
}

/* The coefficients of one Adam(W) step, in float as PyTorch applies them. */
typedef struct {
    float b1, b2, one_b1, one_b2; /* beta1, beta2, 1 - beta1, 1 - beta2 */
    float neg_step;               /* -lr / (1 - beta1^t) */
    float bc2_sqrt;               /* sqrt(1 - beta2^t) */
    float eps;
    float l2;                     /* Adam: weight decay added to the gradient */
    float shrink;                 /* AdamW: 1 - lr * weight_decay */
} adam_coef;

/* Vectors for the Adam rule: its sqrtf keeps GCC from vectorising the loop
 * (sqrtf may set errno, and the build keeps -fmath-errno), so it is written
 * with intrinsics. Each lane does the scalar loop's operations in the same
 * order (no FMA), so both give the same bits. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
typedef __m512 vf;
#define V_LOAD _mm512_loadu_ps
#define V_STORE _mm512_storeu_ps
#define V_SET1 _mm512_set1_ps
#define V_ADD _mm512_add_ps
#define V_MUL _mm512_mul_ps
#define V_DIV _mm512_div_ps
#define V_SQRT _mm512_sqrt_ps
#elif defined(__AVX__)
#include <immintrin.h>
#define VW 8
typedef __m256 vf;
#define V_LOAD _mm256_loadu_ps
#define V_STORE _mm256_storeu_ps
#define V_SET1 _mm256_set1_ps
#define V_ADD _mm256_add_ps
#define V_MUL _mm256_mul_ps
#define V_DIV _mm256_div_ps
#define V_SQRT _mm256_sqrt_ps
#endif

/* p, g, m, v (n): the elementwise rule on [lo, hi). */
static void adam_range(const adam_coef *k, float *p, const float *g, float *m, float *v,
                       int64_t lo, int64_t hi)
{
    const adam_coef c = *k;
    int64_t i = lo;
#ifdef VW
    const vf b1 = V_SET1(c.b1), b2 = V_SET1(c.b2), one_b1 = V_SET1(c.one_b1);
    const vf one_b2 = V_SET1(c.one_b2), neg_step = V_SET1(c.neg_step);
    const vf bc2_sqrt = V_SET1(c.bc2_sqrt), eps = V_SET1(c.eps), l2 = V_SET1(c.l2);
    const vf shrink = V_SET1(c.shrink);
    for (; i + VW <= hi; i += VW) {
        vf pi = V_MUL(V_LOAD(p + i), shrink);
        vf gi = V_ADD(V_LOAD(g + i), V_MUL(l2, pi));
        vf mi = V_ADD(V_MUL(V_LOAD(m + i), b1), V_MUL(gi, one_b1));
        vf vi = V_ADD(V_MUL(V_LOAD(v + i), b2), V_MUL(V_MUL(one_b2, gi), gi));
        vf denom = V_ADD(V_DIV(V_SQRT(vi), bc2_sqrt), eps);
        V_STORE(m + i, mi);
        V_STORE(v + i, vi);
        V_STORE(p + i, V_ADD(pi, V_DIV(V_MUL(neg_step, mi), denom)));
    }
#endif
    for (; i < hi; i++) {
        float pi = p[i] * c.shrink;  /* AdamW: param.mul_(1 - lr * weight_decay) */
        float gi = g[i] + c.l2 * pi; /* Adam: grad = grad.add(param, alpha=wd) */
        m[i] = m[i] * c.b1 + gi * c.one_b1;
        v[i] = v[i] * c.b2 + c.one_b2 * gi * gi;
        float denom = sqrtf(v[i]) / c.bc2_sqrt + c.eps;
        p[i] = pi + c.neg_step * m[i] / denom; /* addcdiv_: p + value * m / denom */
    }
}

/* torch.optim.Adam (decoupled = 0) and AdamW (decoupled = 1) at step t >= 1
 * with learning rate lr: the coefficients. */
static adam_coef adam_coefs(double lr, const qkv_optim_config *c, double bc1, double bc2,
                            bool decoupled)
{
    return (adam_coef){
        .b1 = c->beta1, .b2 = c->beta2,
        .one_b1 = (float)(1.0 - c->beta1), .one_b2 = (float)(1.0 - c->beta2),
        .neg_step = (float)(-lr / bc1), .bc2_sqrt = (float)sqrt(bc2), .eps = c->eps,
        .l2 = decoupled ? 0.0f : c->weight_decay,
        .shrink = (float)(1.0 - lr * (decoupled ? c->weight_decay : 0.0f)),
    };
}
/* ---- the optimizer ---- */

static float *moment(int64_t n)
{
    float *b = qkv__aligned_alloc((size_t)n * sizeof(float));
    if (b)
        memset(b, 0, (size_t)n * sizeof(float));
    return b;
}

qkv_optim *qkv_optim_new(qkv_params *ps, const qkv_optim_config *cfg)
{
    if (!ps || !cfg) {
        qkv_set_error(QKV_ERR_ARG, "optim_new: %s is NULL", ps ? "the config" : "the store");
        return NULL;
    }
    if (!ps->values || !ps->grads) {
        qkv_set_error(QKV_ERR_STATE, "optim_new: %s",
                      !ps->values ? "qkv_params_alloc has not been called"
                                  : "the store has no gradients (qkv_params_alloc_inference)");
        return NULL;
    }
    qkv_optim_config c = *cfg;
    if (c.kind != QKV_SGD && c.beta1 == 0 && c.beta2 == 0) {
        c.beta1 = 0.9f;
        c.beta2 = 0.999f;
    }
    if (c.kind != QKV_SGD && c.eps == 0)
        c.eps = 1e-8f;
    const char *bad = c.kind != QKV_SGD && c.kind != QKV_ADAM && c.kind != QKV_ADAMW
                          ? "unknown kind"
                      : !(c.lr >= 0)                              ? "lr < 0"
                      : !(c.weight_decay >= 0)                    ? "weight_decay < 0"
                      : !(c.momentum >= 0)                        ? "momentum < 0"
                      : c.nesterov && (c.momentum <= 0 || c.dampening != 0)
                          ? "nesterov needs momentum > 0 and dampening 0"
                      : !(c.beta1 >= 0 && c.beta1 < 1)            ? "beta1 outside [0, 1)"
                      : !(c.beta2 >= 0 && c.beta2 < 1)            ? "beta2 outside [0, 1)"
                      : !(c.eps >= 0)                             ? "eps < 0"
                                                                  : NULL;
    if (bad) {
        qkv_set_error(QKV_ERR_ARG, "optim_new: %s", bad);
        return NULL;
    }
    qkv_optim *o = qkv__calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->ps = ps;
    o->cfg = c;
    bool has_m = c.kind != QKV_SGD || c.momentum != 0, has_v = c.kind != QKV_SGD;
    if ((has_m && !(o->m = moment(ps->total))) || (has_v && !(o->v = moment(ps->total)))) {
        qkv_optim_free(o);
        return NULL;
    }
    return o;
}

void qkv_optim_free(qkv_optim *o)
{
    if (!o)
        return;
    qkv__free(o->m);
    qkv__free(o->v);
    qkv__free(o->group_scale);
    qkv__free(o);
}

/* Parameters always have a gradient buffer (zero when nothing reached
 * them), so unlike PyTorch, which skips parameters whose .grad is None,
 * every trainable entry is updated: a zero gradient still moves it through
 * momentum and weight decay. Freeze an entry (QKV_PARAM_FROZEN) to skip it. */
/* The learning rate of entry e. */
static double entry_lr(const qkv_optim *o, const qkv__param *e)
{
    double lr = o->cfg.lr;
    if (e->group < o->n_groups)
        lr *= o->group_scale[e->group];
    return lr;
}

/* The update of the flat range [lo, hi) (entry by entry; gaps skipped). */
static void step_range(qkv_optim *o, int64_t lo, int64_t hi, double bc1, double bc2)
{
    qkv_params *ps = o->ps;
    for (int64_t i = 0; i < ps->count; i++) {
        const qkv__param *e = &ps->at[i];
        int64_t a, b;
        if (!qkv__param_in(e, lo, hi, &a, &b) || !qkv__param_trainable(e))
            continue;
        double lr = entry_lr(o, e);
        float *p = ps->values + a, *g = ps->grads + a;
        float *m = o->m ? o->m + a : NULL, *v = o->v ? o->v + a : NULL;
        if (o->cfg.kind == QKV_SGD) {
            sgd_update(p, g, m, b - a, lr, &o->cfg, o->steps == 0);
        } else {
            adam_coef k = adam_coefs(lr, &o->cfg, bc1, bc2, o->cfg.kind == QKV_ADAMW);
            adam_range(&k, p, g, m, v, 0, b - a);
        }
    }
}

/* Parameters always have a gradient buffer (zero when nothing reached
 * them), so unlike PyTorch, which skips parameters whose .grad is None,
 * every trainable entry is updated: a zero gradient still moves it through
 * momentum and weight decay. Freeze an entry (QKV_PARAM_FROZEN) to skip it.
 * The update is elementwise, so the threads take equal slices of the flat
 * buffers, whatever the entries: a model of many small entries is updated
 * by every thread too. */
qkv_status qkv_optim_step(qkv_optim *o)
{
    if (!o)
        return qkv_set_error(QKV_ERR_ARG, "optim_step: the optimizer is NULL");
    qkv_params *ps = o->ps;
    int64_t t = o->steps + 1, total = ps->total;
    const double bc1 = 1.0 - pow(o->cfg.beta1, (double)t), bc2 = 1.0 - pow(o->cfg.beta2, (double)t);
    int parts = total > PARALLEL_MIN ? qkv_threads() : 1;
#pragma omp parallel for if (parts > 1) schedule(static)
    for (int part = 0; part < parts; part++) {
        int64_t lo, hi;
        qkv__flat_slice(total, part, parts, &lo, &hi);
        step_range(o, lo, hi, bc1, bc2);
    }
    o->steps = t;
    return QKV_OK;
}

void qkv_optim_set_lr(qkv_optim *o, float lr)
{
    if (o)
        o->cfg.lr = lr;
}

float qkv_optim_lr(const qkv_optim *o) { return o ? o->cfg.lr : 0.0f; }

void qkv_optim_set_group_scale(qkv_optim *o, int group, float scale)
{
    if (!o || group < 0) {
        qkv_set_error(QKV_ERR_ARG, "optim_set_group_scale: %s",
                      o ? "negative group" : "the optimizer is NULL");
        return;
    }
    if (group >= o->n_groups) {
        int n = group + 1;
        float *s = qkv__malloc((size_t)n * sizeof *s);
        if (!s)
            return;
        for (int k = 0; k < n; k++)
            s[k] = k < o->n_groups ? o->group_scale[k] : 1.0f;
        qkv__free(o->group_scale);
        o->group_scale = s;
        o->n_groups = n;
    }
    o->group_scale[group] = scale;
}

int64_t qkv_optim_steps(const qkv_optim *o) { return o ? o->steps : 0; }

float *qkv_optim_state(qkv_optim *o, int which, int64_t *count)
{
    float *b = !o ? NULL : which == 0 ? o->m : which == 1 ? o->v : NULL;
    if (count)
        *count = b ? o->ps->total : 0;
    return b;
}

void qkv_optim_set_steps(qkv_optim *o, int64_t steps)
{
    if (o && steps >= 0)
        o->steps = steps;
}
