/* bleu.c - BLEU scores of translations: d2l's sentence BLEU (the book's
 * check of its four sentences) and sacrebleu's corpus BLEU (held-out sets).
 * Tokens are split on single spaces, as both do on pre-tokenised text. */
#include "../qkv_internal.h"

#include <math.h>

typedef struct {
    const char **tok;
    int *len;
    int64_t n;
} tokens;

/* Splits s on single spaces as Python's str.split(' '): "a  b" has an empty
 * middle token. Returns 0, or -1 if out of memory. */
static int split(tokens *t, const char *s)
{
    int64_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ' ';
    t->tok = qkv__malloc((size_t)n * sizeof *t->tok);
    t->len = qkv__malloc((size_t)n * sizeof *t->len);
    if (!t->tok || !t->len) {
        qkv__free(t->tok);
        qkv__free(t->len);
        return -1;
    }
    t->n = 0;
    const char *start = s;
    for (const char *p = s;; p++)
        if (*p == ' ' || *p == '\0') {
            t->tok[t->n] = start;
            t->len[t->n++] = (int)(p - start);
            start = p + 1;
            if (!*p)
                break;
        }
    return 0;
}

static void tokens_free(tokens *t)
{
    qkv__free(t->tok);
    qkv__free(t->len);
}

static int same_gram(const tokens *a, int64_t i, const tokens *b, int64_t j, int n)
{
    for (int k = 0; k < n; k++)
        if (a->len[i + k] != b->len[j + k] ||
            memcmp(a->tok[i + k], b->tok[j + k], (size_t)a->len[i + k]))
            return 0;
    return 1;
}

/* Clipped matches of pred's n-grams in label's: each label n-gram can be
 * matched once (d2l's counter, decremented on a match). used holds
 * label->n flags. */
static int64_t matches(const tokens *pred, const tokens *label, int n, unsigned char *used)
{
    int64_t m = 0, np = pred->n - n + 1, nl = label->n - n + 1;
    if (nl > 0)
        memset(used, 0, (size_t)nl);
    for (int64_t i = 0; i < np; i++)
        for (int64_t j = 0; j < nl; j++)
            if (!used[j] && same_gram(pred, i, label, j, n)) {
                used[j] = 1;
                m++;
                break;
            }
    return m;
}

double qkv_bleu(const char *pred, const char *label, int k)
{
    if (!pred || !label || k < 1) {
        qkv_set_error(QKV_ERR_ARG, "qkv_bleu: needs two sentences and k >= 1 (k = %d)", k);
        return NAN;
    }
    tokens p, l;
    if (split(&p, pred))
        return NAN;
    if (split(&l, label)) {
        tokens_free(&p);
        return NAN;
    }
    unsigned char *used = qkv__malloc((size_t)l.n + 1);
    double score = NAN;
    if (used) {
        score = exp(fmin(0.0, 1.0 - (double)l.n / (double)p.n));
        for (int n = 1; n <= k; n++) {
            int64_t total = p.n - n + 1;
            if (total <= 0) {
                score = 0.0;
                break;
            }
            score *= pow((double)matches(&p, &l, n, used) / (double)total, pow(0.5, n));
        }
    }
    qkv__free(used);
    tokens_free(&p);
    tokens_free(&l);
    return score;
}

#define BLEU_ORDER 4

double qkv_corpus_bleu(int64_t n, const char *const *preds, const char *const *refs)
{
    if (n < 0 || (n > 0 && (!preds || !refs))) {
        qkv_set_error(QKV_ERR_ARG, "qkv_corpus_bleu: no sentences");
        return NAN;
    }
    double correct[BLEU_ORDER] = {0}, total[BLEU_ORDER] = {0}, sys_len = 0, ref_len = 0;
    for (int64_t s = 0; s < n; s++) {
        tokens p, l;
        if (split(&p, preds[s]))
            return NAN;
        if (split(&l, refs[s])) {
            tokens_free(&p);
            return NAN;
        }
        unsigned char *used = qkv__malloc((size_t)l.n + 1);
        if (!used) {
            tokens_free(&p);
            tokens_free(&l);
            return NAN;
        }
        /* sacrebleu counts an empty line as no tokens, split(' ') as one */
        int64_t pn = preds[s][0] ? p.n : 0, ln = refs[s][0] ? l.n : 0;
        sys_len += (double)pn;
        ref_len += (double)ln;
        for (int k = 1; k <= BLEU_ORDER; k++) {
            if (pn - k + 1 <= 0)
                break;
            total[k - 1] += (double)(pn - k + 1);
            if (ln > 0)
                correct[k - 1] += (double)matches(&p, &l, k, used);
        }
        qkv__free(used);
        tokens_free(&p);
        tokens_free(&l);
    }
    /* sacrebleu's compute_bleu with smooth_method 'exp' */
    double log_sum = 0.0, smooth = 1.0;
    for (int k = 0; k < BLEU_ORDER; k++) {
        if (total[k] == 0.0)
            return 0.0;
        double p;
        if (correct[k] == 0.0) {
            smooth *= 2.0;
            p = 1.0 / (smooth * total[k]);
        } else {
            p = correct[k] / total[k];
        }
        log_sum += log(p);
    }
    double bp = sys_len < ref_len ? (sys_len > 0 ? exp(1.0 - ref_len / sys_len) : 0.0) : 1.0;
    return bp * exp(log_sum / BLEU_ORDER);
}
