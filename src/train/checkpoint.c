/* checkpoint.c - state_dicts and checkpoints as safetensors.
 *
 * A state_dict file holds one tensor per parameter or buffer, under the name
 * PyTorch's state_dict uses. Loading is strict by default: every expected key
 * present with its shape, and missing and unexpected keys reported by name,
 * as load_state_dict(strict=True) does.
 *
 * A checkpoint is a state_dict plus the run's state: the optimizer's moments
 * as flat tensors "__optim__.state0/1", and in the metadata the optimizer's
 * step count, the training step and epoch, the RNG states and the run's
 * configuration. Keys starting with "__" are not model keys, so a checkpoint
 * loads as a state_dict too. Writes are atomic (temporary file, fsync,
 * rename): a crash during a save leaves the previous checkpoint intact. */
#include "train_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static qkv_status add_params(qkv_st_writer *w, qkv_params *ps)
{
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        if (!t->data)
            return qkv_set_error(QKV_ERR_STATE, "save: parameters not allocated (call "
                                 "qkv_params_alloc first)");
        qkv_status st = qkv_st_add_tensor(w, t->name, t);
        if (st)
            return st;
    }
    return QKV_OK;
}

qkv_status qkv_params_save(qkv_params *ps, const char *path, qkv_dtype dtype)
{
    if (!ps || !path)
        return qkv_set_error(QKV_ERR_ARG, "params_save: NULL argument");
    qkv_st_writer *w = qkv_st_writer_new();
    if (!w)
        return QKV_ERR_NOMEM;
    qkv_status st = QKV_OK;
    for (int64_t i = 0; i < qkv_params_count(ps) && !st; i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        if (!t->data)
            st = qkv_set_error(QKV_ERR_STATE, "params_save: parameters not allocated");
        else
            st = qkv_st_add_f32(w, t->name, dtype, t->ndim, t->shape, t->data);
    }
    if (!st)
        st = qkv_st_write(w, path);
    qkv_st_writer_free(w);
    return st;
}

/* Appends `s` to a bounded message buffer. */
static void append(char *buf, size_t n, size_t *len, const char *s)
{
    if (*len + 1 >= n)
        return;
    int k = snprintf(buf + *len, n - *len, "%s", s);
    if (k > 0)
        *len += (size_t)k < n - *len ? (size_t)k : n - *len - 1;
}

qkv_status qkv_params_load_file(qkv_params *ps, const qkv_st_file *f, const char *what,
                                int strict)
{
    char missing[1024] = "", unexpected[1024] = "", shapes[1024] = "";
    size_t lm = 0, lu = 0, ls = 0;
    int64_t n_missing = 0, n_unexpected = 0, n_shape = 0;
    /* check everything first, copy only if all is well */
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        int64_t k = qkv_st_find(f, t->name);
        if (k < 0) {
            n_missing++;
            append(missing, sizeof missing, &lm, n_missing > 1 ? ", " : "");
            append(missing, sizeof missing, &lm, t->name);
            continue;
        }
        int64_t shape[QKV_MAX_DIMS];
        int nd = qkv_st_shape(f, k, shape);
        bool same = nd == t->ndim;
        for (int d = 0; same && d < nd; d++)
            same = shape[d] == t->shape[d];
        if (!same) {
            char a[128], b[160];
            qkv_tensor tmp = {0};
            tmp.ndim = nd;
            memcpy(tmp.shape, shape, sizeof(int64_t) * (size_t)nd);
            char sa[96];
            snprintf(b, sizeof b, "%s%s: file %s, model %s", n_shape ? "; " : "", t->name,
                     qkv_shape_str(&tmp, sa, sizeof sa), qkv_shape_str(t, a, sizeof a));
            append(shapes, sizeof shapes, &ls, b);
            n_shape++;
        }
    }
    for (int64_t k = 0; k < qkv_st_count(f); k++) {
        const char *name = qkv_st_name(f, k);
        if (!strncmp(name, "__", 2) || qkv_params_find(ps, name))
            continue;
        n_unexpected++;
        append(unexpected, sizeof unexpected, &lu, n_unexpected > 1 ? ", " : "");
        append(unexpected, sizeof unexpected, &lu, name);
    }
    if (n_shape)
        return qkv_set_error(QKV_ERR_SHAPE, "%s: size mismatch for %lld key(s): %s", what,
                             (long long)n_shape, shapes);
    if (n_missing || (strict && n_unexpected))
        return qkv_set_error(QKV_ERR_FORMAT,
                             "%s: error loading state_dict: missing key(s) (%lld): [%s]; "
                             "unexpected key(s) (%lld): [%s]",
                             what, (long long)n_missing, missing, (long long)n_unexpected,
                             unexpected);
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        qkv_status st = qkv_st_read_f32(f, qkv_st_find(f, t->name), t->data);
        if (st)
            return st;
    }
    return QKV_OK;
}

