/* assignment.c - linear sum assignment by shortest augmenting paths (the
 * Jonker-Volgenant scheme in the rectangular form of Crouse, "On
 * implementing 2D rectangular assignment algorithms", IEEE TAES 52(4),
 * 2016, the algorithm behind scipy.optimize.linear_sum_assignment), and
 * qkv_linear_sum_assignment, its public form.
 *
 * The problem is solved with the shorter side as rows: nr = min(n, m) rows
 * are matched one at a time. Row `cur` is added by a Dijkstra search over
 * the columns on reduced costs c(i, j) - u(i) - v(j), which the duals u, v
 * keep non-negative on every pair; the search stops at the first free
 * column it settles, the duals are moved by the settled distances, and the
 * alternating path is flipped. Each row costs O(nr nc), the whole O(nr^2 nc). */
#include "assignment.h"
#include "../qkv_internal.h"

#include <math.h>
#include <stdbool.h>

typedef struct {
    int64_t nr, nc;         /* rows (the shorter side) and columns           */
    const double *cost;     /* c(i, j) = cost[i * rs + j * cs]               */
    int64_t rs, cs;
    double *u, *v;          /* duals (nr), (nc)                              */
    double *dist;           /* (nc) shortest reduced distance from row cur   */
    int64_t *path;          /* (nc) the row a column was reached from        */
    int64_t *col4row;       /* (nr) matched column or -1                     */
    int64_t *row4col;       /* (nc) matched row or -1                        */
    int64_t *open;          /* (nc) columns not yet settled, first nopen     */
    uint8_t *row_seen;      /* (nr) rows on the search tree                  */
    uint8_t *col_done;      /* (nc) settled columns                          */
} lsa;

size_t qkv_k_lsa_workspace(int64_t n, int64_t m)
{
    int64_t nr = n < m ? n : m, nc = n < m ? m : n;
    size_t flags = (size_t)(nr + nc);
    return sizeof(double) * (size_t)(nr + 2 * nc) + sizeof(int64_t) * (size_t)(nr + 3 * nc) +
           ((flags + 7) & ~(size_t)7);
}

/* Adds row cur to the matching along a shortest augmenting path. */
static bool augment(lsa *s, int64_t cur)
{
    int64_t nr = s->nr, nc = s->nc;
    for (int64_t j = 0; j < nc; j++) {
        s->dist[j] = INFINITY;
        s->path[j] = -1;
        s->col_done[j] = 0;
        s->open[j] = j;
    }
    memset(s->row_seen, 0, (size_t)nr);
    int64_t nopen = nc, i = cur, sink = -1;
    double dmin = 0; /* distance of the column settled last */
    while (sink < 0) {
        s->row_seen[i] = 1;
        const double *ci = s->cost + i * s->rs;
        double ui = s->u[i], lowest = INFINITY;
        int64_t at = -1;
        for (int64_t t = 0; t < nopen; t++) {
            int64_t j = s->open[t];
            double r = dmin + ci[j * s->cs] - ui - s->v[j];
            if (r < s->dist[j]) {
                s->dist[j] = r;
                s->path[j] = i;
            }
            /* among equal distances a free column ends the search sooner */
            if (s->dist[j] < lowest || (s->dist[j] == lowest && s->row4col[j] < 0 && at >= 0)) {
                lowest = s->dist[j];
                at = t;
            }
        }
        /* no finite edge leaves the tree: rows 0..cur cannot all be matched */
        if (at < 0 || lowest == INFINITY)
            return false;
        dmin = lowest;
        int64_t j = s->open[at];
        s->col_done[j] = 1;
        s->open[at] = s->open[--nopen];
        if (s->row4col[j] < 0)
            sink = j;
        else
            i = s->row4col[j];
    }
    /* duals: every settled column and every row of the tree moves by what
     * its distance fell short of dmin, which keeps reduced costs >= 0 and
     * makes them 0 along the path */
    s->u[cur] += dmin;
    for (int64_t r = 0; r < nr; r++)
        if (s->row_seen[r] && r != cur)
            s->u[r] += dmin - s->dist[s->col4row[r]];
    for (int64_t j = 0; j < nc; j++)
        if (s->col_done[j])
            s->v[j] -= dmin - s->dist[j];
    /* flip the alternating path from the sink back to cur */
    for (int64_t j = sink;;) {
        int64_t r = s->path[j], prev = s->col4row[r];
        s->row4col[j] = r;
        s->col4row[r] = j;
        if (r == cur)
            break;
        j = prev;
    }
    return true;
}

