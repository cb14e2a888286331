/* safetensors.c - read (memory-mapped, validated) and write safetensors.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON mapping
 * each tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets
 * relative to the byte after the header) plus an optional "__metadata__"
 * map of strings, then the data. Every file is checked before use: header
 * length, JSON, dtypes, shapes against byte ranges, ranges inside the file,
 * no overlaps and no gaps. Writes go to a temporary file, are flushed and
 * fsync'd, then renamed, so a crash never leaves a half-written file.
 *
 * The validation runs on bytes in memory (qkv__st_open_memory), which is
 * what fuzz/fuzz_safetensors.c feeds with arbitrary input. Data is read with
 * memcpy, so tensors need no alignment; the host is assumed little-endian,
 * as the format is. */
#include "io_internal.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20)

typedef struct {
    char *name;
    qkv_dtype dtype;
    int ndim;
    int64_t shape[QKV_MAX_DIMS];
    uint64_t begin, end; /* relative to the data section */
} st_entry;

typedef struct {
    char *key, *value;
} st_meta;

struct qkv_st_file {
    char *path;
    bool mapped;              /* map came from mmap (else: caller's memory) */
    const unsigned char *map; /* whole file */
    size_t size;
    const unsigned char *data; /* data section */
    uint64_t data_size;
    st_entry *e;
    int64_t n;
    st_meta *meta;
    int64_t n_meta;
};

static const struct {
    const char *name;
    qkv_dtype dt;
    int size;
} dtypes[] = {
    {"F32", QKV_DT_F32, 4}, {"F16", QKV_DT_F16, 2}, {"BF16", QKV_DT_BF16, 2},
    {"F64", QKV_DT_F64, 8}, {"I64", QKV_DT_I64, 8}, {"I32", QKV_DT_I32, 4},
    {"U8", QKV_DT_U8, 1},   {"I8", QKV_DT_I8, 1},   {"BOOL", QKV_DT_BOOL, 1},
};

static int dtype_size(qkv_dtype dt)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].dt == dt)
            return dtypes[i].size;
    return 0;
}

static const char *dtype_name(qkv_dtype dt)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].dt == dt)
            return dtypes[i].name;
    return "?";
}

/* ---- float conversions ---- */

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0)
            bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31)
        bits = sign | 0x7f800000u | (man << 13);
    else
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1);
        uint32_t m = man >> shift;
        if (rest > half || (rest == half && (m & 1)))
            m++;
        return (uint16_t)(sign | m);
    }
    uint32_t m = man >> 13, rest = man & 0x1fff;
    uint32_t h = sign | ((uint32_t)exp << 10) | m;
    if (rest > 0x1000 || (rest == 0x1000 && (m & 1)))
        h++; /* carries into the exponent correctly, up to inf */
    return (uint16_t)h;
}

static float bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
    x += 0x7fff + ((x >> 16) & 1);        /* round to nearest even */
    return (uint16_t)(x >> 16);
}

/* ---- reading ---- */

static qkv_status bad(const char *path, const char *tensor, const char *fmt, const char *detail)
{
    char why[512];
    snprintf(why, sizeof why, fmt, detail);
    if (tensor)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: tensor '%s': %s", path, tensor, why);
    return qkv_set_error(QKV_ERR_FORMAT, "%s: %s", path, why);
}

static int cmp_begin(const void *a, const void *b)
{
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static bool json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j) || j->valuedouble < 0 || j->valuedouble > 9007199254740992.0 ||
        j->valuedouble != (double)(uint64_t)j->valuedouble)
        return false;
    *out = (uint64_t)j->valuedouble;
    return true;
}

