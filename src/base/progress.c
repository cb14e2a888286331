/* progress.c - a one-line progress bar on stderr, drawn only for a person
 * watching: when stderr is a terminal (or $QKV_PROGRESS=1), never into logs. */
#include "../qkv_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define BAR_CELLS 20
#define REDRAW_SECONDS 0.1 /* a terminal repainted faster only flickers */

double qkv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
#define now qkv_now

/* "mm:ss", or "h:mm:ss" from an hour on; "--:--" when unknown. */
static void clock_str(char *buf, size_t n, double seconds)
{
    if (!(seconds >= 0) || seconds > 1e8) {
        snprintf(buf, n, "--:--");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, n, "%02ld:%02ld", s / 60, s % 60);
}

void qkv_progress_start(qkv_progress *p, int64_t total, const char *label)
{
    memset(p, 0, sizeof *p);
    p->total = total;
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    const char *env = getenv("QKV_PROGRESS");
    if (env && *env)
        p->enabled = atoi(env) != 0;
    else
        p->enabled = isatty(fileno(stderr));
    p->t_start = now();
    p->t_drawn = -1.0;
}

char *qkv_progress_format(const qkv_progress *p, double elapsed, const char *extra, char *buf,
                          size_t n)
{
    char el[32], eta[32], rate[32] = "";
    clock_str(el, sizeof el, elapsed);
    if (elapsed > 0 && p->done > 0) {
        double r = (double)p->done / elapsed;
        snprintf(rate, sizeof rate, r >= 100 ? " %.0f/s" : " %.3g/s", r);
    }
    const char *sep = extra && *extra ? " " : "";
    if (p->total <= 0) {
        snprintf(buf, n, "%s %lld %s%s%s%s", p->label, (long long)p->done, el, rate, sep,
                 extra ? extra : "");
        return buf;
    }
    double frac = (double)p->done / (double)p->total;
    frac = frac < 0 ? 0 : frac > 1 ? 1 : frac;
    char bar[BAR_CELLS + 1];
    int full = (int)(frac * BAR_CELLS);
    for (int i = 0; i < BAR_CELLS; i++)
        bar[i] = i < full ? '=' : ' ';
    if (full < BAR_CELLS && p->done > 0)
        bar[full] = '>';
    bar[BAR_CELLS] = '\0';
    /* The ETA assumes the remaining items go at the average rate so far. */
    clock_str(eta, sizeof eta, p->done > 0 ? elapsed * (1.0 - frac) / frac : -1.0);
    snprintf(buf, n, "%s %3d%% [%s] %lld/%lld %s<%s%s%s%s", p->label, (int)(frac * 100.0),
             bar, (long long)p->done, (long long)p->total, el, eta, rate, sep,
             extra ? extra : "");
    return buf;
}

static void draw(qkv_progress *p, double t, const char *extra)
{
    char line[256];
    qkv_progress_format(p, t - p->t_start, extra, line, sizeof line);
    int len = (int)strlen(line);
    /* Pad over what is left of a longer previous line instead of relying on
     * an escape sequence that not every terminal honours. */
    fprintf(stderr, "\r%s%*s", line, p->width > len ? p->width - len : 0, "");
    fflush(stderr);
    p->width = len;
    p->t_drawn = t;
}

void qkv_progress_update(qkv_progress *p, int64_t done, const char *extra)
{
    p->done = done;
    if (!p->enabled)
        return;
    double t = now();
    if (p->t_drawn < 0 || t - p->t_drawn >= REDRAW_SECONDS)
        draw(p, t, extra);
}

void qkv_progress_finish(qkv_progress *p, const char *extra)
{
    if (!p->enabled)
        return;
    draw(p, now(), extra);
    fputc('\n', stderr);
    p->enabled = 0;
}
