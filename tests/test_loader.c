/* test_loader.c - the data loader: every example once per epoch, orders fixed
 * by (seed, epoch), batches prepared ahead, errors crossing from the worker
 * thread, a clean stop mid-epoch, no allocation after creation. Nothing is
 * timed: that the next batch is prepared while the caller holds one is
 * checked by events (the fill counts what it starts and finishes; the
 * caller waits for the fill it expects). */
#include "test.h"

#include <pthread.h>
#include <time.h>

#define MAX_BATCH 16

/* What the test fill writes: the example ids, and one draw of the batch's
 * rng, which must depend on (seed, epoch, batch) only. */
typedef struct {
    int64_t n;
    uint64_t draw;
    int64_t idx[MAX_BATCH];
} tbatch;

typedef struct {
    int sleep_ms; /* per batch, to vary how far the worker runs ahead */
    int64_t bad;  /* an example whose batch fails (-1: none) */
    int silent;   /* fail without setting a message */
    /* events, under mu: fills started and finished, qkv_loader_next calls
     * the caller began (test_next), and a fill that started before the
     * caller had asked for the batch before it */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls, done, asked;
    int early; /* -1, or the first fill that ran more than one batch ahead */
} tfill;

#define TFILL(...)                                                              \
    {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .early = -1, __VA_ARGS__}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Waits until `done` fills have finished; false if that never happens: the
 * wait gives up after 60 s, which only keeps a loader that never prepares
 * the batch from hanging the suite (a correct one takes microseconds). */
static bool wait_fills_done(tfill *f, int done)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    pthread_mutex_lock(&f->mu);
    int rc = 0;
    while (f->done < done && rc == 0)
        rc = pthread_cond_timedwait(&f->cv, &f->mu, &until);
    bool ok = f->done >= done;
    pthread_mutex_unlock(&f->mu);
    return ok;
}

/* qkv_loader_next, counting the calls begun */
static const void *test_next(qkv_loader *l, tfill *f, int64_t *k)
{
    pthread_mutex_lock(&f->mu);
    f->asked++;
    pthread_mutex_unlock(&f->mu);
    return qkv_loader_next(l, k);
}

static qkv_status fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    tfill *f = user;
    tbatch *t = batch;
    pthread_mutex_lock(&f->mu);
    /* fill number `calls` (0-based, in the epoch's order when the caller
     * counts with test_next) may start once the caller asked for the batch
     * before it: at most one batch ahead */
    if (f->calls > f->asked && f->early < 0)
        f->early = f->calls;
    f->calls++;
    pthread_mutex_unlock(&f->mu);
    if (f->sleep_ms)
        sleep_ms(f->sleep_ms);
    qkv_status s = QKV_OK;
    for (int64_t i = 0; i < n && s == QKV_OK; i++) {
        if (idx[i] == f->bad)
            s = f->silent ? QKV_ERR_IO
                          : qkv_set_error(QKV_ERR_FORMAT, "example %lld is corrupt",
                                          (long long)idx[i]);
        t->idx[i] = idx[i];
    }
    if (s == QKV_OK) {
        t->n = n;
        t->draw = qkv_rng_u64(rng);
    }
    pthread_mutex_lock(&f->mu);
    f->done++;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return s;
}

static qkv_loader_config config(tfill *f, int64_t n, int64_t bs, int shuffle, int drop_last,
                                uint64_t seed)
{
    return (qkv_loader_config){.n_examples = n, .batch_size = bs, .shuffle = shuffle,
                               .drop_last = drop_last, .seed = seed,
                               .batch_bytes = sizeof(tbatch), .fill = fill, .user = f};
}

/* Runs one epoch; writes the examples in the order seen into ids (n total)
 * and each batch's draw into draws. Returns the number of batches, -1 on a
 * malformed batch. */
static int64_t run_epoch(qkv_loader *l, int64_t epoch, int64_t *ids, int64_t *n,
                         uint64_t *draws)
{
    *n = 0;
    if (qkv_loader_start_epoch(l, epoch) != QKV_OK)
        return -1;
    int64_t nb = 0, k;
    const tbatch *t;
    while ((t = qkv_loader_next(l, &k))) {
        if (k != t->n || k <= 0 || k > MAX_BATCH)
            return -1;
        memcpy(ids + *n, t->idx, (size_t)k * sizeof *ids);
        *n += k;
        if (draws)
            draws[nb] = t->draw;
        nb++;
    }
    return qkv_error_status() == QKV_OK ? nb : -1;
}