static qkv_status parse_entry(qkv_st_file *f, const cJSON *item, st_entry *e)
{
    const char *p = f->path, *nm = item->string;
    if (!cJSON_IsObject(item))
        return bad(p, nm, "%s", "entry is not a JSON object");
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt))
        return bad(p, nm, "%s", "missing or non-string dtype");
    int found = 0;
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(dt->valuestring, dtypes[i].name)) {
            e->dtype = dtypes[i].dt;
            found = 1;
        }
    if (!found)
        return bad(p, nm, "unsupported dtype '%s'", dt->valuestring);
    if (!cJSON_IsArray(sh))
        return bad(p, nm, "%s", "missing or non-array shape");
    int nd = cJSON_GetArraySize(sh);
    if (nd > QKV_MAX_DIMS)
        return bad(p, nm, "%s", "more dimensions than qkv supports (6)");
    e->ndim = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t s;
        if (!json_uint(cJSON_GetArrayItem(sh, i), &s) || s > ((uint64_t)1 << 40))
            return bad(p, nm, "%s", "shape holds a negative, fractional or huge size");
        e->shape[i] = (int64_t)s;
        if (s && numel > UINT64_MAX / s)
            return bad(p, nm, "%s", "shape overflows");
        numel *= s;
    }
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        !json_uint(cJSON_GetArrayItem(off, 0), &e->begin) ||
        !json_uint(cJSON_GetArrayItem(off, 1), &e->end))
        return bad(p, nm, "%s", "data_offsets must be two non-negative integers");
    if (e->end < e->begin)
        return bad(p, nm, "%s", "data_offsets end before they begin");
    if (e->end > f->data_size) {
        char d[128];
        snprintf(d, sizeof d, "data ends at byte %llu, past the end of the data (%llu bytes)",
                 (unsigned long long)e->end, (unsigned long long)f->data_size);
        return bad(p, nm, "%s", d);
    }
    /* numel * esize may wrap around 64 bits to the span of a small (even
     * empty) range: compare by division first */
    uint64_t span = e->end - e->begin, esize = (uint64_t)dtype_size(e->dtype);
    if (numel > span / esize || numel * esize != span) {
        char d[160], size[32];
        if (numel > UINT64_MAX / esize)
            snprintf(size, sizeof size, "over 2^64");
        else
            snprintf(size, sizeof size, "%llu", (unsigned long long)(numel * esize));
        snprintf(d, sizeof d, "shape x %s size is %s bytes but data_offsets span %llu",
                 dtype_name(e->dtype), size, (unsigned long long)span);
        return bad(p, nm, "%s", d);
    }
    e->name = qkv__strdup(nm);
    return e->name ? QKV_OK : QKV_ERR_NOMEM;
}

static qkv_status parse_header(qkv_st_file *f, const char *json, size_t len)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
    if (!root) {
        char d[96];
        snprintf(d, sizeof d, "header is not valid JSON (near header byte %zu)",
                 end && end >= json ? (size_t)(end - json) : (size_t)0);
        return bad(f->path, NULL, "%s", d);
    }
    qkv_status st = QKV_OK;
    /* the writer may pad the header with spaces; anything else is garbage */
    for (const char *c = end; c < json + len; c++)
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r' && *c != '\0') {
            char d[96];
            snprintf(d, sizeof d, "header holds bytes after its JSON object (at %zu)",
                     (size_t)(c - json));
            st = bad(f->path, NULL, "%s", d);
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        st = bad(f->path, NULL, "%s", "header is not a JSON object");
        goto done;
    }
    int n = cJSON_GetArraySize(root);
    f->e = qkv__calloc((size_t)(n ? n : 1), sizeof *f->e);
    if (!f->e) {
        st = QKV_ERR_NOMEM;
        goto done;
    }
    for (const cJSON *item = root->child; item; item = item->next) {
        if (!item->string) {
            st = bad(f->path, NULL, "%s", "header entry without a name");
            goto done;
        }
        if (!strcmp(item->string, "__metadata__")) {
            if (!cJSON_IsObject(item) || f->meta) {
                st = bad(f->path, NULL, "%s",
                         f->meta ? "__metadata__ appears twice" : "__metadata__ is not an object");
                goto done;
            }
            int m = cJSON_GetArraySize(item);
            f->meta = qkv__calloc((size_t)(m ? m : 1), sizeof *f->meta);
            if (!f->meta) {
                st = QKV_ERR_NOMEM;
                goto done;
            }
            for (const cJSON *kv = item->child; kv; kv = kv->next) {
                if (!cJSON_IsString(kv)) {
                    st = bad(f->path, NULL, "__metadata__ value of '%s' is not a string",
                             kv->string ? kv->string : "?");
                    goto done;
                }
                st_meta *mm = &f->meta[f->n_meta++];
                mm->key = qkv__strdup(kv->string);
                mm->value = qkv__strdup(kv->valuestring);
                if (!mm->key || !mm->value) {
                    st = QKV_ERR_NOMEM;
                    goto done;
                }
            }
            continue;
        }
        for (int64_t i = 0; i < f->n; i++)
            if (!strcmp(f->e[i].name, item->string)) {
                st = bad(f->path, item->string, "%s", "appears twice in the header");
                goto done;
            }
        st = parse_entry(f, item, &f->e[f->n]);
        if (st)
            goto done;
        f->n++;
    }
    /* ranges: sorted, no overlaps, no gaps, covering the data section */
    st_entry **order = qkv__calloc((size_t)(f->n ? f->n : 1), sizeof *order);
    if (!order) {
        st = QKV_ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0; i < f->n; i++)
        order[i] = &f->e[i];
    qsort(order, (size_t)f->n, sizeof *order, cmp_begin);
    uint64_t pos = 0;
    for (int64_t i = 0; i < f->n && !st; i++) {
        if (order[i]->begin < pos)
            st = bad(f->path, order[i]->name, "%s", "data overlaps the previous tensor's");
        else if (order[i]->begin > pos)
            st = bad(f->path, order[i]->name, "%s", "gap in the data before this tensor");
        pos = order[i]->end;
    }
    if (!st && pos != f->data_size) {
        char d[128];
        snprintf(d, sizeof d, "%llu bytes of data follow the last tensor",
                 (unsigned long long)(f->data_size - pos));
        st = bad(f->path, NULL, "%s", d);
    }
    qkv__free(order);
