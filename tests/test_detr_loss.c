/* test_detr_loss.c - DETR's pieces outside the model: linear sum
 * assignment (against scipy on 195 matrices and against brute force on
 * tiny ones), the Hungarian matcher and set criterion (against a PyTorch
 * re-creation of detr's matcher.py and SetCriterion: the matches, the loss
 * of every layer, the gradients of logits and boxes), and the 2-D sine
 * positional encoding (against PositionEmbeddingSine). */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* ---- linear sum assignment ---- */

static double total_cost(const double *c, int64_t m, const int64_t *rows, const int64_t *cols,
                         int64_t k)
{
    double s = 0;
    for (int64_t p = 0; p < k; p++)
        s += c[rows[p] * m + cols[p]];
    return s;
}

/* k = min(n, m) pairs, rows strictly increasing, columns distinct, in range */
static bool valid_assignment(const int64_t *rows, const int64_t *cols, int64_t n, int64_t m)
{
    int64_t k = n < m ? n : m;
    bool *used = calloc((size_t)(m > 0 ? m : 1), 1);
    bool ok = true;
    for (int64_t p = 0; p < k && ok; p++) {
        ok = rows[p] >= 0 && rows[p] < n && (p == 0 || rows[p] > rows[p - 1]) && cols[p] >= 0 &&
             cols[p] < m && !used[cols[p]];
        if (ok)
            used[cols[p]] = true;
    }
    free(used);
    return ok;
}

TEST(lsa_total_equals_scipy_on_195_matrices)
{
    qkv_st_file *fx = fixture_open("lsa_scipy");
    if (!fx)
        return;
    int64_t ic = qkv_st_find(fx, "costs"), is = qkv_st_find(fx, "shapes"),
            it = qkv_st_find(fx, "status"), ir = qkv_st_find(fx, "rows"),
            io = qkv_st_find(fx, "cols");
    REQUIRE(ic >= 0 && is >= 0 && it >= 0 && ir >= 0 && io >= 0, "fixture tensors");
    int64_t nc = qkv_st_numel(fx, ic), ncase = qkv_st_numel(fx, it), np = qkv_st_numel(fx, ir);
    float *cf = malloc((size_t)nc * sizeof *cf);
    int64_t *shapes = malloc((size_t)(2 * ncase) * sizeof *shapes);
    int64_t *status = malloc((size_t)ncase * sizeof *status);
    int64_t *srows = malloc((size_t)np * sizeof *srows);
    int64_t *scols = malloc((size_t)np * sizeof *scols);
    REQUIRE(qkv_st_read_f32(fx, ic, cf) == QKV_OK && qkv_st_read_i64(fx, is, shapes) == QKV_OK &&
                qkv_st_read_i64(fx, it, status) == QKV_OK &&
                qkv_st_read_i64(fx, ir, srows) == QKV_OK &&
                qkv_st_read_i64(fx, io, scols) == QKV_OK,
            "%s", qkv_error());
    int64_t off = 0, poff = 0, solved = 0, infeasible = 0;
    for (int64_t c = 0; c < ncase; c++) {
        int64_t n = shapes[2 * c], m = shapes[2 * c + 1], k = n < m ? n : m;
        double *cost = malloc((size_t)(n * m + 1) * sizeof *cost);
        for (int64_t e = 0; e < n * m; e++)
            cost[e] = cf[off + e];
        int64_t *rows = malloc((size_t)(k + 1) * sizeof *rows);
        int64_t *cols = malloc((size_t)(k + 1) * sizeof *cols);
        qkv_status st = qkv_linear_sum_assignment(rows, cols, cost, n, m);
        if (status[c] == 0) {
            CHECK(st == QKV_OK, "case %lld (%lld, %lld): %s", (long long)c, (long long)n,
                  (long long)m, qkv_error());
            CHECK(st != QKV_OK || valid_assignment(rows, cols, n, m),
                  "case %lld: not an assignment", (long long)c);
            if (st == QKV_OK) {
                double mine = total_cost(cost, m, rows, cols, k);
                double theirs = total_cost(cost, m, srows + poff, scols + poff, k), big = 0;
                for (int64_t e = 0; e < n * m; e++)
                    if (isfinite(cost[e]))
                        big = fmax(big, fabs(cost[e]));
                /* both optimal: equal up to the rounding of sums of k terms */
                CHECK(fabs(mine - theirs) <= 1e-13 * (double)k * big,
                      "case %lld (%lld, %lld): total %.17g, scipy %.17g", (long long)c,
                      (long long)n, (long long)m, mine, theirs);
                solved++;
            }
            poff += k;
        } else {
            CHECK(st == QKV_ERR_ARG && strstr(qkv_error(), "infeasible"),
                  "case %lld: scipy found it infeasible; qkv: %d %s", (long long)c, (int)st,
                  qkv_error());
            infeasible++;
        }
        off += n * m;
        free(cost);
        free(rows);
        free(cols);
    }
    CHECK(off == nc && poff == np && solved > 150 && infeasible >= 1,
          "read %lld of %lld costs, %lld of %lld pairs; %lld solved, %lld infeasible",
          (long long)off, (long long)nc, (long long)poff, (long long)np, (long long)solved,
          (long long)infeasible);
    free(cf);
    free(shapes);
    free(status);
    free(srows);
    free(scols);
    qkv_st_close(fx);
}

