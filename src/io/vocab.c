/* vocab.c - vocabularies: token <-> id, as d2l's Vocab.
 *
 * Tokens are kept in id order, each its own allocation, and found through
 * an open-addressing hash table (FNV-1a, linear probing, at most half
 * full). A vocabulary is built by counting (d2l's Vocab: "<unk>", the
 * reserved tokens, then every token seen min_freq times, most frequent
 * first, ties in order of first appearance) or given as a list (a model
 * file's). */
#include "io_internal.h"

#include <stdlib.h>

struct qkv_vocab {
    int64_t n;
    char **tok;     /* id -> token (each its own allocation) */
    int64_t *slot;  /* open addressing: hash slot -> id, -1 empty */
    int64_t cap;    /* slots, a power of two */
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211u;
    return h;
}


static int64_t *find_slot(int64_t *slot, int64_t cap, const char *const *tok, const char *s)
{
    for (uint64_t h = hash(s) & (uint64_t)(cap - 1);; h = (h + 1) & (uint64_t)(cap - 1))
        if (slot[h] < 0 || !strcmp(tok[slot[h]], s))
            return &slot[h];
}

qkv_status qkv__counter_add(qkv__counter *c, const char *s)
{
    if (2 * (c->n + 1) > c->cap) { /* grow and rehash at half load */
        int64_t cap = c->cap ? 2 * c->cap : 1024;
        int64_t *slot = qkv__malloc((size_t)cap * sizeof *slot);
        if (!slot)
            return QKV_ERR_NOMEM;
        memset(slot, 0xff, (size_t)cap * sizeof *slot);
        for (int64_t i = 0; i < c->n; i++)
            *find_slot(slot, cap, c->tok, c->tok[i]) = i;
        qkv__free(c->slot);
        c->slot = slot, c->cap = cap;
    }
    int64_t *p = find_slot(c->slot, c->cap, c->tok, s);
    if (*p >= 0) {
        c->count[*p]++;
        return QKV_OK;
    }
    if (c->n == c->cap_tok) {
        int64_t cap = c->cap_tok ? 2 * c->cap_tok : 1024;
        const char **tok = qkv__malloc((size_t)cap * sizeof *tok);
        int64_t *count = qkv__malloc((size_t)cap * sizeof *count);
        if (!tok || !count) {
            qkv__free(tok), qkv__free(count);
            return QKV_ERR_NOMEM;
        }
        if (c->n) {
            memcpy(tok, c->tok, (size_t)c->n * sizeof *tok);
            memcpy(count, c->count, (size_t)c->n * sizeof *count);
        }
        qkv__free(c->tok), qkv__free(c->count);
        c->tok = tok, c->count = count, c->cap_tok = cap;
    }
    c->tok[c->n] = s;
    c->count[c->n] = 1;
    *p = c->n++;
    return QKV_OK;
}

void qkv__counter_free(qkv__counter *c)
{
    qkv__free(c->tok), qkv__free(c->count), qkv__free(c->slot);
}

typedef struct {
    int64_t count, first; /* first: the token's index in order of appearance */
} rank;

/* most frequent first; ties in order of first appearance (Python's sort is
 * stable, and Counter keeps insertion order) */
static int by_count(const void *a, const void *b)
{
    const rank *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return (x->first > y->first) - (x->first < y->first);
}

void qkv_vocab_free(qkv_vocab *v)
{
    if (!v)
        return;
    for (int64_t i = 0; i < v->n; i++)
        qkv__free(v->tok[i]);
    qkv__free(v->tok);
    qkv__free(v->slot);
    qkv__free(v);
}

static qkv_status vocab_push(qkv_vocab *v, const char *s)
{
    int64_t *p = find_slot(v->slot, v->cap, (const char *const *)v->tok, s);
    if (*p >= 0)
        return QKV_OK; /* reserved tokens met again in the text are kept once */
    v->tok[v->n] = qkv__strdup(s);
    if (!v->tok[v->n])
        return QKV_ERR_NOMEM;
    *p = v->n++;
    return QKV_OK;
}

/* d2l's Vocab(tokens, min_freq, reserved_tokens=['<pad>', '<bos>', '<eos>']) */
qkv_vocab *qkv__vocab_from_counts(const qkv__counter *c, int64_t min_freq)
{
    qkv_vocab *v = qkv__calloc(1, sizeof *v);
    rank *order = qkv__malloc((size_t)(c->n + 1) * sizeof *order);
    if (!v || !order)
        goto fail;
    for (int64_t i = 0; i < c->n; i++)
        order[i] = (rank){c->count[i], i};
    qsort(order, (size_t)c->n, sizeof *order, by_count);
    v->cap = 16;
    while (v->cap < 2 * (c->n + 4))
        v->cap *= 2;
    v->tok = qkv__calloc((size_t)(c->n + 4), sizeof *v->tok);
    v->slot = qkv__malloc((size_t)v->cap * sizeof *v->slot);
    if (!v->tok || !v->slot)
        goto fail;
    memset(v->slot, 0xff, (size_t)v->cap * sizeof *v->slot);
    static const char *reserved[4] = {"<unk>", "<pad>", "<bos>", "<eos>"};
    for (int i = 0; i < 4; i++)
        if (vocab_push(v, reserved[i]))
            goto fail;
    for (int64_t i = 0; i < c->n && order[i].count >= min_freq; i++)
        if (vocab_push(v, c->tok[order[i].first]))
            goto fail;
    qkv__free(order);
    return v;
fail:
    qkv__free(order);
    qkv_vocab_free(v);
    qkv_set_error(QKV_ERR_NOMEM, "out of memory building a vocabulary");
    return NULL;
}

