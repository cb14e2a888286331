/* alloc.c - heap allocation, counted so that a test can prove that a
 * steady-state training step allocates nothing. */
#include "../qkv_internal.h"

#include <stdatomic.h>
#include <stdlib.h>

static atomic_uint_fast64_t n_mallocs;

uint64_t qkv_malloc_count(void) { return (uint64_t)atomic_load(&n_mallocs); }

void *qkv__malloc(size_t bytes)
{
    atomic_fetch_add(&n_mallocs, 1);
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        qkv_set_error(QKV_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *qkv__calloc(size_t n, size_t size)
{
    atomic_fetch_add(&n_mallocs, 1);
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        qkv_set_error(QKV_ERR_NOMEM, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *qkv__aligned_alloc_quiet(size_t bytes)
{
    atomic_fetch_add(&n_mallocs, 1);
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

void *qkv__aligned_alloc(size_t bytes)
{
    void *p = qkv__aligned_alloc_quiet(bytes);
    if (!p)
        qkv_set_error(QKV_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return p;
}

void qkv__free(void *p) { free(p); }

char *qkv__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = qkv__malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}
