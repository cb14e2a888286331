/* arena.c - the step arena: a bump allocator over a list of chunks.
 *
 * Allocation never fails for lack of a preset size: a full chunk is followed
 * by a new one. On reset, if the step needed more than one chunk, they are
 * replaced by a single chunk as large as the peak, so the next step of the
 * same shape runs in one chunk and calls no malloc.
 *
 * A block whose owner knows it dead before the reset (a gradient the
 * backward has used up) can be given back with qkv__arena_release: it joins
 * a free list, merged with free neighbours, and a later allocation of at
 * least RECYCLE_MIN bytes takes the smallest free block that holds it
 * before the bump pointer moves. Reset and rewind empty the list. */
#include "../qkv_internal.h"

/* Under AddressSanitizer a released block is poisoned (its list entry
 * aside) until it is handed out again, so that a read of a gradient after
 * its release is caught. */
#if defined(__SANITIZE_ADDRESS__)
#define QKV_ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QKV_ARENA_ASAN 1
#endif
#endif
#ifdef QKV_ARENA_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    unsigned char *mem;
} chunk;

/* A released block, its own list entry (it is at least RECYCLE_MIN bytes). */
typedef struct free_block {
    struct free_block *next; /* the next free block, by address */
    size_t size;
    const chunk *in;         /* its chunk: only neighbours in one chunk merge */
} free_block;

struct qkv_arena {
    chunk *head;      /* the chunk being filled; older ones follow */
    size_t first;     /* size of a fresh chunk */
    size_t used;      /* bytes handed out since reset (with padding) */
    size_t peak;
    free_block *free; /* released blocks, by address */
    size_t free_bytes;
};

/* Smaller blocks are not worth a list entry: they are never recycled. */
#define RECYCLE_MIN ((size_t)4096)

/* Chunks from this size on get pages of their own (qkv__pages_alloc), so
 * that a chunk freed by a rewind or a reset is returned to the system, not
 * kept in malloc's heap. */
#define PAGES_FROM ((size_t)1 << 18)

static unsigned char *chunk_mem(size_t size)
{
    return size >= PAGES_FROM ? qkv__pages_alloc(size) : qkv__aligned_alloc(size);
}

static chunk *chunk_new(size_t size)
{
    chunk *c = qkv__malloc(sizeof *c);
    if (!c)
        return NULL;
    c->mem = chunk_mem(size);
    if (!c->mem) {
        qkv__free(c);
        return NULL;
    }
    c->size = size;
    c->used = 0;
    c->next = NULL;
    return c;
}

static void chunks_free(chunk *c)
{
    while (c) {
        chunk *n = c->next;
        if (c->size >= PAGES_FROM)
            qkv__pages_free(c->mem, c->size);
        else
            qkv__free(c->mem);
        qkv__free(c);
        c = n;
    }
}

qkv_arena *qkv_arena_new(size_t chunk_bytes)
{
    qkv_arena *a = qkv__calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->first = chunk_bytes ? chunk_bytes : ((size_t)1 << 20);
    a->head = chunk_new(a->first);
    if (!a->head) {
        qkv__free(a);
        return NULL;
    }
    return a;
}

void qkv_arena_free(qkv_arena *a)
{
    if (!a)
        return;
    chunks_free(a->head);
    qkv__free(a);
}

/* The smallest free block of at least `need` bytes, cut to size (its
 * tail: the rest stays listed), or NULL. */
static void *take_free(qkv_arena *a, size_t need)
{
    free_block **best = NULL;
    for (free_block **p = &a->free; *p; p = &(*p)->next)
        if ((*p)->size >= need && (!best || (*p)->size < (*best)->size))
            best = p;
    if (!best)
        return NULL;
    free_block *b = *best;
    if (b->size - need >= RECYCLE_MIN) {
        b->size -= need;
        a->free_bytes -= need;
        UNPOISON((unsigned char *)b + b->size, need);
        return (unsigned char *)b + b->size;
    }
    *best = b->next; /* whole: a few spare bytes stay with it until the reset */
    a->free_bytes -= b->size;
    UNPOISON(b, b->size);
    return b;
}

/* Empties the free list (reset, rewind). */
static void drop_free(qkv_arena *a)
{
    for (free_block *b = a->free, *next; b; b = next) {
        next = b->next;
        UNPOISON(b, b->size);
    }
    a->free = NULL;
    a->free_bytes = 0;
}

void *qkv_arena_alloc(qkv_arena *a, size_t bytes)
{
    size_t need = (bytes + 63) & ~(size_t)63;
    if (need == 0)
        need = 64;
    if (a->free && need >= RECYCLE_MIN) {
        void *p = take_free(a, need);
        if (p)
            return p;
    }
    chunk *c = a->head;
    if (c->used + need > c->size) {
        size_t size = c->size * 2 > need ? c->size * 2 : need;
        chunk *n = chunk_new(size);
        if (!n)
            return NULL;
        n->next = c;
        a->head = c = n;
    }
    void *p = c->mem + c->used;
    c->used += need;
    a->used += need;
    if (a->used > a->peak)
        a->peak = a->used;
    return p;
}