done:
    cJSON_Delete(root);
    return st;
}

/* Checks f->map (f->size bytes) and builds the tensor table. */
static qkv_status validate(qkv_st_file *f)
{
    const char *path = f->path;
    if (f->size < 8)
        return bad(path, NULL, "%s", "file is shorter than the 8-byte header length (truncated?)");
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | f->map[i];
    if (hlen > ST_MAX_HEADER || hlen > f->size - 8) {
        char d[128];
        snprintf(d, sizeof d, "header length %llu does not fit in a file of %zu bytes",
                 (unsigned long long)hlen, f->size);
        return bad(path, NULL, "%s", d);
    }
    f->data = f->map + 8 + hlen;
    f->data_size = f->size - 8 - hlen;
    return parse_header(f, (const char *)f->map + 8, (size_t)hlen);
}

qkv_st_file *qkv__st_open_memory(const void *bytes, size_t len, const char *name)
{
    qkv_st_file *f = qkv__calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->path = qkv__strdup(name ? name : "(memory)");
    f->map = bytes;
    f->size = len;
    if (!f->path || (len && !bytes) || validate(f) != QKV_OK) {
        if (len && !bytes)
            qkv_set_error(QKV_ERR_ARG, "safetensors: NULL buffer of %zu bytes", len);
        qkv_st_close(f);
        return NULL;
    }
    return f;
}

