/* args.c - the option parser every `qkv` command shares (see args.h). */
#include "args.h"

#include "qkv.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 1024

/* Prints "qkv CMD: message" and a pointer to --help; returns exit status 2. */
__attribute__((format(printf, 2, 3))) static int usage_error(const args_spec *s,
                                                             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qkv %s: ", s->command);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see `qkv %s --help`)\n", s->command);
    va_end(ap);
    return 2;
}

static int bounded(const arg_opt *o) { return o->min != o->max; }

static int in_choices(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *c = choices; *c;) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && !strncmp(c, v, n))
            return 1;
        c += len + (bar != NULL);
    }
    return 0;
}

/* Converts text into o's variable; 0, or 2 with a message. */
static int set_value(const args_spec *s, const arg_opt *o, const char *text)
{
    char *end;
    char range[64] = "";
    if (bounded(o))
        snprintf(range, sizeof range, " in [%g, %g]", o->min, o->max);
    errno = 0;
    switch (o->kind) {
    case ARG_INT: {
        long long v = strtoll(text, &end, 10);
        if (!*text || *end || errno || (bounded(o) && (v < o->min || v > o->max)))
            return usage_error(s, "--%s: expected an integer%s, got '%s'", o->name,
                               range, text);
        *(int64_t *)o->value = v;
        return 0;
    }
    case ARG_U64: {
        unsigned long long v = strtoull(text, &end, 10);
        if (!*text || *end || errno || *text == '-')
            return usage_error(s, "--%s: expected a non-negative integer, got '%s'", o->name,
                               text);
        *(uint64_t *)o->value = v;
        return 0;
    }
    case ARG_FLOAT: {
        double v = strtod(text, &end);
        if (!*text || *end || errno || !isfinite(v) ||
            (bounded(o) && (v < o->min || v > o->max)))
            return usage_error(s, "--%s: expected a number%s, got '%s'", o->name, range,
                               text);
        *(double *)o->value = v;
        return 0;
    }
    case ARG_CHOICE:
        if (!in_choices(o->choices, text))
            return usage_error(s, "--%s: expected one of %s, got '%s'", o->name,
                               o->choices, text);
        *(const char **)o->value = text;
        return 0;
    case ARG_STRING:
        *(const char **)o->value = text;
        return 0;
    case ARG_FLAG:
        if (!strcmp(text, "1") || !strcmp(text, "true") || !strcmp(text, "yes"))
            *(int *)o->value = 1;
        else if (!strcmp(text, "0") || !strcmp(text, "false") || !strcmp(text, "no"))
            *(int *)o->value = 0;
        else
            return usage_error(s, "--%s: a flag takes no value (or 0/1), got '%s'", o->name,
                               text);
        return 0;
    }
    return 2;
}

int args_threads_given;

int args_threads(const char *what, const char *text)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (!*text || *end || errno || v < 1 || v > MAX_THREADS) {
        fprintf(stderr, "qkv: %s: expected a thread count in [1, %d], got '%s'\n", what,
                MAX_THREADS, text);
        return 2;
    }
    qkv_set_threads((int)v);
    args_threads_given = 1;
    return 0;
}

int args_parse(args_spec *s, int argc, char **argv)
{
    s->pos = argv + 1; /* positionals are compacted to the front of argv[1..] */
    s->n_pos = 0;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            args_help(s, stdout);
            return 0;
        }
        if (!strcmp(a, "--")) {
            for (i++; i < argc; i++) {
                if (s->n_pos >= s->max_positional)
                    return usage_error(s, "unexpected argument '%s'", argv[i]);
                s->pos[s->n_pos++] = argv[i];
            }
            break;
        }
        if (strncmp(a, "--", 2) != 0 || !a[2]) {
            if (s->n_pos >= s->max_positional)
                return usage_error(s, "unexpected argument '%s'", a);
            s->pos[s->n_pos++] = a;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const char *value = eq ? eq + 1 : NULL;
        if (len == strlen("threads") && !strncmp(name, "threads", len)) {
            if (!value && i + 1 >= argc)
                return usage_error(s, "--threads needs a value");
            if (args_threads("--threads", value ? value : argv[++i]))
                return 2;
            continue;
        }
        const arg_opt *o = NULL;
        for (int k = 0; k < s->n_opts && !o; k++)
            if (strlen(s->opts[k].name) == len && !strncmp(s->opts[k].name, name, len))
                o = &s->opts[k];
        if (!o) {
            char shown[128];
            snprintf(shown, sizeof shown, "%.*s", (int)len, name);
            return usage_error(s, "unknown option '--%s'", shown);
        }
        if (o->kind == ARG_FLAG && !value) {
            *(int *)o->value = 1;
            continue;
        }
        if (!value) {
            if (i + 1 >= argc)
                return usage_error(s, "--%s needs a value", o->name);
            value = argv[++i];
        }
        if (set_value(s, o, value))
            return 2;
    }
    return ARGS_CONTINUE;
}

static void default_str(const arg_opt *o, char *buf, size_t n)
{
    switch (o->kind) {
    case ARG_INT: snprintf(buf, n, "%" PRId64, *(const int64_t *)o->value); break;
    case ARG_U64: snprintf(buf, n, "%" PRIu64, *(const uint64_t *)o->value); break;
    case ARG_FLOAT: snprintf(buf, n, "%g", *(const double *)o->value); break;
    case ARG_FLAG: snprintf(buf, n, "%s", *(const int *)o->value ? "on" : "off"); break;
    case ARG_STRING:
    case ARG_CHOICE: {
        const char *v = *(const char *const *)o->value;
        snprintf(buf, n, "%s", v ? v : "none");
        break;
    }
    }
}

static const char *metavar(const arg_opt *o)
{
    if (o->metavar)
        return o->metavar;
    switch (o->kind) {
    case ARG_INT:
    case ARG_U64: return "N";
    case ARG_FLOAT: return "X";
    case ARG_STRING: return "TEXT";
    case ARG_CHOICE: return "NAME";
    case ARG_FLAG: return "";
    }
    return "";
}

void args_help(const args_spec *s, FILE *out)
{
    fprintf(out, "usage: qkv %s [options]%s%s\n\n%s\n\noptions:\n", s->command,
            s->positional ? " " : "", s->positional ? s->positional : "", s->summary);
    for (int k = 0; k < s->n_opts; k++) {
        const arg_opt *o = &s->opts[k];
        char left[64], def[64];
        const char *mv = metavar(o);
        snprintf(left, sizeof left, "--%s%s%s", o->name, *mv ? " " : "", mv);
        default_str(o, def, sizeof def);
        fprintf(out, "  %-22s %s (default: %s)\n", left, o->help, def);
        if (o->kind == ARG_CHOICE)
            fprintf(out, "  %-22s   one of: %s\n", "", o->choices);
        else if (bounded(o))
            fprintf(out, "  %-22s   range: [%g, %g]\n", "", o->min, o->max);
    }
    fprintf(out, "  %-22s %s (default: %d)\n", "--threads N",
             "threads for kernels; else $QKV_THREADS, else the cores", qkv_threads());
    fprintf(out, "  %-22s %s\n", "--help", "print this help and exit");
}