/* the least total over every injection of the shorter side, or INFINITY */
static double brute(const double *c, int64_t n, int64_t m, int64_t i, bool *used, double acc)
{
    int64_t k = n < m ? n : m;
    if (i == k)
        return acc;
    double best = INFINITY;
    for (int64_t j = 0; j < (n <= m ? m : n); j++) {
        if (used[j])
            continue;
        /* rows of the shorter side are i; columns of the longer are j */
        double v = n <= m ? c[i * m + j] : c[j * m + i];
        if (v == INFINITY)
            continue;
        used[j] = true;
        double t = brute(c, n, m, i + 1, used, acc + v);
        used[j] = false;
        best = t < best ? t : best;
    }
    return best;
}

TEST(lsa_is_optimal_by_brute_force_on_tiny_matrices)
{
    qkv_rng r;
    qkv_rng_seed(&r, 61);
    int checked = 0, infeasible = 0;
    for (int trial = 0; trial < 400; trial++) {
        int64_t n = 1 + (int64_t)(qkv_rng_uniform(&r) * 6);
        int64_t m = 1 + (int64_t)(qkv_rng_uniform(&r) * 6);
        int kind = trial % 4; /* floats, integer ties, negatives, +inf holes */
        double c[36];
        for (int64_t e = 0; e < n * m; e++) {
            double u = qkv_rng_uniform(&r);
            c[e] = kind == 0 ? u : kind == 1 ? (double)(int)(u * 3) : kind == 2 ? 100 * u - 50 : u;
            if (kind == 3 && qkv_rng_uniform(&r) < 0.5)
                c[e] = INFINITY;
        }
        bool used[6] = {0};
        double want = brute(c, n, m, 0, used, 0.0);
        int64_t rows[6], cols[6], k = n < m ? n : m;
        qkv_status st = qkv_linear_sum_assignment(rows, cols, c, n, m);
        if (want == INFINITY) {
            CHECK(st == QKV_ERR_ARG, "trial %d (%lld, %lld): infeasible, got %d", trial,
                  (long long)n, (long long)m, (int)st);
            infeasible++;
            continue;
        }
        REQUIRE(st == QKV_OK, "trial %d: %s", trial, qkv_error());
        CHECK(valid_assignment(rows, cols, n, m), "trial %d: not an assignment", trial);
        double got = total_cost(c, m, rows, cols, k);
        CHECK(fabs(got - want) <= 1e-12 * (1 + fabs(want)),
              "trial %d (%lld, %lld): %.17g, best %.17g", trial, (long long)n, (long long)m, got,
              want);
        checked++;
    }
    CHECK(checked > 300 && infeasible > 5, "%d checked, %d infeasible", checked, infeasible);
}