qkv_st_file *qkv_st_open(const char *path)
{
    if (!path) {
        qkv_set_error(QKV_ERR_ARG, "safetensors: path is NULL");
        return NULL;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        qkv_set_error(QKV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        qkv_set_error(QKV_ERR_IO, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    qkv_st_file *f = qkv__calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        return NULL;
    }
    f->path = qkv__strdup(path);
    f->size = (size_t)sb.st_size;
    if (!f->path)
        goto fail;
    if (f->size >= 8) { /* mmap of an empty file fails; validate() reports it */
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            qkv_set_error(QKV_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
            goto fail;
        }
        f->mapped = true;
    }
    if (validate(f) != QKV_OK)
        goto fail;
    close(fd);
    return f;
fail:
    close(fd);
    qkv_st_close(f);
    return NULL;
}

void qkv_st_close(qkv_st_file *f)
{
    if (!f)
        return;
    if (f->mapped)
        munmap((void *)f->map, f->size);
    for (int64_t i = 0; i < f->n; i++)
        qkv__free(f->e[i].name);
    for (int64_t i = 0; i < f->n_meta; i++) {
        qkv__free(f->meta[i].key);
        qkv__free(f->meta[i].value);
    }
    qkv__free(f->e);
    qkv__free(f->meta);
    qkv__free(f->path);
    qkv__free(f);
}

static bool index_ok(const qkv_st_file *f, int64_t i)
{
    if (!f || i < 0 || i >= f->n) {
        qkv_set_error(QKV_ERR_ARG, "safetensors: %s: tensor index %lld out of range",
                      f ? f->path : "(NULL file)", (long long)i);
        return false;
    }
    return true;
}

int64_t qkv_st_count(const qkv_st_file *f) { return f ? f->n : 0; }

const char *qkv_st_name(const qkv_st_file *f, int64_t i)
{
    return f && i >= 0 && i < f->n ? f->e[i].name : NULL;
}

int64_t qkv_st_find(const qkv_st_file *f, const char *name)
{
    for (int64_t i = 0; f && name && i < f->n; i++)
        if (!strcmp(f->e[i].name, name))
            return i;
    return -1;
}

/* Out of range: F32 (with qkv_error set), so that callers switching on the
 * dtype never read past the table. */
qkv_dtype qkv_st_dtype(const qkv_st_file *f, int64_t i)
{
    return index_ok(f, i) ? f->e[i].dtype : QKV_DT_F32;
}

/* Out of range: -1 (with qkv_error set). */
int qkv_st_shape(const qkv_st_file *f, int64_t i, int64_t *shape)
{
    if (!index_ok(f, i))
        return -1;
    for (int d = 0; d < f->e[i].ndim; d++)
        shape[d] = f->e[i].shape[d];
    return f->e[i].ndim;
}

/* Out of range: -1 (with qkv_error set). */
int64_t qkv_st_numel(const qkv_st_file *f, int64_t i)
{
    if (!index_ok(f, i))
        return -1;
    return qkv__shape_numel(f->e[i].ndim, f->e[i].shape);
}

qkv_status qkv_st_read_f32(const qkv_st_file *f, int64_t i, float *out)
{
    if (!index_ok(f, i))
        return QKV_ERR_ARG;
    if (!out && f->e[i].end > f->e[i].begin)
        return qkv_set_error(QKV_ERR_ARG, "%s: tensor '%s': output buffer is NULL", f->path,
                             f->e[i].name);
    const st_entry *e = &f->e[i];
    const unsigned char *p = f->data + e->begin;
    int64_t n = qkv_st_numel(f, i);
    switch (e->dtype) {
    case QKV_DT_F32:
        memcpy(out, p, (size_t)n * 4);
        break;
    case QKV_DT_F16:
        for (int64_t k = 0; k < n; k++)
            out[k] = f16_to_f32((uint16_t)(p[2 * k] | p[2 * k + 1] << 8));
        break;
    case QKV_DT_BF16:
        for (int64_t k = 0; k < n; k++)
            out[k] = bf16_to_f32((uint16_t)(p[2 * k] | p[2 * k + 1] << 8));
        break;
    case QKV_DT_F64:
        for (int64_t k = 0; k < n; k++) {
            double d;
            memcpy(&d, p + 8 * k, 8);
            out[k] = (float)d;
        }
        break;
    default: {
        /* integers widen to float (masks, labels) */
        for (int64_t k = 0; k < n; k++) {
            int64_t v = 0;
            switch (e->dtype) {
            case QKV_DT_I64: memcpy(&v, p + 8 * k, 8); break;
            case QKV_DT_I32: { int32_t w; memcpy(&w, p + 4 * k, 4); v = w; break; }
            case QKV_DT_I8: v = (int8_t)p[k]; break;
            case QKV_DT_BOOL: v = p[k] != 0; break;
            default: v = p[k]; break;
            }
            out[k] = (float)v;
        }
    }
    }
    return QKV_OK;
}

qkv_status qkv_st_read_i64(const qkv_st_file *f, int64_t i, int64_t *out)
{
    if (!index_ok(f, i))
        return QKV_ERR_ARG;
    const st_entry *e = &f->e[i];
    const unsigned char *p = f->data + e->begin;
    int64_t n = qkv_st_numel(f, i);
    qkv_dtype dt = e->dtype;
    if (dt == QKV_DT_F32 || dt == QKV_DT_F16 || dt == QKV_DT_BF16 || dt == QKV_DT_F64)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: tensor '%s': dtype %s is not an integer",
                             f->path, e->name, dtype_name(dt));
    if (!out && n)
        return qkv_set_error(QKV_ERR_ARG, "%s: tensor '%s': output buffer is NULL", f->path,
                             e->name);
    for (int64_t k = 0; k < n; k++) {
        switch (dt) {
        case QKV_DT_I64: memcpy(&out[k], p + 8 * k, 8); break;
        case QKV_DT_I32: { int32_t w; memcpy(&w, p + 4 * k, 4); out[k] = w; break; }
        case QKV_DT_I8: out[k] = (int8_t)p[k]; break;
        case QKV_DT_BOOL: out[k] = p[k] != 0; break; /* any nonzero byte is true */
        default: out[k] = p[k]; break;
        }
    }
    return QKV_OK;
}

const char *qkv_st_meta(const qkv_st_file *f, const char *key)
{
    for (int64_t i = 0; f && key && i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key))
            return f->meta[i].value;
    return NULL;
}