TEST(loader_every_example_once_per_epoch)
{
    /* 10 examples in batches of 3: 3 + 3 + 3 + 1, or 3 + 3 + 3 with drop_last. */
    for (int drop_last = 0; drop_last < 2; drop_last++) {
        for (int shuffle = 0; shuffle < 2; shuffle++) {
            tfill f = TFILL(.bad = -1);
            qkv_loader_config cfg = config(&f, 10, 3, shuffle, drop_last, 7);
            qkv_loader *l = qkv_loader_new(&cfg);
            REQUIRE(l, "%s", qkv_error());
            CHECK(qkv_loader_batches(l) == (drop_last ? 3 : 4), "batches %lld",
                  (long long)qkv_loader_batches(l));
            for (int64_t epoch = 0; epoch < 3; epoch++) {
                int64_t ids[10], n;
                int64_t nb = run_epoch(l, epoch, ids, &n, NULL);
                CHECK(nb == qkv_loader_batches(l), "epoch %lld: %lld batches (%s)",
                      (long long)epoch, (long long)nb, qkv_error());
                CHECK(n == (drop_last ? 9 : 10), "epoch %lld: %lld examples",
                      (long long)epoch, (long long)n);
                int seen[10] = {0};
                for (int64_t i = 0; i < n && i < 10; i++)
                    if (ids[i] >= 0 && ids[i] < 10)
                        seen[ids[i]]++;
                int dup = 0, missing = 0;
                for (int i = 0; i < 10; i++) {
                    dup += seen[i] > 1;
                    missing += seen[i] == 0;
                }
                CHECK(dup == 0 && missing == (drop_last ? 1 : 0),
                      "drop_last %d shuffle %d epoch %lld: %d repeated, %d missing",
                      drop_last, shuffle, (long long)epoch, dup, missing);
                if (!shuffle)
                    for (int64_t i = 0; i < n; i++)
                        CHECK(ids[i] == i, "unshuffled: position %lld holds %lld",
                              (long long)i, (long long)ids[i]);
                /* Past the end it stays at the end, and that is no error. */
                int64_t k = 99;
                CHECK(!qkv_loader_next(l, &k) && k == 0 && qkv_error_status() == QKV_OK,
                      "after the end: n %lld, %s", (long long)k, qkv_error());
            }
            qkv_loader_free(l);
        }
    }
}

TEST(loader_order_depends_on_seed_and_epoch_only)
{
    enum { N = 50, BS = 8, NB = 7 };
    tfill f = TFILL(.bad = -1);
    qkv_loader_config cfg = config(&f, N, BS, 1, 0, 1234);
    qkv_loader *a = qkv_loader_new(&cfg), *b = qkv_loader_new(&cfg);
    cfg.seed = 1235;
    qkv_loader *c = qkv_loader_new(&cfg);
    REQUIRE(a && b && c, "%s", qkv_error());

    /* a runs epochs 0..3 as a training run would; b resumes at epoch 3, and
     * takes its batches slowly, so the worker runs ahead of it differently. */
    int64_t ids[4][N], n;
    uint64_t draws[4][NB];
    for (int e = 0; e < 4; e++)
        CHECK(run_epoch(a, e, ids[e], &n, draws[e]) == NB, "epoch %d: %s", e, qkv_error());
    f.sleep_ms = 1;
    int64_t resumed[N], other_seed[N];
    uint64_t resumed_draws[NB], other_draws[NB];
    CHECK(run_epoch(b, 3, resumed, &n, resumed_draws) == NB, "%s", qkv_error());
    CHECK(memcmp(resumed, ids[3], sizeof resumed) == 0, "resumed epoch 3: another order");
    CHECK(memcmp(resumed_draws, draws[3], sizeof resumed_draws) == 0,
          "resumed epoch 3: other augmentation draws");
    CHECK(run_epoch(c, 3, other_seed, &n, other_draws) == NB, "%s", qkv_error());
    CHECK(memcmp(other_seed, ids[3], sizeof other_seed) != 0, "another seed, same order");

    /* Epochs differ from each other, and batches' rngs from each other. */
    for (int e = 1; e < 4; e++)
        CHECK(memcmp(ids[e], ids[0], sizeof ids[0]) != 0, "epoch %d repeats epoch 0", e);
    for (int i = 1; i < NB; i++)
        CHECK(draws[0][i] != draws[0][0] && draws[1][i] != draws[0][i],
              "batch %d: draws repeat", i);
    /* Restarting an epoch repeats it exactly, also after a partial epoch. */
    int64_t k;
    REQUIRE(qkv_loader_start_epoch(a, 1) == QKV_OK && qkv_loader_next(a, &k), "%s",
            qkv_error());
    int64_t again[N];
    uint64_t again_draws[NB];
    CHECK(run_epoch(a, 1, again, &n, again_draws) == NB, "%s", qkv_error());
    CHECK(memcmp(again, ids[1], sizeof again) == 0 &&
              memcmp(again_draws, draws[1], sizeof again_draws) == 0,
          "epoch 1 restarted mid-way differs");
    qkv_loader_free(a);
    qkv_loader_free(b);
    qkv_loader_free(c);
}

