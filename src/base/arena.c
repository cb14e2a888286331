/* arena.c - the step arena: a bump allocator over a list of chunks.
 *
 * Allocation never fails for lack of a preset size: a full chunk is followed
 * by a new one. On reset, if the step needed more than one chunk, they are
 * replaced by a single chunk as large as the peak, so the next step of the
 * same shape runs in one chunk and calls no malloc. */
#include "../qkv_internal.h"

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    unsigned char *mem;
} chunk;

struct qkv_arena {
    chunk *head;     /* the chunk being filled; older ones follow */
    size_t first;    /* size of a fresh chunk */
    size_t used;     /* bytes handed out since reset (with padding) */
    size_t peak;
};

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

void *qkv_arena_alloc(qkv_arena *a, size_t bytes)
{
    size_t need = (bytes + 63) & ~(size_t)63;
    if (need == 0)
        need = 64;
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

size_t qkv_arena_used(const qkv_arena *a) { return a->used; }

size_t qkv_arena_peak(const qkv_arena *a) { return a->peak; }

qkv_arena_pos qkv_arena_mark(const qkv_arena *a)
{
    return (qkv_arena_pos){.chunk = a->head, .chunk_used = a->head->used, .used = a->used};
}

void qkv_arena_rewind(qkv_arena *a, qkv_arena_pos m)
{
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
