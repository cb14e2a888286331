/* metrics.c - training metrics as JSON lines, one object per epoch, flushed
 * as written so that a crashed run keeps every finished epoch. */
#include "io_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct qkv_metrics {
    FILE *f;
    char *path;
};

static qkv_metrics *metrics_open(const char *path, const char *mode)
{
    if (!path) {
        qkv_set_error(QKV_ERR_ARG, "qkv_metrics_open: path is NULL");
        return NULL;
    }
    qkv_metrics *m = qkv__calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->path = qkv__strdup(path);
    m->f = m->path ? fopen(path, mode) : NULL;
    if (!m->f) {
        if (m->path)
            qkv_set_error(QKV_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        qkv__free(m->path);
        qkv__free(m);
        return NULL;
    }
    return m;
}

qkv_metrics *qkv_metrics_open(const char *path) { return metrics_open(path, "w"); }
qkv_metrics *qkv_metrics_append(const char *path) { return metrics_open(path, "a"); }

/* A JSON string: quotes, backslashes and control characters escaped. */
void qkv__json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

qkv_status qkv_metrics_write(qkv_metrics *m, int64_t epoch, int n, const char *const *names,
                             const double *values)
{
    if (!m || n < 0 || (n > 0 && (!names || !values)))
        return qkv_set_error(QKV_ERR_ARG, "qkv_metrics_write: bad arguments");
    fprintf(m->f, "{\"epoch\": %lld", (long long)epoch);
    for (int i = 0; i < n; i++) {
        fputs(", ", m->f);
        qkv__json_string(m->f, names[i] ? names[i] : "");
        if (isfinite(values[i])) {
            /* the shortest of 15 or 17 digits that reads back the same */
            char num[32];
            snprintf(num, sizeof num, "%.15g", values[i]);
            if (strtod(num, NULL) != values[i])
                snprintf(num, sizeof num, "%.17g", values[i]);
            fprintf(m->f, ": %s", num);
        } else
            fputs(": null", m->f); /* JSON has no NaN */
    }
    fputs("}\n", m->f);
    if (fflush(m->f) != 0 || ferror(m->f))
        return qkv_set_error(QKV_ERR_IO, "%s: write failed: %s", m->path, strerror(errno));
    return QKV_OK;
}

qkv_status qkv_metrics_close(qkv_metrics *m)
{
    if (!m)
        return QKV_OK;
    qkv_status st = QKV_OK;
    if (fclose(m->f) != 0)
        st = qkv_set_error(QKV_ERR_IO, "%s: close failed: %s", m->path, strerror(errno));
    qkv__free(m->path);
    qkv__free(m);
    return st;
}
