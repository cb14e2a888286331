/* test_io_plot.c - PNG pictures (heatmaps, training curves) and the JSON
 * lines metrics writer. The pictures are read back and probed at pixels
 * whose colour the layout fixes; set QKV_KEEP_PLOTS=DIR to keep them in
 * DIR for a look (else they go to a fresh temporary folder and are
 * removed). */
#include "test.h"

#include <sys/stat.h>
#include <unistd.h>

static void plot_path(char *buf, size_t n, const char *name)
{
    static char dir[256];
    const char *keep = getenv("QKV_KEEP_PLOTS");
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s", keep ? keep : "/tmp/qkv_test_plots_XXXXXX");
        if (keep)
            mkdir(dir, 0755);
        else if (!mkdtemp(dir))
            snprintf(dir, sizeof dir, "/tmp");
    }
    /* a path that does not fit fails the test that opens it, loudly */
    if ((size_t)snprintf(buf, n, "%.200s/%.40s", dir, name) >= n)
        buf[0] = '\0';
}

static void done_with(const char *path)
{
    if (!getenv("QKV_KEEP_PLOTS"))
        unlink(path);
}

/* RGB of pixel (x, y) of a decoded 3-channel image, as 0..255 */
static void pixel(const qkv_image *im, int64_t x, int64_t y, int rgb[3])
{
    for (int c = 0; c < 3; c++)
        rgb[c] = (int)lround(im->data[(c * im->h + y) * im->w + x] * 255);
}

TEST(plot_heatmaps_grid)
{
    /* 2 layers x 3 heads of 9 queries x 12 keys; head h attends near the
     * diagonal shifted by h, layer 2 more sharply */
    enum { R = 2, C = 3, Q = 9, K = 12 };
    static float w[R * C * Q * K];
    for (int r = 0; r < R; r++)
        for (int h = 0; h < C; h++)
            for (int q = 0; q < Q; q++) {
                float *row = w + ((r * C + h) * Q + q) * K;
                double z = 0;
                for (int k = 0; k < K; k++) {
                    double d = k - q - h;
                    row[k] = (float)exp(-d * d / (r ? 0.5 : 3.0));
                    z += row[k];
                }
                for (int k = 0; k < K; k++)
                    row[k] = (float)(row[k] / z);
            }
    const char *titles[R * C] = {"Head 1", "Head 2", "Head 3", "Head 1", "Head 2", "Head 3"};
    char path[256];
    plot_path(path, sizeof path, "heatmaps.png");
    qkv_heatmap_opts o = {.titles = titles};
    REQUIRE(qkv_plot_heatmaps(path, w, R, C, Q, K, &o) == QKV_OK, "%s", qkv_error());
    qkv_image im;
    REQUIRE(qkv_image_read(&im, path) == QKV_OK, "%s", qkv_error());
    CHECK(im.c == 3 && im.w > 3 * K * 16 && im.h > 2 * Q * 16, "size %lld x %lld",
          (long long)im.w, (long long)im.h);
    /* the corners are white; somewhere a cell is the darkest red of the
     * scale (the largest weight), and the colour bar holds it too */
    int rgb[3], darkest = 0;
    pixel(&im, 0, 0, rgb);
    CHECK(rgb[0] == 255 && rgb[1] == 255 && rgb[2] == 255, "corner %d %d %d", rgb[0], rgb[1],
          rgb[2]);
    for (int64_t y = 0; y < im.h; y++)
        for (int64_t x = 0; x < im.w; x++) {
            pixel(&im, x, y, rgb);
            darkest += rgb[0] == 103 && rgb[1] == 0 && rgb[2] == 13;
        }
    CHECK(darkest > 16 * 16, "the darkest red covers %d pixels", darkest);
    qkv_image_free(&im);
    done_with(path);

    /* one panel, defaults; bad arguments */
    plot_path(path, sizeof path, "heatmap_one.png");
    CHECK(qkv_plot_heatmaps(path, w, 1, 1, Q, K, NULL) == QKV_OK, "%s", qkv_error());
    done_with(path);
    CHECK(qkv_plot_heatmaps(path, w, 0, 1, Q, K, NULL) == QKV_ERR_ARG, "0 rows");
    CHECK(qkv_plot_heatmaps("/nonexistent/x.png", w, 1, 1, Q, K, NULL) == QKV_ERR_IO,
          "bad dir: %s", qkv_error());
}

