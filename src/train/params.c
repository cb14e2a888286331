/* params.c - named parameters in two flat buffers (values and gradients),
 * carved in declaration order, so that an optimizer step is one pass, zeroing
 * the gradients one memset and a checkpoint one write. */
#include "params.h"

#include <stdint.h>

/* 16 floats = 64 bytes: every entry starts on a cache line (and an AVX-512
 * vector). */
#define ALIGN_FLOATS 16

qkv_params *qkv_params_new(void) { return qkv__calloc(1, sizeof(qkv_params)); }

void qkv_params_free(qkv_params *ps)
{
    if (!ps)
        return;
    for (int64_t i = 0; i < ps->count; i++) {
        qkv__free((char *)ps->at[i].t->name);
        qkv__free(ps->at[i].t);
    }
    qkv__free(ps->at);
    qkv__free(ps->values);
    qkv__free(ps->grads_mem);
    qkv__free(ps->norm_parts);
    qkv__free(ps);
}

static bool grow(qkv_params *ps)
{
    if (ps->count < ps->cap)
        return true;
    int64_t cap = ps->cap ? 2 * ps->cap : 16;
    qkv__param *at = qkv__malloc((size_t)cap * sizeof *at);
    if (!at)
        return false;
    if (ps->count)
        memcpy(at, ps->at, (size_t)ps->count * sizeof *at);
    qkv__free(ps->at);
    ps->at = at;
    ps->cap = cap;
    return true;
}

qkv_tensor *qkv_params_add(qkv_params *ps, const char *name, int ndim, const int64_t *shape,
                           int flags)
{
    if (!ps || !name || (ndim > 0 && !shape)) {
        qkv_set_error(QKV_ERR_ARG, "params_add: %s is NULL",
                      !ps ? "the store" : !name ? "the name" : "the shape");
        return NULL;
    }
    if (ps->values) {
        qkv_set_error(QKV_ERR_STATE, "params_add: '%s' added after qkv_params_alloc", name);
        return NULL;
    }
    if (ndim < 0 || ndim > QKV_MAX_DIMS) {
        qkv_set_error(QKV_ERR_SHAPE, "params_add: '%s' has %d dimensions (at most %d)", name,
                      ndim, QKV_MAX_DIMS);
        return NULL;
    }
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0) {
            qkv_set_error(QKV_ERR_SHAPE, "params_add: '%s' has size %lld in dimension %d",
                          name, (long long)shape[d], d);
            return NULL;
        }
    char full[512];
    if (ps->prefix[0]) {
        if (snprintf(full, sizeof full, "%s%s", ps->prefix, name) >= (int)sizeof full) {
            qkv_set_error(QKV_ERR_ARG, "params_add: '%s%s' is too long", ps->prefix, name);
            return NULL;
        }
        name = full;
    }
    if (qkv_params_find(ps, name)) {
        qkv_set_error(QKV_ERR_ARG, "params_add: '%s' declared twice", name);
        return NULL;
    }
    if (!grow(ps))
        return NULL;
    qkv_tensor *t = qkv__calloc(1, sizeof *t);
    char *copy = qkv__strdup(name);
    if (!t || !copy) {
        qkv__free(t);
        qkv__free(copy);
        return NULL;
    }
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    int64_t n = qkv__contig_strides(ndim, shape, t->stride);
    t->name = copy;
    ps->at[ps->count++] = (qkv__param){.t = t, .numel = n, .flags = flags};
    return t;
}

/* Buffers never get a gradient; frozen parameters neither, so backward does
 * not spend time on them (PyTorch's requires_grad_(False)). */
static void set_requires_grad(const qkv_params *ps, qkv__param *p)
{
    /* a store without gradients (qkv_params_alloc_inference) has none to
     * receive: nothing in it requires one */
    p->t->requires_grad = ps->grads && qkv__param_trainable(p);
}

