/* file.c - whole-file reading for the loaders. */
#include "io_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

qkv_status qkv__read_file(const char *path, const char *what, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return qkv_set_error(QKV_ERR_IO, "%s: cannot open %s: %s", what, path, strerror(errno));
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return qkv_set_error(QKV_ERR_IO, "%s: cannot seek in %s: %s", what, path,
                             strerror(errno));
    }
    uint8_t *b = qkv__malloc((size_t)size + 1);
    if (!b) {
        fclose(f);
        return qkv_error_status();
    }
    size_t got = fread(b, 1, (size_t)size, f);
    int failed = ferror(f);
    fclose(f);
    if (failed || got != (size_t)size) {
        qkv__free(b);
        return qkv_set_error(QKV_ERR_IO, "%s: read %zu of %ld bytes of %s", what, got, size,
                             path);
    }
    b[size] = 0;
    *buf = b;
    *len = (size_t)size;
    return QKV_OK;
}