qkv_status qkv_params_load(qkv_params *ps, const char *path, int strict)
{
    if (!ps || !path)
        return qkv_set_error(QKV_ERR_ARG, "params_load: NULL argument");
    qkv_st_file *f = qkv_st_open(path);
    if (!f)
        return qkv_error_status();
    qkv_status st = qkv_params_load_file(ps, f, path, strict);
    qkv_st_close(f);
    return st;
}

/* ---- checkpoints ---- */

static void rng_to_str(const qkv_rng *r, char *buf, size_t n)
{
    uint64_t spare;
    memcpy(&spare, &r->spare, sizeof spare);
    snprintf(buf, n, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 ":%d:%016" PRIx64,
             r->s[0], r->s[1], r->s[2], r->s[3], r->has_spare, spare);
}

static bool rng_from_str(const char *s, qkv_rng *r)
{
    uint64_t spare = 0;
    int has = 0;
    char hex[17] = {0};
    if (!s || strlen(s) < 64)
        return false;
    for (int i = 0; i < 4; i++) {
        memcpy(hex, s + 16 * i, 16);
        char *end;
        r->s[i] = strtoull(hex, &end, 16);
        if (*end)
            return false;
    }
    if (sscanf(s + 64, ":%d:%" SCNx64, &has, &spare) != 2)
        return false;
    r->has_spare = has;
    memcpy(&r->spare, &spare, sizeof spare);
    return true;
}

qkv_status qkv__checkpoint_add(qkv_st_writer *w, qkv_params *ps, qkv_optim *opt,
                               const qkv_checkpoint_info *info)
{
    qkv_status st = add_params(w, ps);
    char buf[256];
    for (int s = 0; opt && s < 2 && !st; s++) {
        int64_t count = 0;
        float *m = qkv_optim_state(opt, s, &count);
        if (!m)
            continue;
        snprintf(buf, sizeof buf, "__optim__.state%d", s);
        st = qkv_st_add_f32(w, buf, QKV_DT_F32, 1, (int64_t[]){count}, m);
    }
    if (!st && opt) {
        snprintf(buf, sizeof buf, "%lld", (long long)qkv_optim_steps(opt));
        st = qkv_st_set_meta(w, "optim_steps", buf);
    }
    if (!st) {
        snprintf(buf, sizeof buf, "%lld", (long long)info->step);
        st = qkv_st_set_meta(w, "step", buf);
    }
    if (!st) {
        snprintf(buf, sizeof buf, "%lld", (long long)info->epoch);
        st = qkv_st_set_meta(w, "epoch", buf);
    }
    for (int i = 0; i < QKV_CKPT_RNGS && !st; i++) {
        char key[16], val[128];
        snprintf(key, sizeof key, "rng%d", i);
        rng_to_str(&info->rng[i], val, sizeof val);
        st = qkv_st_set_meta(w, key, val);
    }
    if (!st && info->config)
        st = qkv_st_set_meta(w, "config", info->config);
    if (!st)
        st = qkv_st_set_meta(w, "format", "qkv-checkpoint-1");
    return st;
}

