/* fra_eng.c - the English-French pairs of d2l r0.17 (load_data_nmt):
 * preprocessing, tokens, vocabularies and padded id arrays, reproducing the
 * book's numbers exactly (tests/parity/cases_io.py computes them the
 * book's way in Python).
 *
 * The whole text is preprocessed once into a new buffer, then cut in place
 * into NUL-terminated tokens; vocabularies copy the tokens they keep. */
#include "io_internal.h"

#include <stdlib.h>

/* ---- preprocessing ---- */

/* Lowercase of a code point, for the scripts of the corpus and their
 * neighbours (Latin-1, Latin Extended-A, Greek, Cyrillic) - what Python's
 * str.lower() does there, without changing any UTF-8 length. */
static uint32_t lower(uint32_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (c < 0xc0)
        return c;
    if (c <= 0xde && c != 0xd7)
        return c + 32;
    if (c == 0x178)
        return 0xff;
    if (c >= 0x100 && c <= 0x17f && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 &&
        c != 0x17f) {
        /* pairs (upper, lower) start even up to U+0137 and from U+014A to
         * U+0177, odd from U+0139 to U+0148 and from U+0179 */
        bool odd_first = (c >= 0x139 && c <= 0x148) || c >= 0x179;
        return (c % 2 == 1) == odd_first ? c + 1 : c;
    }
    if ((c >= 0x391 && c <= 0x3a9 && c != 0x3a2) || (c >= 0x410 && c <= 0x42f))
        return c + 32;
    if (c >= 0x400 && c <= 0x40f)
        return c + 80;
    return c;
}

/* Decodes one UTF-8 sequence at s (n bytes left); invalid bytes come back
 * one at a time as themselves, so that any input passes through. */