TEST(lsa_errors_and_empty_sides)
{
    int64_t rows[3], cols[3];
    double c[6] = {1, 2, 3, 4, NAN, 6};
    CHECK(qkv_linear_sum_assignment(rows, cols, c, 2, 3) == QKV_ERR_NAN &&
              strstr(qkv_error(), "cost[1, 1]") && strstr(qkv_error(), "nan"),
          "%s", qkv_error());
    c[4] = -INFINITY;
    CHECK(qkv_linear_sum_assignment(rows, cols, c, 3, 2) == QKV_ERR_NAN &&
              strstr(qkv_error(), "cost[2, 0]"),
          "%s", qkv_error());
    CHECK(qkv_linear_sum_assignment(NULL, cols, c, 2, 3) == QKV_ERR_ARG, "NULL rows accepted");
    CHECK(qkv_linear_sum_assignment(rows, cols, NULL, 0, 3) == QKV_OK, "0 rows: %s", qkv_error());
    CHECK(qkv_linear_sum_assignment(rows, cols, c, 2, 0) == QKV_OK, "0 columns: %s", qkv_error());
    /* a tall matrix with a row that can never be used is still feasible */
    double t[6] = {1, INFINITY, INFINITY, INFINITY, 5, 0};
    REQUIRE(qkv_linear_sum_assignment(rows, cols, t, 3, 2) == QKV_OK, "%s", qkv_error());
    CHECK(rows[0] == 0 && cols[0] == 0 && rows[1] == 2 && cols[1] == 1,
          "pairs (%lld %lld) (%lld %lld)", (long long)rows[0], (long long)cols[0],
          (long long)rows[1], (long long)cols[1]);
}

/* ---- DETR's matcher and set criterion ---- */

typedef struct {
    qkv_detr_target t[8];
    int64_t B, labels[64];
    float boxes[256];
} targets_buf;

static bool load_targets(qkv_st_file *fx, targets_buf *tb)
{
    int64_t is = qkv_st_find(fx, "sizes"), il = qkv_st_find(fx, "labels");
    int64_t sizes[8];
    tb->B = qkv_st_numel(fx, is);
    if (tb->B > 8 || qkv_st_numel(fx, il) > 64 || qkv_st_read_i64(fx, is, sizes) != QKV_OK ||
        qkv_st_read_i64(fx, il, tb->labels) != QKV_OK)
        return false;
    int64_t ib = qkv_st_find(fx, "tboxes");
    if (qkv_st_numel(fx, ib) > 0 && qkv_st_read_f32(fx, ib, tb->boxes) != QKV_OK)
        return false;
    int64_t off = 0;
    for (int64_t b = 0; b < tb->B; b++) {
        tb->t[b] = (qkv_detr_target){sizes[b], tb->labels + off, tb->boxes + 4 * off};
        off += sizes[b];
    }
    return true;
}

static double meta_num(qkv_st_file *fx, const char *key)
{
    const char *s = qkv_st_meta(fx, key);
    return s ? strtod(s, NULL) : NAN;
}