void qkv_arena_reset(qkv_arena *a)
{
    drop_free(a);
    if (a->head->next) {
        /* several chunks: replace them by one that holds the peak */
        chunk *one = chunk_new(a->peak);
        if (one) {
            chunks_free(a->head);
            a->head = one;
        } else {
            chunks_free(a->head->next);
            a->head->next = NULL;
        }
    }
    a->head->used = 0;
    a->used = 0;
}

void qkv__arena_release(qkv_arena *a, void *p, size_t bytes)
{
    size_t need = (bytes + 63) & ~(size_t)63;
    unsigned char *q = p;
    if (!p || need < RECYCLE_MIN)
        return;
    const chunk *in = NULL; /* only the arena's own memory is listed */
    for (const chunk *c = a->head; c && !in; c = c->next)
        if (q >= c->mem && q + need <= c->mem + c->used)
            in = c;
    if (!in)
        return;
    POISON(q, need);
    free_block **at = &a->free, *prev = NULL;
    while (*at && (unsigned char *)*at < q) {
        prev = *at;
        at = &(*at)->next;
    }
    free_block *next = *at;
    a->free_bytes += need;
    if (prev && prev->in == in && (unsigned char *)prev + prev->size == q) {
        prev->size += need; /* joins the block before it */
        if (next && next->in == in && (unsigned char *)prev + prev->size == (unsigned char *)next) {
            prev->size += next->size;
            prev->next = next->next;
            POISON(next, sizeof *next); /* its entry is free memory now */
        }
        return;
    }
    free_block *b = p;
    UNPOISON(b, sizeof *b);
    b->size = need;
    b->in = in;
    b->next = next;
    if (next && next->in == in && q + need == (unsigned char *)next) {
        b->size += next->size; /* and the block after it */
        b->next = next->next;
        POISON(next, sizeof *next);
    }
    *at = b;
}

size_t qkv_arena_used(const qkv_arena *a) { return a->used - a->free_bytes; }

size_t qkv_arena_peak(const qkv_arena *a) { return a->peak; }

qkv_arena_pos qkv_arena_mark(const qkv_arena *a)
{
    return (qkv_arena_pos){.chunk = a->head, .chunk_used = a->head->used, .used = a->used};
}

void qkv_arena_rewind(qkv_arena *a, qkv_arena_pos m)
{
    drop_free(a); /* some may lie past the mark */
    /* chunks begun after the mark go (after a reset there is one chunk as
     * large as the peak, so a steady step only moves the offset back) */
    while (a->head != m.chunk && a->head->next) {
        chunk *c = a->head;
        a->head = c->next;
        c->next = NULL;
        chunks_free(c);
    }
    a->head->used = m.chunk_used;
    a->used = m.used;
}

/* Where p lies: in the part that rewinding to m frees (a chunk begun after
 * m, or m's own chunk past the mark), or not (older memory, or none of the
 * arena's: a parameter, the caller's data). */
static bool freed_by_rewind(const qkv_arena *a, qkv_arena_pos m, const unsigned char *p)
{
    for (const chunk *c = a->head; c; c = c->next) {
        if (p >= c->mem && p < c->mem + c->size)
            return c != m.chunk || p >= c->mem + m.chunk_used;
        if (c == m.chunk)
            break;
    }
    return false;
}

void *qkv__arena_rewind_keep(qkv_arena *a, qkv_arena_pos m, const void *src, size_t bytes)
{
    if (!freed_by_rewind(a, m, src)) {
        qkv_arena_rewind(a, m);
        return (void *)src;
    }
    size_t need = (bytes + 63) & ~(size_t)63;
    chunk *mc = m.chunk;
    if (mc->size - m.chunk_used >= need) {
        /* the bytes move down to the mark before the chunks after it go;
         * within one chunk source and destination may overlap */
        memmove(mc->mem + m.chunk_used, src, bytes);
        qkv_arena_rewind(a, m);
        return qkv_arena_alloc(a, bytes); /* the very bytes just written */
    }
    /* no room after the mark in its chunk (the first pass, before a reset
     * merged the chunks): a chunk of their own, on top of the mark's */
    chunk *c = chunk_new(need > mc->size ? need : mc->size);
    if (!c) {
        qkv_set_error(QKV_ERR_NOMEM, "arena: out of memory keeping %zu bytes", bytes);
        return NULL;
    }
    memcpy(c->mem, src, bytes);
    qkv_arena_rewind(a, m);
    c->next = a->head;
    c->used = need;
    a->head = c;
    a->used += need;
    if (a->used > a->peak)
        a->peak = a->used;
    return c->mem;
}