/* Values (and, with grads, gradients) for every declared entry. */
static qkv_status params_alloc(qkv_params *ps, bool with_grads, const char *fn)
{
    if (!ps)
        return qkv_set_error(QKV_ERR_ARG, "%s: the store is NULL", fn);
    if (ps->values)
        return qkv_set_error(QKV_ERR_STATE, "%s: the store is already allocated", fn);
    int64_t total = 0;
    for (int64_t i = 0; i < ps->count; i++) {
        ps->at[i].offset = total;
        total += (ps->at[i].numel + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    }
    size_t bytes = (size_t)total * sizeof(float);
    float *values = qkv__aligned_alloc(bytes);
    /* The gradients come zeroed from calloc, which for a large block maps
     * fresh zero pages without writing them: a model that only runs
     * forward never touches them. qkv_params_alloc_inference goes further
     * and has none: no address space, no grad pointers, nothing to misuse. */
    void *grads_mem = values && with_grads ? qkv__calloc(1, bytes + 64) : NULL;
    if (!values || (with_grads && !grads_mem)) {
        qkv__free(values);
        return qkv_set_error(QKV_ERR_NOMEM, "%s: out of memory for %lld floats", fn,
                             (long long)total);
    }
    float *grads = grads_mem ? (float *)(((uintptr_t)grads_mem + 63) & ~(uintptr_t)63) : NULL;
    /* zeroed values too: the gaps between entries are then defined bytes,
     * so that two runs can be compared with memcmp */
    memset(values, 0, bytes);
    ps->values = values;
    ps->grads = grads;
    ps->grads_mem = grads_mem;
    ps->total = total;
    for (int64_t i = 0; i < ps->count; i++) {
        qkv__param *p = &ps->at[i];
        p->t->data = values + p->offset;
        p->t->grad = grads ? grads + p->offset : NULL;
        set_requires_grad(ps, p);
    }
    return QKV_OK;
}

qkv_status qkv_params_alloc(qkv_params *ps) { return params_alloc(ps, true, "params_alloc"); }

qkv_status qkv_params_alloc_inference(qkv_params *ps)
{
    return params_alloc(ps, false, "params_alloc_inference");
}

int qkv_params_has_grads(const qkv_params *ps) { return ps && ps->grads; }

qkv_status qkv_params_set_prefix(qkv_params *ps, const char *prefix)
{
    if (!ps)
        return qkv_set_error(QKV_ERR_ARG, "params_set_prefix: the store is NULL");
    if (prefix && strlen(prefix) >= sizeof ps->prefix)
        return qkv_set_error(QKV_ERR_ARG, "params_set_prefix: '%s' is longer than %d bytes",
                             prefix, (int)sizeof ps->prefix - 1);
    snprintf(ps->prefix, sizeof ps->prefix, "%s", prefix ? prefix : "");
    return QKV_OK;
}

int64_t qkv_params_count(const qkv_params *ps) { return ps ? ps->count : 0; }

static qkv__param *entry(const qkv_params *ps, int64_t i, const char *fn)
{
    if (!ps || i < 0 || i >= ps->count) {
        qkv_set_error(QKV_ERR_ARG, "%s: no entry %lld (the store has %lld)", fn, (long long)i,
                      (long long)(ps ? ps->count : 0));
        return NULL;
    }
    return &ps->at[i];
}

qkv_tensor *qkv_params_at(qkv_params *ps, int64_t i)
{
    qkv__param *p = entry(ps, i, "params_at");
    return p ? p->t : NULL;
}

int qkv_params_flags(const qkv_params *ps, int64_t i)
{
    qkv__param *p = entry(ps, i, "params_flags");
    return p ? p->flags : 0;
}

void qkv_params_set_flags(qkv_params *ps, int64_t i, int flags)
{
    qkv__param *p = entry(ps, i, "params_set_flags");
    if (!p)
        return;
    p->flags = flags;
    if (ps->values)
        set_requires_grad(ps, p);
}

void qkv_params_set_group(qkv_params *ps, int64_t i, int group)
{
    qkv__param *p = entry(ps, i, "params_set_group");
    if (!p)
        return;
    if (group < 0) {
        qkv_set_error(QKV_ERR_ARG, "params_set_group: group %d of '%s' is negative", group,
                      p->t->name);
        return;
    }
    p->group = group;
}

int qkv_params_group(const qkv_params *ps, int64_t i)
{
    qkv__param *p = entry(ps, i, "params_group");
    return p ? p->group : 0;
}

qkv_tensor *qkv_params_find(qkv_params *ps, const char *name)
{
    if (!ps || !name)
        return NULL;
    for (int64_t i = 0; i < ps->count; i++)
        if (strcmp(ps->at[i].t->name, name) == 0)
            return ps->at[i].t;
    return NULL;
}

int64_t qkv_params_numel(const qkv_params *ps)
{
    int64_t n = 0;
    for (int64_t i = 0; ps && i < ps->count; i++)
        if (!(ps->at[i].flags & QKV_PARAM_BUFFER))
            n += ps->at[i].numel;
    return n;
}

float *qkv_params_values(qkv_params *ps, int64_t *count)
{
    if (count)
        *count = ps ? ps->total : 0;
    return ps ? ps->values : NULL;
}

float *qkv_params_grads(qkv_params *ps, int64_t *count)
{
    if (count)
        *count = ps && ps->grads ? ps->total : 0;
    return ps ? ps->grads : NULL;
}

void qkv_params_zero_grad(qkv_params *ps)
{
    if (ps && ps->grads)
        memset(ps->grads, 0, (size_t)ps->total * sizeof(float));
}