TEST(plot_training_curves)
{
    enum { E = 10 };
    float loss[E], train_acc[E], test_acc[E], xs[2 * E], fine[2 * E];
    for (int e = 0; e < E; e++) {
        loss[e] = 2.3f * expf(-0.35f * (float)e) + 0.1f;
        train_acc[e] = 1.0f - 0.9f * expf(-0.4f * (float)e);
        test_acc[e] = train_acc[e] - 0.04f;
    }
    for (int i = 0; i < 2 * E; i++) { /* a metric logged twice per epoch */
        xs[i] = 0.5f * (float)(i + 1);
        fine[i] = 2.4f * expf(-0.17f * (float)i);
    }
    qkv_series s[4] = {
        {.name = "train loss", .x = xs, .y = fine, .n = 2 * E},
        {.name = "train acc", .y = train_acc, .n = E},
        {.name = "test acc", .y = test_acc, .n = E, .points = 1},
        {.name = "loss", .y = loss, .n = E},
    };
    char path[256];
    plot_path(path, sizeof path, "curves.png");
    qkv_plot_opts o = {.ylabel = "value", .title = "LeNet on Fashion-MNIST"};
    REQUIRE(qkv_plot_lines(path, 4, s, &o) == QKV_OK, "%s", qkv_error());
    qkv_image im;
    REQUIRE(qkv_image_read(&im, path) == QKV_OK, "%s", qkv_error());
    /* each series' colour is on the canvas: blue, magenta, green, red */
    static const int cols[4][3] = {{31, 119, 180}, {191, 0, 191}, {0, 128, 0}, {255, 0, 0}};
    for (int k = 0; k < 4; k++) {
        int found = 0, rgb[3];
        for (int64_t y = 0; y < im.h; y++)
            for (int64_t x = 0; x < im.w; x++) {
                pixel(&im, x, y, rgb);
                found += rgb[0] == cols[k][0] && rgb[1] == cols[k][1] && rgb[2] == cols[k][2];
            }
        CHECK(found > 40, "series %d: %d pixels of its colour", k, found);
    }
    qkv_image_free(&im);
    done_with(path);

    /* log scale, a single point, NaN gaps */
    float one = 0.5f, gaps[5] = {1, 0.1f, NAN, 0.01f, 0.001f};
    qkv_series t[2] = {{.name = "one", .y = &one, .n = 1}, {.name = "gaps", .y = gaps, .n = 5}};
    plot_path(path, sizeof path, "curves_log.png");
    CHECK(qkv_plot_lines(path, 2, t, &(qkv_plot_opts){.log_y = 1}) == QKV_OK, "%s",
          qkv_error());
    done_with(path);
    CHECK(qkv_plot_lines(path, 0, t, NULL) == QKV_ERR_ARG, "no series");
    qkv_series bad = {.name = "bad", .n = 3};
    CHECK(qkv_plot_lines(path, 1, &bad, NULL) == QKV_ERR_ARG, "no data");
}

/* A scatter (every series dots, as qkv_plot_embedding's classes) has its
 * legend right of the frame, so that no dot is hidden under it; a plot with
 * lines keeps it inside, at the frame's top right. */
TEST(plot_scatter_legend_outside_the_frame)
{
    enum { N = 400 };
    float x[2][N], y[2][N];
    for (int i = 0; i < N; i++) /* dots over the whole frame, corners included */
        for (int k = 0; k < 2; k++) {
            x[k][i] = (float)(i % 20) + 0.5f * (float)k;
            y[k][i] = (float)(i / 20);
        }
    qkv_series s[2] = {{.name = "class a", .x = x[0], .y = y[0], .n = N, .points = 1},
                       {.name = "class b", .x = x[1], .y = y[1], .n = N, .points = 1}};
    char path[256];
    plot_path(path, sizeof path, "scatter.png");
    REQUIRE(qkv_plot_lines(path, 2, s, NULL) == QKV_OK, "%s", qkv_error());
    qkv_image im;
    REQUIRE(qkv_image_read(&im, path) == QKV_OK, "%s", qkv_error());
    /* the frame ends at x 616 whatever the legend; dots of class b's colour
     * (magenta) right of it are the legend's sample */
    int right = 0, rgb[3];
    for (int64_t yy = 0; yy < im.h; yy++)
        for (int64_t xx = 620; xx < im.w; xx++) {
            pixel(&im, xx, yy, rgb);
            right += rgb[0] == 191 && rgb[1] == 0 && rgb[2] == 191;
        }
    CHECK(im.w > 640 && im.h == 440, "scatter canvas %lld x %lld (wider than 640 x 440)",
          (long long)im.w, (long long)im.h);
    CHECK(right > 10, "the legend's magenta dot right of the frame: %d pixels", right);
    qkv_image_free(&im);
    done_with(path);
    /* one series drawn as a line: the canvas stays 640 wide */
    s[1].points = 0;
    REQUIRE(qkv_plot_lines(path, 2, s, NULL) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_image_read(&im, path) == QKV_OK, "%s", qkv_error());
    CHECK(im.w == 640, "a plot with a line: width %lld, want 640", (long long)im.w);
    qkv_image_free(&im);
    done_with(path);
}

TEST(metrics_json_lines)
{
    char path[] = "/tmp/qkv_test_metrics_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    qkv_metrics *m = qkv_metrics_open(path);
    REQUIRE(m, "%s", qkv_error());
    const char *names[3] = {"loss", "acc \"top-1\"", "lr"};
    double v1[3] = {0.25, 0.5, 1e-3}, v2[3] = {NAN, 0.875, INFINITY};
    CHECK(qkv_metrics_write(m, 1, 3, names, v1) == QKV_OK, "write 1");
    CHECK(qkv_metrics_write(m, 2, 3, names, v2) == QKV_OK, "write 2");
    CHECK(qkv_metrics_write(m, 3, 0, NULL, NULL) == QKV_OK, "write 3");
    CHECK(qkv_metrics_close(m) == QKV_OK, "close");
    FILE *f = fopen(path, "r");
    char buf[512] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *want = "{\"epoch\": 1, \"loss\": 0.25, \"acc \\\"top-1\\\"\": 0.5, "
                       "\"lr\": 0.001}\n"
                       "{\"epoch\": 2, \"loss\": null, \"acc \\\"top-1\\\"\": 0.875, "
                       "\"lr\": null}\n"
                       "{\"epoch\": 3}\n";
    CHECK(!strcmp(buf, want), "got:\n%s", buf);
    CHECK(!qkv_metrics_open("/nonexistent/m.jsonl") && qkv_error_status() == QKV_ERR_IO,
          "bad dir");
    unlink(path);
}
