/* file.c - whole-file reading for the loaders. */
#include "io_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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

qkv_status qkv_make_dirs(const char *path)
{
    char buf[4096];
    if (!path || !*path)
        return qkv_set_error(QKV_ERR_ARG, "make_dirs: no path");
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return qkv_set_error(QKV_ERR_ARG, "make_dirs: path too long: %.64s...", path);
    for (char *p = buf + 1;; p++) {
        char c = *p;
        if (c != '/' && c != '\0')
            continue;
        *p = '\0';
        struct stat st;
        if (mkdir(buf, 0777) != 0 && !(errno == EEXIST && stat(buf, &st) == 0 &&
                                       S_ISDIR(st.st_mode))) {
            const char *why = errno == EEXIST ? "a file is in the way" : strerror(errno);
            if (c) /* a parent failed: name it and the directory asked for */
                return qkv_set_error(QKV_ERR_IO, "cannot create directory %s (at %s: %s)", path,
                                     buf, why);
            return qkv_set_error(QKV_ERR_IO, "cannot create directory %s: %s", buf, why);
        }
        *p = c;
        if (!c)
            return QKV_OK;
    }
}
