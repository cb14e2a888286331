/* json_reader.c - a pull reader of JSON text in memory (json_reader.h).
 *
 * Written for speed on large, regular files: no allocation, no tree, keys
 * compared in place, and numbers converted without strtod whenever an exact
 * shortcut exists (docs/coco.md measures it against cJSON). Every loop stops
 * at the NUL that follows the text, so no input makes it read past the end. */
#include "json_reader.h"

#include "../qkv_internal.h"

#include <float.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static void ws(jr *j)
{
    const char *p = j->p;
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
        p++;
    j->p = p;
}

int jr_fail(jr *j, const char *fmt, ...)
{
    if (j->failed)
        return -1;
    j->failed = 1;
    j->err_at = (size_t)(j->p - j->text);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err, sizeof j->err, fmt, ap);
    va_end(ap);
    return -1;
}

int jr_error(const jr *j)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < j->err_at; i++) {
        col++;
        if (j->text[i] == '\n') {
            line++;
            col = 1;
        }
    }
    if (j->text + j->err_at >= j->end)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: not valid JSON: %s at the end of the file%s",
                             j->name, j->err, j->end == j->text ? " (empty)" : " (truncated?)");
    return qkv_set_error(QKV_ERR_FORMAT,
                         "%s: not valid JSON at byte %zu (line %zu, column %zu): %s", j->name,
                         j->err_at, line, col, j->err);
}

void jr_init(jr *j, const char *text, size_t len, const char *name)
{
    memset(j, 0, sizeof *j);
    j->text = j->p = text;
    j->end = text + len;
    j->name = name;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3))
        j->p += 3;
}

const char *jr_kind_name(jr_kind k)
{
    static const char *const names[] = {"nothing", "an object", "a list", "a string",
                                        "a number", "true", "false", "null"};
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "nothing";
}

jr_kind jr_peek(jr *j)
{
    if (j->failed)
        return JR_NONE;
    ws(j);
    switch (*j->p) {
    case '{': return JR_OBJECT;
    case '[': return JR_ARRAY;
    case '"': return JR_STRING;
    case 't': return JR_TRUE;
    case 'f': return JR_FALSE;
    case 'n': return JR_NULL;
    default: return *j->p == '-' || is_digit(*j->p) ? JR_NUMBER : JR_NONE;
    }
}

static int enter(jr *j, char open, const char *what)
{
    if (jr_peek(j) == JR_NONE && j->failed)
        return -1;
    if (*j->p != open)
        return jr_fail(j, "expected %s", what);
    if (++j->depth > JR_MAX_DEPTH)
        return jr_fail(j, "nested deeper than %d", JR_MAX_DEPTH);
    j->p++;
    return 0;
}

int jr_object(jr *j) { return enter(j, '{', "an object"); }
int jr_array(jr *j) { return enter(j, '[', "a list"); }

/* The separator before the next member or element, or the closing bracket:
 * 1 (a member follows), 0 (closed), -1. */
static int next_item(jr *j, char close, int *first)
{
    if (j->failed)
        return -1;
    ws(j);
    if (*j->p == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    if (!*first) {
        if (*j->p != ',')
            return jr_fail(j, "expected ',' or '%c'", close);
        j->p++;
        ws(j);
    }
    *first = 0;
    return 1;
}

int jr_key(jr *j, char *key, size_t cap, size_t *len, int *first)
{
    int r = next_item(j, '}', first);
    if (r <= 0)
        return r;
    if (*j->p != '"')
        return jr_fail(j, "expected a key in double quotes");
    if (jr_string(j, key, cap, len))
        return -1;
    ws(j);
    if (*j->p != ':')
        return jr_fail(j, "expected ':' after a key");
    j->p++;
    ws(j);
    return 1;
}

int jr_next(jr *j, int *first) { return next_item(j, ']', first); }

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 0;
}

/* Appends b (n bytes) at buf + *len as far as it fits below cap - 1; *len
 * counts every byte. */
static void put(char *buf, size_t cap, size_t *len, const char *b, size_t n)
{
    if (buf && *len < cap) {
        size_t room = cap - 1 - *len;
        memcpy(buf + *len, b, n < room ? n : room);
    }
    *len += n;
}