static void parity_detr(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    targets_buf tb;
    REQUIRE(load_targets(fx, &tb), "%s: targets: %s", name, qkv_error());
    qkv_tensor *logits = qkv_requires_grad(fixture_get(ctx, fx, "logits"));
    qkv_tensor *boxes = qkv_requires_grad(fixture_get(ctx, fx, "boxes"));
    qkv_tensor *terms = fixture_get(ctx, fx, "terms"), *matches = fixture_get(ctx, fx, "matches");
    REQUIRE(logits && boxes && terms && matches, "%s: fixture", name);
    qkv_detr_loss_opts o = qkv_detr_loss_defaults();
    o.aux_loss = meta_num(fx, "aux") != 0;
    qkv_detr_loss_log log;
    qkv_tensor *loss = qkv_detr_loss(ctx, logits, boxes, tb.t, &o, &log);
    REQUIRE(loss, "%s: %s", name, qkv_error());
    CHECK_CLOSE(loss, fixture_get(ctx, fx, "out"), 0, 5e-7);
    /* every layer's three terms */
    qkv_tensor *got = qkv_from_data(ctx, 2, SHAPE(log.n_layers, 3), log.layers);
    CHECK_CLOSE(got, terms, 0, 1e-6);
    CHECK_SCALAR(log.loss_ce, qkv_get(terms, qkv_numel(terms) - 3), 0, 1e-6);
    CHECK_SCALAR(log.class_error, meta_num(fx, "class_error"), 0, 5e-7);
    CHECK_SCALAR(log.cardinality_error, meta_num(fx, "cardinality_error"), 0, 0);
    CHECK_SCALAR(log.num_boxes, meta_num(fx, "num_boxes"), 0, 0);
    REQUIRE(qkv_backward(ctx, loss) == QKV_OK, "%s: %s", name, qkv_error());
    CHECK_CLOSE_BUF(logits->grad, fixture_get(ctx, fx, "grad_logits"), 1e-8, 1e-6);
    /* with no target nothing reaches the boxes: no gradient, PyTorch's zeros */
    float *gb = boxes->grad ? boxes->grad : calloc((size_t)qkv_numel(boxes), sizeof(float));
    CHECK_CLOSE_BUF(gb, fixture_get(ctx, fx, "grad_boxes"), 1e-7, 1e-6);
    if (gb != boxes->grad)
        free(gb);
    /* the matching of each layer is scipy's */
    int64_t L = logits->ndim == 4 ? logits->shape[0] : 1, B = tb.B;
    int64_t Q = logits->shape[logits->ndim - 2], C = logits->shape[logits->ndim - 1];
    int64_t first = L - log.n_layers, *match = malloc((size_t)(B * Q) * sizeof *match);
    for (int64_t l = first; l < L; l++) {
        qkv_tensor *lg = logits, *bx = boxes;
        if (logits->ndim == 4) {
            lg = qkv_reshape(ctx, qkv_slice(ctx, logits, 0, l, l + 1, 1), 3, SHAPE(B, Q, C));
            bx = qkv_reshape(ctx, qkv_slice(ctx, boxes, 0, l, l + 1, 1), 3, SHAPE(B, Q, 4));
        }
        REQUIRE(qkv_detr_match(ctx, lg, bx, tb.t, &o, match) == QKV_OK, "%s", qkv_error());
        int64_t diff = 0;
        for (int64_t i = 0; i < B * Q; i++)
            diff += match[i] != (int64_t)qkv_get(matches, (l - first) * B * Q + i);
        CHECK(diff == 0, "%s layer %lld: %lld queries matched unlike scipy", name, (long long)l,
              (long long)diff);
    }
    free(match);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_detr_set_criterion)
{
    parity_detr("detr_loss_aux");        /* 3 layers, 4 images of 3, 0, 9 (> Q) and 1 targets */
    parity_detr("detr_loss_noaux");      /* the last of 2 layers only */
    parity_detr("detr_loss_one_layer");  /* (B, Q, K + 1) input */
    parity_detr("detr_loss_no_targets"); /* num_boxes clamped to 1, box losses 0 */
}

TEST(detr_loss_steady_step_makes_no_malloc)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), 5);
    const int64_t labels[5] = {0, 2, 1, 1, 0};
    const float tboxes[20] = {0.3f, 0.3f, 0.2f, 0.2f, 0.6f, 0.5f, 0.3f, 0.4f, 0.5f, 0.5f,
                              0.9f, 0.9f, 0.2f, 0.7f, 0.1f, 0.3f, 0.8f, 0.2f, 0.3f, 0.3f};
    qkv_detr_target t[2] = {{2, labels, tboxes}, {3, labels + 2, tboxes + 8}};
    uint64_t before = 0;
    for (int step = 0; step < 3; step++) {
        if (step == 2)
            before = qkv_malloc_count();
        qkv_tensor *lg = qkv_requires_grad(qkv_randn(ctx, 4, SHAPE(6, 2, 10, 4), 0, 1));
        qkv_tensor *raw = qkv_requires_grad(qkv_randn(ctx, 4, SHAPE(6, 2, 10, 4), 0, 1));
        qkv_tensor *bx = qkv_sigmoid(ctx, raw);
        qkv_detr_loss_log log;
        qkv_tensor *loss = qkv_detr_loss(ctx, lg, bx, t, NULL, &log);
        REQUIRE(loss && qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
        CHECK(log.n_layers == 6 && log.num_boxes == 5.0f, "log: %lld layers, %g boxes",
              (long long)log.n_layers, (double)log.num_boxes);
        qkv_ctx_reset(ctx);
    }
    CHECK(qkv_malloc_count() == before, "a steady step made %llu allocations",
          (unsigned long long)(qkv_malloc_count() - before));
    qkv_ctx_free(ctx);
}