qkv_status qkv_checkpoint_save(const char *path, qkv_params *ps, qkv_optim *opt,
                               const qkv_checkpoint_info *info)
{
    if (!path || !ps || !info)
        return qkv_set_error(QKV_ERR_ARG, "checkpoint_save: NULL argument");
    qkv_st_writer *w = qkv_st_writer_new();
    if (!w)
        return QKV_ERR_NOMEM;
    qkv_status st = qkv__checkpoint_add(w, ps, opt, info);
    if (!st)
        st = qkv_st_write(w, path);
    qkv_st_writer_free(w);
    return st;
}

static bool meta_i64(const qkv_st_file *f, const char *key, int64_t *out)
{
    const char *v = qkv_st_meta(f, key);
    if (!v)
        return false;
    char *end;
    long long x = strtoll(v, &end, 10);
    if (*end || end == v)
        return false;
    *out = x;
    return true;
}

qkv_status qkv__checkpoint_read(const qkv_st_file *f, const char *path, qkv_params *ps,
                                qkv_optim *opt, qkv_checkpoint_info *info)
{
    qkv_status st = QKV_OK;
    const char *fmt = qkv_st_meta(f, "format");
    if (!fmt || strcmp(fmt, "qkv-checkpoint-1")) {
        st = qkv_set_error(QKV_ERR_FORMAT, "%s: not a qkv checkpoint (no format "
                           "'qkv-checkpoint-1' in its metadata)", path);
        goto done;
    }
    st = qkv_params_load_file(ps, f, path, 1);
    if (st)
        goto done;
    if (opt) {
        int64_t steps;
        if (!meta_i64(f, "optim_steps", &steps)) {
            st = qkv_set_error(QKV_ERR_FORMAT, "%s: optimizer step count missing", path);
            goto done;
        }
        for (int s = 0; s < 2; s++) {
            int64_t count = 0;
            float *m = qkv_optim_state(opt, s, &count);
            if (!m)
                continue;
            char name[64];
            snprintf(name, sizeof name, "__optim__.state%d", s);
            int64_t k = qkv_st_find(f, name);
            if (k < 0 || qkv_st_numel(f, k) != count) {
                st = qkv_set_error(QKV_ERR_FORMAT, "%s: optimizer state '%s' %s (expected "
                                   "%lld values): was it saved with another optimizer?",
                                   path, name, k < 0 ? "missing" : "has the wrong size",
                                   (long long)count);
                goto done;
            }
            st = qkv_st_read_f32(f, k, m);
            if (st)
                goto done;
        }
        qkv_optim_set_steps(opt, steps);
    }
    if (info) {
        memset(info, 0, sizeof *info);
        meta_i64(f, "step", &info->step);
        meta_i64(f, "epoch", &info->epoch);
        for (int i = 0; i < QKV_CKPT_RNGS; i++) {
            char key[16];
            snprintf(key, sizeof key, "rng%d", i);
            if (!rng_from_str(qkv_st_meta(f, key), &info->rng[i])) {
                st = qkv_set_error(QKV_ERR_FORMAT, "%s: RNG state %s missing or malformed",
                                   path, key);
                goto done;
            }
        }
        const char *cfg = qkv_st_meta(f, "config");
        if (cfg) {
            snprintf(info->config_buf, sizeof info->config_buf, "%s", cfg);
            info->config = info->config_buf;
        }
    }
done:
    return st;
}

qkv_status qkv_checkpoint_load(const char *path, qkv_params *ps, qkv_optim *opt,
                               qkv_checkpoint_info *info)
{
    if (!path || !ps)
        return qkv_set_error(QKV_ERR_ARG, "checkpoint_load: NULL argument");
    qkv_st_file *f = qkv_st_open(path);
    if (!f)
        return qkv_error_status();
    qkv_status st = qkv__checkpoint_read(f, path, ps, opt, info);
    qkv_st_close(f);
    return st;
}