qkv_tensor *qkv_st_load(qkv_ctx *ctx, const qkv_st_file *f, const char *name)
{
    if (!ctx || !f || !name) {
        qkv_set_error(QKV_ERR_ARG, "safetensors: load: NULL %s",
                      !ctx ? "context" : !f ? "file" : "name");
        return NULL;
    }
    int64_t i = qkv_st_find(f, name);
    if (i < 0) {
        qkv_set_error(QKV_ERR_ARG, "%s: no tensor named '%s'", f->path, name);
        return NULL;
    }
    qkv_tensor *t = qkv__tensor(ctx, f->e[i].ndim, f->e[i].shape);
    if (!t || qkv_st_read_f32(f, i, t->data) != QKV_OK)
        return NULL;
    return t;
}

/* ---- writing ---- */

typedef struct {
    char *name;
    qkv_dtype dtype;
    int ndim;
    int64_t shape[QKV_MAX_DIMS];
    unsigned char *bytes;
    size_t nbytes;
} wr_entry;

struct qkv_st_writer {
    wr_entry *e;
    int64_t n, cap;
    st_meta *meta;
    int64_t n_meta, cap_meta;
};

qkv_st_writer *qkv_st_writer_new(void) { return qkv__calloc(1, sizeof(qkv_st_writer)); }

void qkv_st_writer_free(qkv_st_writer *w)
{
    if (!w)
        return;
    for (int64_t i = 0; i < w->n; i++) {
        qkv__free(w->e[i].name);
        qkv__free(w->e[i].bytes);
    }
    for (int64_t i = 0; i < w->n_meta; i++) {
        qkv__free(w->meta[i].key);
        qkv__free(w->meta[i].value);
    }
    qkv__free(w->e);
    qkv__free(w->meta);
    qkv__free(w);
}

static wr_entry *add_entry(qkv_st_writer *w, const char *name, qkv_dtype dt, int ndim,
                           const int64_t *shape)
{
    if (!w || !name || ndim < 0 || ndim > QKV_MAX_DIMS || (ndim && !shape)) {
        qkv_set_error(QKV_ERR_ARG, "safetensors writer: bad arguments for '%s'",
                      name ? name : "(null)");
        return NULL;
    }
    if (!strcmp(name, "__metadata__")) {
        qkv_set_error(QKV_ERR_ARG, "safetensors writer: '__metadata__' is reserved");
        return NULL;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || shape[i] > ((int64_t)1 << 40)) {
            qkv_set_error(QKV_ERR_ARG, "safetensors writer: '%s': size %lld of axis %d",
                          name, (long long)shape[i], i);
            return NULL;
        }
    for (int64_t i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name)) {
            qkv_set_error(QKV_ERR_ARG, "safetensors writer: '%s' added twice", name);
            return NULL;
        }
    if (w->n == w->cap) {
        int64_t cap = w->cap ? 2 * w->cap : 16;
        wr_entry *e = qkv__calloc((size_t)cap, sizeof *e);
        if (!e)
            return NULL;
        if (w->n)
            memcpy(e, w->e, (size_t)w->n * sizeof *e);
        qkv__free(w->e);
        w->e = e;
        w->cap = cap;
    }
    wr_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = qkv__strdup(name);
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->nbytes = (size_t)qkv__shape_numel(ndim, shape) * (size_t)dtype_size(dt);
    e->bytes = qkv__malloc(e->nbytes ? e->nbytes : 1);
    if (!e->name || !e->bytes) {
        qkv__free(e->name);
        qkv__free(e->bytes);
        return NULL;
    }
    w->n++;
    return e;
}