/* The buffer handed out stays intact until the next call, although the
 * worker has meanwhile prepared the next batch (waited for) and would
 * overwrite any slot it was allowed to. */
TEST(loader_batch_stays_valid_until_next_call)
{
    tfill f = TFILL(.bad = -1);
    qkv_loader_config cfg = config(&f, 40, 4, 1, 0, 3);
    qkv_loader *l = qkv_loader_new(&cfg);
    REQUIRE(l, "%s", qkv_error());
    REQUIRE(qkv_loader_start_epoch(l, 0) == QKV_OK, "%s", qkv_error());
    const tbatch *t;
    int64_t k, b = 0;
    while ((t = test_next(l, &f, &k))) {
        tbatch copy = *t;
        if (b + 1 < qkv_loader_batches(l))
            CHECK(wait_fills_done(&f, (int)b + 2), "batch %lld: the next never prepared",
                  (long long)b);
        CHECK(memcmp(&copy, t, sizeof copy) == 0, "batch %lld overwritten while held",
              (long long)b);
        b++;
    }
    qkv_loader_free(l);
}

/* While the caller holds batch b (trains on it), the worker prepares batch
 * b + 1, without the caller asking: the caller waits for that fill to
 * finish before it asks again, which a loader preparing nothing ahead never
 * lets happen. And never more than one batch ahead: no fill starts before
 * the caller has asked for the batch before it. */
TEST(loader_prepares_next_batch_while_caller_trains)
{
    tfill f = TFILL(.bad = -1);
    qkv_loader_config cfg = config(&f, 40, 4, 1, 0, 5);
    qkv_loader *l = qkv_loader_new(&cfg);
    REQUIRE(l, "%s", qkv_error());
    REQUIRE(qkv_loader_start_epoch(l, 0) == QKV_OK, "%s", qkv_error());
    int64_t k, nb = 0;
    while (test_next(l, &f, &k)) {
        if (nb + 1 < 10)
            CHECK(wait_fills_done(&f, (int)nb + 2),
                  "holding batch %lld: batch %lld was not prepared meanwhile", (long long)nb,
                  (long long)nb + 1);
        nb++;
    }
    CHECK(nb == 10, "%lld batches", (long long)nb);
    qkv_loader_free(l);
    CHECK(f.calls == 10, "%d fills: the worker ran past the epoch", f.calls);
    CHECK(f.early < 0, "fill %d started before the caller asked for batch %d", f.early,
          f.early - 1);
}

TEST(loader_fill_error_reaches_caller)
{
    /* Unshuffled, batches of 3: example 7 is in batch 2. */
    for (int silent = 0; silent < 2; silent++) {
        tfill f = TFILL(.bad = 7, .silent = silent);
        qkv_loader_config cfg = config(&f, 10, 3, 0, 0, 0);
        qkv_loader *l = qkv_loader_new(&cfg);
        REQUIRE(l, "%s", qkv_error());
        REQUIRE(qkv_loader_start_epoch(l, 4) == QKV_OK, "%s", qkv_error());
        int64_t k;
        CHECK(qkv_loader_next(l, &k) && k == 3, "batch 0: %s", qkv_error());
        CHECK(qkv_loader_next(l, &k) && k == 3, "batch 1: %s", qkv_error());
        for (int again = 0; again < 2; again++) {
            CHECK(!qkv_loader_next(l, &k) && k == 0, "batch 2 should fail");
            qkv_status want = silent ? QKV_ERR_IO : QKV_ERR_FORMAT;
            const char *want_msg = silent ? "fill callback failed" : "example 7 is corrupt";
            CHECK(qkv_error_status() == want, "status %s", qkv_status_name(qkv_error_status()));
            CHECK(strstr(qkv_error(), want_msg) && strstr(qkv_error(), "epoch 4, batch 2"),
                  "message: %s", qkv_error());
        }
        /* A new epoch starts afresh: without the bad example it runs through. */
        f.bad = -1;
        int64_t ids[10], n;
        CHECK(run_epoch(l, 5, ids, &n, NULL) == 4, "after a failure: %s", qkv_error());
        qkv_loader_free(l);
    }
}