qkv_k_lsa_status qkv_k_linear_sum_assignment(int64_t *rows, int64_t *cols, const double *cost,
                                             int64_t n, int64_t m, void *work, int64_t *bad)
{
    for (int64_t e = 0; e < n * m; e++)
        if (isnan(cost[e]) || cost[e] == -INFINITY) {
            if (bad)
                *bad = e;
            return QKV_K_LSA_INVALID;
        }
    bool tall = n > m; /* then the columns of `cost` are the rows solved */
    lsa s = {.nr = tall ? m : n, .nc = tall ? n : m, .cost = cost,
             .rs = tall ? 1 : m, .cs = tall ? m : 1};
    if (s.nr == 0)
        return QKV_K_LSA_OK;
    double *d = work;
    s.u = d;
    s.v = d + s.nr;
    s.dist = s.v + s.nc;
    int64_t *k = (int64_t *)(s.dist + s.nc);
    s.path = k;
    s.col4row = k + s.nc;
    s.row4col = s.col4row + s.nr;
    s.open = s.row4col + s.nc;
    s.row_seen = (uint8_t *)(s.open + s.nc);
    s.col_done = s.row_seen + s.nr;
    for (int64_t i = 0; i < s.nr; i++) {
        s.u[i] = 0;
        s.col4row[i] = -1;
    }
    for (int64_t j = 0; j < s.nc; j++) {
        s.v[j] = 0;
        s.row4col[j] = -1;
    }
    for (int64_t cur = 0; cur < s.nr; cur++)
        if (!augment(&s, cur)) {
            if (bad)
                *bad = -1;
            return QKV_K_LSA_INFEASIBLE;
        }
    if (!tall) {
        for (int64_t i = 0; i < n; i++) {
            rows[i] = i;
            cols[i] = s.col4row[i];
        }
    } else { /* the solved columns are cost's rows: list them in order */
        int64_t p = 0;
        for (int64_t j = 0; j < n; j++)
            if (s.row4col[j] >= 0) {
                rows[p] = j;
                cols[p++] = s.row4col[j];
            }
    }
    return QKV_K_LSA_OK;
}

qkv_status qkv_linear_sum_assignment(int64_t *rows, int64_t *cols, const double *cost,
                                     int64_t n, int64_t m)
{
    if (n < 0 || m < 0 || (n > 0 && m > 0 && (!cost || !rows || !cols)))
        return qkv_set_error(QKV_ERR_ARG,
                             "linear_sum_assignment: bad arguments (n %lld, m %lld, a NULL "
                             "pointer)",
                             (long long)n, (long long)m);
    void *work = qkv__malloc(qkv_k_lsa_workspace(n, m) + 8);
    if (!work)
        return qkv_set_error(QKV_ERR_NOMEM, "linear_sum_assignment: out of memory for (%lld, %lld)",
                             (long long)n, (long long)m);
    int64_t bad = -1;
    qkv_k_lsa_status st = qkv_k_linear_sum_assignment(rows, cols, cost, n, m, work, &bad);
    qkv__free(work);
    if (st == QKV_K_LSA_INVALID)
        return qkv_set_error(QKV_ERR_NAN,
                             "linear_sum_assignment: cost[%lld, %lld] = %g (NaN and -inf are "
                             "invalid entries)",
                             (long long)(bad / m), (long long)(bad % m), cost[bad]);
    if (st == QKV_K_LSA_INFEASIBLE)
        return qkv_set_error(QKV_ERR_ARG,
                             "linear_sum_assignment: the (%lld, %lld) cost matrix is infeasible "
                             "(every complete assignment uses a +inf entry)",
                             (long long)n, (long long)m);
    return QKV_OK;
}