qkv_status qkv_st_add_f32(qkv_st_writer *w, const char *name, qkv_dtype dtype, int ndim,
                          const int64_t *shape, const float *data)
{
    if (dtype != QKV_DT_F32 && dtype != QKV_DT_F16 && dtype != QKV_DT_BF16)
        return qkv_set_error(QKV_ERR_ARG, "safetensors writer: '%s': float data can be "
                             "stored as F32, F16 or BF16 only", name ? name : "");
    wr_entry *e = add_entry(w, name, dtype, ndim, shape);
    if (!e)
        return qkv_error_status();
    int64_t n = qkv__shape_numel(ndim, shape);
    if (n && !data) {
        w->n--; /* the entry is not kept */
        qkv__free(e->name);
        qkv__free(e->bytes);
        return qkv_set_error(QKV_ERR_ARG, "safetensors writer: '%s': data is NULL", name);
    }
    for (int64_t k = 0; k < n; k++) {
        if (dtype == QKV_DT_F32)
            memcpy(e->bytes + 4 * k, &data[k], 4);
        else {
            uint16_t h = dtype == QKV_DT_F16 ? f32_to_f16(data[k]) : f32_to_bf16(data[k]);
            e->bytes[2 * k] = (unsigned char)(h & 0xff);
            e->bytes[2 * k + 1] = (unsigned char)(h >> 8);
        }
    }
    return QKV_OK;
}

qkv_status qkv_st_add_i64(qkv_st_writer *w, const char *name, int ndim, const int64_t *shape,
                          const int64_t *data)
{
    return qkv_st_add_int(w, name, QKV_DT_I64, ndim, shape, data);
}

static bool int_fits(qkv_dtype dt, int64_t v, int64_t *lo, int64_t *hi)
{
    switch (dt) {
    case QKV_DT_I32: *lo = INT32_MIN, *hi = INT32_MAX; break;
    case QKV_DT_I8: *lo = INT8_MIN, *hi = INT8_MAX; break;
    case QKV_DT_U8: *lo = 0, *hi = UINT8_MAX; break;
    case QKV_DT_BOOL: *lo = 0, *hi = 1; break;
    default: *lo = INT64_MIN, *hi = INT64_MAX; break;
    }
    return v >= *lo && v <= *hi;
}

qkv_status qkv_st_add_int(qkv_st_writer *w, const char *name, qkv_dtype dtype, int ndim,
                          const int64_t *shape, const int64_t *data)
{
    if (dtype != QKV_DT_I64 && dtype != QKV_DT_I32 && dtype != QKV_DT_I8 &&
        dtype != QKV_DT_U8 && dtype != QKV_DT_BOOL)
        return qkv_set_error(QKV_ERR_ARG, "safetensors writer: '%s': integer data can be "
                             "stored as I64, I32, I8, U8 or BOOL only", name ? name : "");
    /* narrowing must not change a value: check all before adding anything */
    int64_t n = ndim >= 0 && ndim <= QKV_MAX_DIMS && shape ? qkv__shape_numel(ndim, shape) : 0;
    if (n > 0 && !data)
        return qkv_set_error(QKV_ERR_ARG, "safetensors writer: '%s': data is NULL",
                             name ? name : "");
    for (int64_t k = 0; k < n; k++) {
        int64_t lo, hi;
        if (!int_fits(dtype, data[k], &lo, &hi))
            return qkv_set_error(QKV_ERR_ARG, "safetensors writer: '%s': element %lld = %lld "
                                 "is outside %s's range [%lld, %lld]", name ? name : "",
                                 (long long)k, (long long)data[k], dtype_name(dtype),
                                 (long long)lo, (long long)hi);
    }
    wr_entry *e = add_entry(w, name, dtype, ndim, shape);
    if (!e)
        return qkv_error_status();
    int size = dtype_size(dtype);
    for (int64_t k = 0; k < n; k++) {
        int32_t v32 = (int32_t)data[k];
        unsigned char b = (unsigned char)(data[k] & 0xff);
        if (size == 8)
            memcpy(e->bytes + 8 * k, &data[k], 8);
        else if (size == 4)
            memcpy(e->bytes + 4 * k, &v32, 4);
        else
            e->bytes[k] = b;
    }
    return QKV_OK;
}