/* Under `make test SAN=1`, leaks and races on the freed loader show here. */
TEST(loader_free_mid_epoch)
{
    for (int stop = 0; stop < 4; stop++) {
        tfill f = TFILL(.sleep_ms = 5, .bad = -1);
        qkv_loader_config cfg = config(&f, 30, 3, 1, 0, 9);
        qkv_loader *l = qkv_loader_new(&cfg);
        REQUIRE(l, "%s", qkv_error());
        /* stop 0: before any epoch; 1: while batch 0 is being filled;
         * 2: holding batch 0 while batch 1 is filled; 3: both ready, idle. */
        if (stop >= 1)
            REQUIRE(qkv_loader_start_epoch(l, 0) == QKV_OK, "%s", qkv_error());
        int64_t k;
        if (stop >= 2)
            CHECK(qkv_loader_next(l, &k) && k == 3, "%s", qkv_error());
        if (stop == 3)
            CHECK(wait_fills_done(&f, 2), "batch 1 never prepared");
        qkv_loader_free(l);
        CHECK(f.calls <= 2, "stop %d: %d fills, more than one batch ahead", stop, f.calls);
    }
}

TEST(loader_allocates_nothing_after_creation)
{
    tfill f = TFILL(.bad = -1);
    qkv_loader_config cfg = config(&f, 100, 16, 1, 0, 11);
    qkv_loader *l = qkv_loader_new(&cfg);
    REQUIRE(l, "%s", qkv_error());
    uint64_t before = qkv_malloc_count();
    for (int64_t epoch = 0; epoch < 3; epoch++) {
        int64_t ids[100], n;
        CHECK(run_epoch(l, epoch, ids, &n, NULL) == 7 && n == 100, "%s", qkv_error());
    }
    CHECK(qkv_malloc_count() == before, "%llu allocations during 3 epochs",
          (unsigned long long)(qkv_malloc_count() - before));
    qkv_loader_free(l);
}

TEST(loader_rejects_bad_use)
{
    tfill f = TFILL(.bad = -1);
    qkv_loader_config cfg = config(&f, 10, 3, 1, 0, 1);
    CHECK(!qkv_loader_new(NULL) && qkv_error_status() == QKV_ERR_ARG, "NULL config");
    qkv_loader_config bad = cfg;
    bad.fill = NULL;
    CHECK(!qkv_loader_new(&bad) && strstr(qkv_error(), "fill"), "no fill: %s", qkv_error());
    bad = cfg;
    bad.batch_size = 0;
    CHECK(!qkv_loader_new(&bad) && qkv_error_status() == QKV_ERR_ARG, "batch_size 0");
    bad = cfg;
    bad.n_examples = -5;
    CHECK(!qkv_loader_new(&bad) && qkv_error_status() == QKV_ERR_ARG, "n_examples < 0");
    bad = cfg;
    bad.batch_bytes = 0;
    CHECK(!qkv_loader_new(&bad) && qkv_error_status() == QKV_ERR_ARG, "batch_bytes 0");

    qkv_loader *l = qkv_loader_new(&cfg);
    REQUIRE(l, "%s", qkv_error());
    int64_t k = 5;
    CHECK(!qkv_loader_next(l, &k) && k == 0 && qkv_error_status() == QKV_ERR_STATE,
          "next before an epoch: %s", qkv_error());
    CHECK(qkv_loader_start_epoch(l, -1) == QKV_ERR_ARG, "negative epoch");
    CHECK(qkv_loader_start_epoch(NULL, 0) == QKV_ERR_ARG, "NULL loader");
    CHECK(!qkv_loader_next(NULL, &k) && qkv_error_status() == QKV_ERR_ARG, "next(NULL)");
    CHECK(f.calls == 0, "%d fills before any epoch", f.calls);
    qkv_loader_free(l);
    qkv_loader_free(NULL);
}