static uint32_t utf8_next(const uint8_t *s, size_t n, size_t *len)
{
    if (s[0] < 0x80 || n < 2 || (s[1] & 0xc0) != 0x80) {
        *len = 1;
        return s[0];
    }
    if ((s[0] & 0xe0) == 0xc0) {
        *len = 2;
        return (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
    }
    if ((s[0] & 0xf0) == 0xe0 && n >= 3 && (s[2] & 0xc0) == 0x80) {
        *len = 3;
        return (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    }
    *len = 1;
    return s[0];
}

static size_t utf8_put(uint8_t *d, uint32_t c, size_t len)
{
    if (len == 1)
        d[0] = (uint8_t)c;
    else if (len == 2) {
        d[0] = (uint8_t)(0xc0 | c >> 6);
        d[1] = (uint8_t)(0x80 | (c & 0x3f));
    } else {
        d[0] = (uint8_t)(0xe0 | c >> 12);
        d[1] = (uint8_t)(0x80 | (c >> 6 & 0x3f));
        d[2] = (uint8_t)(0x80 | (c & 0x3f));
    }
    return len;
}

/* d2l's preprocess_nmt: U+202F and U+00A0 become spaces, lowercase, and a
 * space before , . ! ? unless one is there (or it is the first character).
 * With insert_spaces 0, only the lowercasing (d2l's predict_seq2seq). out
 * holds 2 n + 1 bytes; returns the length written (NUL-terminated). */
static size_t preprocess(char *out, const char *in, size_t n, bool insert_spaces)
{
    const uint8_t *s = (const uint8_t *)in;
    uint8_t *d = (uint8_t *)out;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len;
        uint32_t c = utf8_next(s + i, n - i, &len), out_len = (uint32_t)len;
        i += len;
        if (c == 0x202f || c == 0xa0)
            c = ' ', out_len = 1;
        else if (len > 1 || c < 0x80) /* a stray byte >= 0x80 passes as is */
            c = lower(c);
        if (insert_spaces && o > 0 && (c == ',' || c == '.' || c == '!' || c == '?') &&
            d[o - 1] != ' ')
            d[o++] = ' ';
        o += utf8_put(d + o, c, out_len);
    }
    d[o] = 0;
    return o;
}

/* ---- arrays ---- */

enum { PAD = 1, EOS = 3 }; /* ids fixed by the reserved tokens */

/* ids of one sentence (its tokens NUL-separated, ntok of them at s) + <eos>,
 * cut or padded to num_steps; returns the count of non-<pad> ids. */
static int64_t encode(const qkv_vocab *v, const char *s, int64_t ntok, int64_t num_steps,
                      int64_t *ids)
{
    int64_t k = 0;
    for (int64_t t = 0; t < ntok && k < num_steps; t++, s += strlen(s) + 1)
        ids[k++] = qkv_vocab_id(v, s);
    if (k < num_steps)
        ids[k++] = EOS;
    while (k < num_steps)
        ids[k++] = PAD;
    int64_t valid = 0;
    for (int64_t i = 0; i < num_steps; i++)
        valid += ids[i] != PAD;
    return valid;
}

/* One pair: where its two sentences start and how many tokens each has. */
typedef struct {
    const char *src, *tgt;
    int64_t nsrc, ntgt;
} pair;

/* Cuts s (up to end) at every space into NUL-terminated tokens; returns
 * their count (at least 1: "".split(' ') is ['']). */
static int64_t cut_tokens(char *s, char *end)
{
    int64_t n = 1;
    for (char *p = s; p < end; p++)
        if (*p == ' ')
            *p = 0, n++;
    *end = 0;
    return n;
}

qkv_status qkv__nmt_parse(qkv_nmt_data *out, const char *text, size_t len, const char *name,
                          int64_t num_examples, int64_t num_steps)
{
    memset(out, 0, sizeof *out);
    if (num_steps < 1 || num_examples < 0)
        return qkv_set_error(QKV_ERR_ARG, "fra-eng: num_steps %lld, num_examples %lld",
                             (long long)num_steps, (long long)num_examples);
    char *buf = qkv__malloc(2 * len + 1);
    pair *pairs = NULL;
    qkv__counter cs = {0}, ct = {0};
    qkv_status st = QKV_ERR_NOMEM;
    if (!buf)
        goto done;
    size_t n = preprocess(buf, text, len, true);
    /* lines 0..num_examples inclusive, as d2l's `if i > num_examples: break` */
    int64_t np = 0, cap = 0;
    char *line = buf, *end = buf + n;
    for (int64_t i = 0; line <= end && !(num_examples && i > num_examples); i++) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        char *stop = nl ? nl : end;
        char *tab = memchr(line, '\t', (size_t)(stop - line));
        if (tab && !memchr(tab + 1, '\t', (size_t)(stop - tab - 1))) { /* exactly 2 parts */
            if (np == cap) {
                cap = cap ? 2 * cap : 1024;
                pair *p = qkv__malloc((size_t)cap * sizeof *p);
                if (!p)
                    goto done;
                if (np)
                    memcpy(p, pairs, (size_t)np * sizeof *p);
                qkv__free(pairs);
                pairs = p;
            }
            pairs[np] = (pair){line, tab + 1, cut_tokens(line, tab), cut_tokens(tab + 1, stop)};
            np++;
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    if (np == 0) {
        st = qkv_set_error(QKV_ERR_FORMAT, "%s: no 'english<TAB>french' line in the first "
                           "%lld lines", name, (long long)(num_examples + 1));
        goto done;
    }
    for (int64_t i = 0; i < np; i++) {
        const char *s = pairs[i].src, *t = pairs[i].tgt;
        for (int64_t k = 0; k < pairs[i].nsrc; k++, s += strlen(s) + 1)
            if (qkv__counter_add(&cs, s))
                goto done;
        for (int64_t k = 0; k < pairs[i].ntgt; k++, t += strlen(t) + 1)
            if (qkv__counter_add(&ct, t))
                goto done;
    }
    out->src_vocab = qkv__vocab_from_counts(&cs, 2);
    out->tgt_vocab = qkv__vocab_from_counts(&ct, 2);
    out->n = np;
    out->num_steps = num_steps;
    out->src = qkv__malloc((size_t)(np * num_steps) * sizeof(int64_t));
    out->tgt = qkv__malloc((size_t)(np * num_steps) * sizeof(int64_t));
    out->src_valid = qkv__malloc((size_t)np * sizeof(int64_t));
    out->tgt_valid = qkv__malloc((size_t)np * sizeof(int64_t));
    if (!out->src_vocab || !out->tgt_vocab || !out->src || !out->tgt || !out->src_valid ||
        !out->tgt_valid)
        goto done;
    for (int64_t i = 0; i < np; i++) {
        out->src_valid[i] = encode(out->src_vocab, pairs[i].src, pairs[i].nsrc, num_steps,
                                   out->src + i * num_steps);
        out->tgt_valid[i] = encode(out->tgt_vocab, pairs[i].tgt, pairs[i].ntgt, num_steps,
                                   out->tgt + i * num_steps);
    }
    st = QKV_OK;
done:
    if (st == QKV_ERR_NOMEM)
        qkv_set_error(st, "fra-eng: out of memory");
    if (st)
        qkv_nmt_free(out);
    qkv__counter_free(&cs);
    qkv__counter_free(&ct);
    qkv__free(pairs);
    qkv__free(buf);
    return st;
}

qkv_status qkv_nmt_load(qkv_nmt_data *out, const char *path, int64_t num_examples,
                        int64_t num_steps)
{
    if (!out)
        return qkv_set_error(QKV_ERR_ARG, "qkv_nmt_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        path = getenv("QKV_FRA_ENG") ? getenv("QKV_FRA_ENG") : QKV_FRA_ENG_PATH;
    uint8_t *text;
    size_t len;
    qkv_status st = qkv__read_file(path, "fra-eng", &text, &len);
    if (st)
        return st;
    st = qkv__nmt_parse(out, (const char *)text, len, path, num_examples, num_steps);
    qkv__free(text);
    return st;
}

void qkv_nmt_free(qkv_nmt_data *d)
{
    if (!d)
        return;
    qkv__free(d->src), qkv__free(d->tgt);
    qkv__free(d->src_valid), qkv__free(d->tgt_valid);
    qkv_vocab_free(d->src_vocab);
    qkv_vocab_free(d->tgt_vocab);
    memset(d, 0, sizeof *d);
}

int64_t qkv_nmt_preprocess(char *out, size_t out_size, const char *in, int insert_spaces)
{
    if (!out || !in || out_size < 2 * strlen(in) + 1) {
        qkv_set_error(QKV_ERR_ARG, "nmt_preprocess: %s", !out || !in ? "NULL argument"
                      : "out holds fewer than 2 strlen(in) + 1 bytes");
        return -1;
    }
    return (int64_t)preprocess(out, in, strlen(in), insert_spaces != 0);
}

static int64_t encode_sentence(const qkv_vocab *v, const char *sentence, int64_t num_steps,
                               int64_t *ids, bool insert_spaces)
{
    if (!v || !sentence || !ids || num_steps < 1) {
        qkv_set_error(QKV_ERR_ARG, "qkv_nmt_encode: bad arguments");
        return -1;
    }
    size_t n = strlen(sentence);
    char *buf = qkv__malloc(2 * n + 1);
    if (!buf)
        return -1;
    size_t m = preprocess(buf, sentence, n, insert_spaces);
    int64_t ntok = cut_tokens(buf, buf + m);
    encode(v, buf, ntok, num_steps, ids);
    qkv__free(buf);
    return ntok + 1; /* d2l's enc_valid_len: tokens + <eos>, before truncation */
}

int64_t qkv_nmt_encode(const qkv_vocab *v, const char *sentence, int64_t num_steps,
                       int64_t *ids)
{
    return encode_sentence(v, sentence, num_steps, ids, false);
}

int64_t qkv_nmt_encode_text(const qkv_vocab *v, const char *text, int64_t num_steps,
                            int64_t *ids)
{
    return encode_sentence(v, text, num_steps, ids, true);
}