qkv_status qkv_st_add_tensor(qkv_st_writer *w, const char *name, const qkv_tensor *t)
{
    if (!t)
        return qkv_set_error(QKV_ERR_ARG, "safetensors writer: tensor '%s' is NULL",
                             name ? name : "");
    wr_entry *e = add_entry(w, name, QKV_DT_F32, t->ndim, t->shape);
    if (!e)
        return qkv_error_status();
    int64_t n = qkv_numel(t);
    float *dst = (float *)(void *)e->bytes;
    if (qkv_is_contiguous(t))
        memcpy(dst, t->data, (size_t)n * 4);
    else
        for (int64_t k = 0; k < n; k++)
            dst[k] = qkv_get(t, k);
    return QKV_OK;
}

qkv_status qkv_st_set_meta(qkv_st_writer *w, const char *key, const char *value)
{
    if (!w || !key || !value)
        return qkv_set_error(QKV_ERR_ARG, "safetensors writer: NULL metadata");
    for (int64_t i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta[i].key, key)) {
            char *v = qkv__strdup(value);
            if (!v)
                return QKV_ERR_NOMEM;
            qkv__free(w->meta[i].value);
            w->meta[i].value = v;
            return QKV_OK;
        }
    if (w->n_meta == w->cap_meta) {
        int64_t cap = w->cap_meta ? 2 * w->cap_meta : 8;
        st_meta *m = qkv__calloc((size_t)cap, sizeof *m);
        if (!m)
            return QKV_ERR_NOMEM;
        if (w->n_meta)
            memcpy(m, w->meta, (size_t)w->n_meta * sizeof *m);
        qkv__free(w->meta);
        w->meta = m;
        w->cap_meta = cap;
    }
    w->meta[w->n_meta].key = qkv__strdup(key);
    w->meta[w->n_meta].value = qkv__strdup(value);
    w->n_meta++;
    return QKV_OK;
}

qkv_status qkv_st_write(qkv_st_writer *w, const char *path)
{
    if (!w || !path)
        return qkv_set_error(QKV_ERR_ARG, "safetensors writer: NULL argument");
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return qkv_set_error(QKV_ERR_NOMEM, "safetensors writer: out of memory");
    if (w->n_meta) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int64_t i = 0; i < w->n_meta; i++)
            cJSON_AddStringToObject(m, w->meta[i].key, w->meta[i].value);
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n; i++) {
        const wr_entry *e = &w->e[i];
        cJSON *o = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(o, "dtype", dtype_name(e->dtype));
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[d]));
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + e->nbytes)));
        off += e->nbytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json)
        return qkv_set_error(QKV_ERR_NOMEM, "safetensors writer: out of memory");
    size_t jl = strlen(json), padded = (jl + 7) / 8 * 8;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        free(json);
        return qkv_set_error(QKV_ERR_ARG, "safetensors writer: path too long: %.64s...", path);
    }
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(json);
        return qkv_set_error(QKV_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(((uint64_t)padded >> (8 * i)) & 0xff);
    bool ok = fwrite(len, 1, 8, fp) == 8 && fwrite(json, 1, jl, fp) == jl;
    for (size_t i = jl; i < padded && ok; i++)
        ok = fputc(' ', fp) != EOF;
    free(json);
    for (int64_t i = 0; i < w->n && ok; i++)
        ok = fwrite(w->e[i].bytes, 1, w->e[i].nbytes, fp) == w->e[i].nbytes;
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    if (fclose(fp) != 0)
        ok = false;
    if (!ok) {
        int err = errno;
        unlink(tmp);
        return qkv_set_error(QKV_ERR_IO, "%s: write failed: %s", tmp, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return qkv_set_error(QKV_ERR_IO, "%s: cannot rename to %s: %s", tmp, path,
                             strerror(err));
    }
    return QKV_OK;
}