int64_t qkv_vocab_size(const qkv_vocab *v) { return v ? v->n : 0; }

const char *qkv_vocab_token(const qkv_vocab *v, int64_t id)
{
    return v && id >= 0 && id < v->n ? v->tok[id] : NULL;
}

int64_t qkv_vocab_id(const qkv_vocab *v, const char *token)
{
    if (!v || !token)
        return 0;
    int64_t id = *find_slot(v->slot, v->cap, (const char *const *)v->tok, token);
    return id >= 0 ? id : 0;
}

qkv_vocab *qkv_vocab_new(int64_t n, const char *const *tokens)
{
    if (n < 1 || !tokens) {
        qkv_set_error(QKV_ERR_ARG, "vocab_new: need n >= 1 tokens, got %lld%s", (long long)n,
                      tokens ? "" : " (NULL)");
        return NULL;
    }
    qkv_vocab *v = qkv__calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->cap = 16;
    while (v->cap < 2 * n)
        v->cap *= 2;
    v->tok = qkv__calloc((size_t)n, sizeof *v->tok);
    v->slot = qkv__malloc((size_t)v->cap * sizeof *v->slot);
    if (!v->tok || !v->slot) {
        qkv_vocab_free(v);
        qkv_set_error(QKV_ERR_NOMEM, "vocab_new: out of memory for %lld tokens", (long long)n);
        return NULL;
    }
    memset(v->slot, 0xff, (size_t)v->cap * sizeof *v->slot);
    for (int64_t i = 0; i < n; i++) {
        if (!tokens[i]) {
            qkv_vocab_free(v);
            qkv_set_error(QKV_ERR_ARG, "vocab_new: token %lld is NULL", (long long)i);
            return NULL;
        }
        int64_t *p = find_slot(v->slot, v->cap, (const char *const *)v->tok, tokens[i]);
        if (*p >= 0) {
            qkv_set_error(QKV_ERR_ARG, "vocab_new: token %lld '%s' repeats token %lld",
                          (long long)i, tokens[i], (long long)*p);
            qkv_vocab_free(v);
            return NULL;
        }
        if (!(v->tok[i] = qkv__strdup(tokens[i]))) {
            qkv_vocab_free(v);
            qkv_set_error(QKV_ERR_NOMEM, "vocab_new: out of memory");
            return NULL;
        }
        *p = i;
        v->n = i + 1;
    }
    return v;
}

qkv_vocab *qkv_vocab_build(int64_t n, const char *const *tokens, int64_t min_freq)
{
    if (n < 0 || (n > 0 && !tokens)) {
        qkv_set_error(QKV_ERR_ARG, "vocab_build: bad token list");
        return NULL;
    }
    qkv__counter c = {0};
    for (int64_t i = 0; i < n; i++)
        if (!tokens[i] || qkv__counter_add(&c, tokens[i]) != QKV_OK) {
            qkv__counter_free(&c);
            qkv_set_error(tokens[i] ? QKV_ERR_NOMEM : QKV_ERR_ARG, "vocab_build: %s",
                          tokens[i] ? "out of memory" : "a token is NULL");
            return NULL;
        }
    qkv_vocab *v = qkv__vocab_from_counts(&c, min_freq);
    qkv__counter_free(&c);
    return v;
}

char *qkv__vocab_lines(const qkv_vocab *v)
{
    size_t n = 1;
    for (int64_t i = 0; i < v->n; i++)
        n += strlen(v->tok[i]) + 1;
    char *s = qkv__malloc(n), *p = s;
    if (!s)
        return NULL;
    for (int64_t i = 0; i < v->n; i++) {
        size_t k = strlen(v->tok[i]);
        if (i)
            *p++ = '\n';
        memcpy(p, v->tok[i], k);
        p += k;
    }
    *p = '\0';
    return s;
}

qkv_vocab *qkv__vocab_from_lines(const char *lines)
{
    if (!lines) {
        qkv_set_error(QKV_ERR_FORMAT, "no vocabulary");
        return NULL;
    }
    char *text = qkv__strdup(lines);
    int64_t n = 1;
    for (const char *p = lines; *p; p++)
        n += *p == '\n';
    const char **tok = qkv__malloc((size_t)n * sizeof *tok);
    if (!text || !tok) {
        qkv__free(text), qkv__free(tok);
        qkv_set_error(QKV_ERR_NOMEM, "out of memory reading a vocabulary");
        return NULL;
    }
    int64_t i = 0;
    for (char *p = text, *start = text;; p++)
        if (*p == '\n' || !*p) {
            bool end = !*p;
            *p = '\0';
            tok[i++] = start;
            start = p + 1;
            if (end)
                break;
        }
    qkv_vocab *v = qkv_vocab_new(n, tok);
    qkv__free(tok);
    qkv__free(text);
    return v;
}