TEST(detr_loss_errors_name_the_image)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *lg = qkv_zeros(ctx, 3, SHAPE(2, 4, 3));
    qkv_tensor *bx = qkv_full(ctx, 3, SHAPE(2, 4, 4), 0.5f);
    int64_t labels[2] = {1, 2};
    float boxes[8] = {0.5f, 0.5f, 0.2f, 0.2f, 0.4f, 0.4f, 0.1f, 0.1f};
    qkv_detr_target t[2] = {{0, NULL, NULL}, {2, labels, boxes}};
    /* label 2 is no-object for K + 1 = 3 logits */
    CHECK(!qkv_detr_loss(ctx, lg, bx, t, NULL, NULL) && strstr(qkv_error(), "image 1") &&
              strstr(qkv_error(), "label 2") && strstr(qkv_error(), "[0, 2)"),
          "%s", qkv_error());
    labels[1] = 0;
    boxes[6] = -0.1f;
    CHECK(!qkv_detr_loss(ctx, lg, bx, t, NULL, NULL) && strstr(qkv_error(), "target box 1"),
          "%s", qkv_error());
    boxes[6] = 0.1f;
    CHECK(qkv_detr_loss(ctx, lg, bx, t, NULL, NULL), "%s", qkv_error());
    /* image 1, query 1 (image 0 has no target, so nothing matches there) */
    bx->data[(1 * 4 + 1) * 4 + 2] = NAN;
    CHECK(!qkv_detr_loss(ctx, lg, bx, t, NULL, NULL) && strstr(qkv_error(), "image 1") &&
              strstr(qkv_error(), "predicted box 1"),
          "%s", qkv_error());
    bx->data[(1 * 4 + 1) * 4 + 2] = 0.5f;
    lg->data[(1 * 4 + 2) * 3 + 1] = NAN;
    CHECK(!qkv_detr_loss(ctx, lg, bx, t, NULL, NULL) && qkv_error_status() == QKV_ERR_NAN &&
              strstr(qkv_error(), "query 2"),
          "%s", qkv_error());
    CHECK(!qkv_detr_loss(ctx, lg, qkv_zeros(ctx, 3, SHAPE(2, 4, 3)), t, NULL, NULL) &&
              strstr(qkv_error(), "(L, B, Q, 4)"),
          "%s", qkv_error());
    qkv_ctx_free(ctx);
}

/* ---- the 2-D sine positional encoding ---- */

static void parity_sine(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *mask = fixture_get(ctx, fx, "mask");
    qkv_tensor *pos = qkv_nn_posenc_sine2d(ctx, mask, (int64_t)meta_num(fx, "num_pos_feats"),
                                           (float)meta_num(fx, "temperature"),
                                           (int)meta_num(fx, "normalize"), 0.0f);
    CHECK_CLOSE(pos, fixture_get(ctx, fx, "out"), 2e-7, 0);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_posenc_sine2d)
{
    parity_sine("posenc_sine2d_detr");   /* F 128, normalised, padded bottom and right */
    parity_sine("posenc_sine2d_plain");  /* F 16, temperature 20, not normalised */
    parity_sine("posenc_sine2d_random"); /* a scattered mask, whole padded columns */
}

TEST(posenc_sine2d_by_hand_and_errors)
{
    /* one image 1 x 2, no padding: x = (1, 2) / (2 + 1e-6) 2 pi, y = 2 pi */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *pos = qkv_nn_posenc_sine2d(ctx, qkv_zeros(ctx, 3, SHAPE(1, 1, 2)), 2, 10000, 1, 0);
    REQUIRE(pos && pos->ndim == 4 && pos->shape[1] == 4 && pos->shape[2] == 1 &&
                pos->shape[3] == 2,
            "%s", qkv_error());
    double tp = 2 * M_PI, x0 = 1 / (2 + 1e-6) * tp;
    /* channels: sin y, cos y, sin x, cos x (dim_t = 1, 1 for F = 2) */
    CHECK_SCALAR(pos->data[0], sin(tp / (1 + 1e-6)), 1e-6, 0);
    CHECK_SCALAR(pos->data[2], cos(tp / (1 + 1e-6)), 1e-7, 0);
    CHECK_SCALAR(pos->data[4], sin(x0), 1e-6, 0);
    CHECK_SCALAR(pos->data[7], cos(2 * x0), 1e-7, 0);
    CHECK(!qkv_nn_posenc_sine2d(ctx, qkv_zeros(ctx, 2, SHAPE(2, 2)), 128, 10000, 1, 0) &&
              strstr(qkv_error(), "(B, H, W)"),
          "%s", qkv_error());
    CHECK(!qkv_nn_posenc_sine2d(ctx, qkv_zeros(ctx, 3, SHAPE(1, 2, 2)), 7, 10000, 1, 0) &&
              strstr(qkv_error(), "even"),
          "%s", qkv_error());
    qkv_ctx_free(ctx);
}
