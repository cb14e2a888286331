/* alloc.c - heap allocation, counted so that a test can prove that a
 * steady-state training step allocates nothing. */
#include "../qkv_internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

/* Under AddressSanitizer the pages come from malloc too, so that reads
 * past a block are caught */
#if defined(__SANITIZE_ADDRESS__)
#define QKV_PAGES_FROM_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QKV_PAGES_FROM_MALLOC 1
#endif
#endif

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

/* malloc keeps freed memory in its heap for reuse, and after a large block
 * is freed it serves blocks up to that size from the heap too (glibc's
 * dynamic mmap threshold): an arena whose chunks come and go (rewinds,
 * resets) would leave the heap as large as every chunk it ever had.
 * Pages of their own are returned when freed. */
void *qkv__pages_alloc(size_t bytes)
{
#ifdef QKV_PAGES_FROM_MALLOC
    void *p = qkv__aligned_alloc(bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
#else
    atomic_fetch_add(&n_mallocs, 1);
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) {
        qkv_set_error(QKV_ERR_NOMEM, "out of memory mapping %zu bytes", bytes);
        return NULL;
    }
    return p;
#endif
}

void qkv__pages_free(void *p, size_t bytes)
{
#ifdef QKV_PAGES_FROM_MALLOC
    (void)bytes;
    free(p);
#else
    if (p)
        munmap(p, bytes ? bytes : 1);
#endif
}

char *qkv__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = qkv__malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}