int jr_string(jr *j, char *buf, size_t cap, size_t *out_len)
{
    if (jr_peek(j) != JR_STRING)
        return j->failed ? -1 : jr_fail(j, "expected a string");
    const char *p = j->p + 1;
    size_t len = 0;
    for (;;) {
        const char *run = p; /* a run without quotes, escapes or control bytes */
        while (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
            p++;
        put(buf, cap, &len, run, (size_t)(p - run));
        if (*p == '"')
            break;
        if (*p != '\\') {
            j->p = p;
            return jr_fail(j, p >= j->end ? "a string is not closed"
                                          : "a control character inside a string");
        }
        p++;
        char c = *p, one = 0;
        switch (c) {
        case '"': one = '"'; break;
        case '\\': one = '\\'; break;
        case '/': one = '/'; break;
        case 'b': one = '\b'; break;
        case 'f': one = '\f'; break;
        case 'n': one = '\n'; break;
        case 'r': one = '\r'; break;
        case 't': one = '\t'; break;
        case 'u': break;
        default: j->p = p; return jr_fail(j, "a bad escape in a string");
        }
        if (one) {
            put(buf, cap, &len, &one, 1);
            p++;
            continue;
        }
        unsigned u;
        if (hex4(p + 1, &u)) {
            j->p = p;
            return jr_fail(j, "a bad \\u escape in a string");
        }
        p += 5;
        unsigned lo;
        /* a surrogate pair makes one code point; a lone surrogate is kept
         * as it is (Python keeps it too) */
        if (u >= 0xD800 && u < 0xDC00 && p[0] == '\\' && p[1] == 'u' && !hex4(p + 2, &lo) &&
            lo >= 0xDC00 && lo < 0xE000) {
            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
        }
        char utf8[4];
        size_t n;
        if (u < 0x80) {
            utf8[0] = (char)u;
            n = 1;
        } else if (u < 0x800) {
            utf8[0] = (char)(0xC0 | u >> 6);
            utf8[1] = (char)(0x80 | (u & 0x3F));
            n = 2;
        } else if (u < 0x10000) {
            utf8[0] = (char)(0xE0 | u >> 12);
            utf8[1] = (char)(0x80 | (u >> 6 & 0x3F));
            utf8[2] = (char)(0x80 | (u & 0x3F));
            n = 3;
        } else {
            utf8[0] = (char)(0xF0 | u >> 18);
            utf8[1] = (char)(0x80 | (u >> 12 & 0x3F));
            utf8[2] = (char)(0x80 | (u >> 6 & 0x3F));
            utf8[3] = (char)(0x80 | (u & 0x3F));
            n = 4;
        }
        put(buf, cap, &len, utf8, n);
    }
    if (buf && cap)
        buf[len < cap ? len : cap - 1] = '\0';
    if (out_len)
        *out_len = len;
    j->p = p + 1;
    return 0;
}

/* ---- numbers ------------------------------------------------------------ */

static const double P10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                             1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                             1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#if LDBL_MANT_DIG >= 64
static const long double P10L[] = {1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,
                                   1e7L,  1e8L,  1e9L,  1e10L, 1e11L, 1e12L, 1e13L,
                                   1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L, 1e20L,
                                   1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};
#endif

/* strtod in the C locale on a NUL-terminated copy of s[0..n). */
static locale_t c_locale;
static void make_c_locale(void) { c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

static double slow_decimal(const char *s, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, make_c_locale);
    if (!c_locale)
        return NAN;
    char small[128], *buf = n < sizeof small ? small : malloc(n + 1);
    if (!buf)
        return NAN;
    memcpy(buf, s, n);
    buf[n] = '\0';
    double d = strtod_l(buf, NULL, c_locale);
    if (buf != small)
        free(buf);
    return d;
}

/* The double nearest to (-1)^neg * m * 10^e10 (m the first 19 significant
 * digits, `dropped` if a nonzero digit came after them); s[0..n) is the
 * number's text, for the slow path. */
static double to_double(int neg, uint64_t m, int64_t e10, int dropped, const char *s, size_t n)
{
    if (m == 0)
        return neg ? -0.0 : 0.0;
    if (!dropped && m <= (1ull << 53) && e10 >= -22 && e10 <= 22) {
        /* both exact as doubles: one correctly rounded operation (Clinger) */
        double d = (double)m;
        d = e10 < 0 ? d / P10[-e10] : d * P10[e10];
        return neg ? -d : d;
    }
#if LDBL_MANT_DIG >= 64
    if (!dropped && e10 >= -27 && e10 <= 27) {
        /* m and 10^|e10| are exact in long double; the one rounding to its
         * 64 bits and then to double's 53 can differ from rounding once only
         * when the first lands exactly halfway between two doubles */
        long double x = (long double)m;
        x = e10 < 0 ? x / P10L[-e10] : x * P10L[e10];
        double d = (double)x;
        if ((long double)d != x) {
            double nb = nextafter(d, x > (long double)d ? INFINITY : -INFINITY);
            long double mid = ((long double)d + (long double)nb) / 2;
            if (x == mid)
                return slow_decimal(s, n);
        }
        return neg ? -d : d;
    }
#endif
    return slow_decimal(s, n);
}

/* Reads a JSON number at *pp (NUL-terminated text) in one pass: checks the
 * grammar, gathers the digits and converts. 0 with *pp after it, or -1 with
 * *pp at the offending byte and *why set. */
static int scan_number(const char **pp, double *out, const char **why)
{
    const char *s = *pp, *p = s;
    int neg = *p == '-';
    p += neg;
    uint64_t m = 0;     /* the first 19 significant digits */
    int digits = 0, dropped = 0;
    int64_t e10 = 0;    /* value = m * 10^e10, up to the dropped digits */
    unsigned c = (unsigned char)*p - '0';
    if (c == 0) {
        p++;
    } else if (c <= 9) {
        for (; (c = (unsigned char)*p - '0') <= 9; p++) {
            if (digits < 19) {
                m = m * 10 + c;
                digits++;
            } else {
                e10++;
                dropped |= c != 0;
            }
        }
    } else {
        *pp = p;
        *why = "a malformed number";
        return -1;
    }
    if (*p == '.') {
        p++;
        if ((unsigned)((unsigned char)*p - '0') > 9u) {
            *pp = p;
            *why = "a malformed number (no digit after '.')";
            return -1;
        }
        for (; (c = (unsigned char)*p - '0') <= 9; p++) {
            if (digits < 19) {
                if (m == 0 && c == 0) { /* a leading zero: only the scale */
                    e10--;
                    continue;
                }
                m = m * 10 + c;
                digits++;
                e10--;
            } else {
                dropped |= c != 0;
            }
        }
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        int eneg = *p == '-';
        p += *p == '-' || *p == '+';
        if ((unsigned)((unsigned char)*p - '0') > 9u) {
            *pp = p;
            *why = "a malformed number (no digit in the exponent)";
            return -1;
        }
        int64_t x = 0;
        for (; (c = (unsigned char)*p - '0') <= 9; p++)
            if (x < 100000)
                x = x * 10 + c;
        e10 += eneg ? -x : x;
    }
    *pp = p;
    *out = to_double(neg, m, e10, dropped, s, (size_t)(p - s));
    return 0;
}

double jr_decimal(const char *s, size_t n)
{
    char small[128], *buf = n < sizeof small ? small : malloc(n + 1);
    if (!buf)
        return NAN;
    memcpy(buf, s, n);
    buf[n] = '\0';
    const char *p = buf, *why;
    double d;
    if (scan_number(&p, &d, &why) || p != buf + n)
        d = NAN;
    if (buf != small)
        free(buf);
    return d;
}

int jr_number(jr *j, double *out)
{
    if (jr_peek(j) != JR_NUMBER)
        return j->failed ? -1 : jr_fail(j, "expected a number");
    const char *why;
    if (scan_number(&j->p, out, &why))
        return jr_fail(j, "%s", why);
    return 0;
}

static int literal(jr *j, const char *word)
{
    size_t n = strlen(word);
    if (strncmp(j->p, word, n) != 0)
        return jr_fail(j, "expected a value");
    j->p += n;
    return 0;
}

int jr_skip(jr *j)
{
    int first = 1, r;
    double d;
    switch (jr_peek(j)) {
    case JR_OBJECT:
        if (jr_object(j))
            return -1;
        while ((r = jr_key(j, NULL, 0, NULL, &first)) == 1)
            if (jr_skip(j))
                return -1;
        return r;
    case JR_ARRAY:
        if (jr_array(j))
            return -1;
        while ((r = jr_next(j, &first)) == 1)
            if (jr_skip(j))
                return -1;
        return r;
    case JR_STRING: return jr_string(j, NULL, 0, NULL);
    case JR_NUMBER: return jr_number(j, &d);
    case JR_TRUE: return literal(j, "true");
    case JR_FALSE: return literal(j, "false");
    case JR_NULL: return literal(j, "null");
    default: return j->failed ? -1 : jr_fail(j, "expected a value");
    }
}

int jr_end(jr *j)
{
    if (j->failed)
        return -1;
    ws(j);
    if (j->p < j->end)
        return jr_fail(j, "more text after the end of the JSON value");
    return 0;
}
