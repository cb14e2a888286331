/* knn.c - the weighted k-nearest-neighbour classifier that self-supervised
 * training monitors with (Wu et al. 2018, "Unsupervised feature learning
 * via non-parametric instance discrimination"; MoCo's CIFAR demo): the k
 * bank rows most similar to a query vote for their labels with weight
 * exp(sim / T). Similarities come from GEMM on blocks of queries; the k
 * largest of each row from a min-heap that most values pass by with one
 * comparison. */
#include "../kernels/kernels.h"
#include "../qkv_internal.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 64 /* queries per GEMM: 64 rows of the bank's length */

typedef struct {
    float sim;
    int64_t at;
} knn_item;

/* Sift item i of the min-heap h (n items, smallest similarity on top) down */
static void sift_down(knn_item *h, int64_t n, int64_t i)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, s = i;
        if (l < n && h[l].sim < h[s].sim)
            s = l;
        if (r < n && h[r].sim < h[s].sim)
            s = r;
        if (s == i)
            return;
        knn_item t = h[i];
        h[i] = h[s], h[s] = t;
        i = s;
    }
}

/* The k largest of row (nb) into heap h (k items) */
static void top_k(knn_item *h, const float *row, int64_t nb, int64_t k)
{
    for (int64_t j = 0; j < k; j++)
        h[j] = (knn_item){row[j], j};
    for (int64_t i = k / 2 - 1; i >= 0; i--)
        sift_down(h, k, i);
    for (int64_t j = k; j < nb; j++)
        if (row[j] > h[0].sim) {
            h[0] = (knn_item){row[j], j};
            sift_down(h, k, 0);
        }
}

qkv_status qkv_knn_predict(int64_t *pred, float *scores, const float *queries, int64_t nq,
                           const float *bank, const int64_t *labels, int64_t nb, int64_t dim,
                           int64_t k, float T, int64_t classes)
{
    if (!pred || !queries || !bank || !labels || nq < 0 || nb < 1 || dim < 1 || k < 1 ||
        !(T > 0.0f) || classes < 1)
        return qkv_set_error(QKV_ERR_ARG, "knn_predict: bad arguments (%lld queries, a bank of "
                             "%lld, dim %lld, k %lld, T %g, %lld classes)", (long long)nq,
                             (long long)nb, (long long)dim, (long long)k, (double)T,
                             (long long)classes);
    for (int64_t j = 0; j < nb; j++)
        if (labels[j] < 0 || labels[j] >= classes)
            return qkv_set_error(QKV_ERR_ARG, "knn_predict: bank label %lld of row %lld is not "
                                 "a class 0..%lld", (long long)labels[j], (long long)j,
                                 (long long)classes - 1);
    if (k > nb)
        k = nb;
    int64_t rows = nq < BLOCK ? nq : BLOCK;
    float *sim = qkv__malloc((size_t)(rows * nb + 1) * sizeof(float));
    int nt = qkv_threads();
    knn_item *heaps = qkv__malloc((size_t)(nt * k) * sizeof *heaps);
    double *votes = qkv__malloc((size_t)(nt * classes) * sizeof *votes);
    if (!sim || !heaps || !votes) {
        qkv__free(sim), qkv__free(heaps), qkv__free(votes);
        return qkv_set_error(QKV_ERR_NOMEM, "knn_predict: out of memory for %lld x %lld "
                             "similarities", (long long)rows, (long long)nb);
    }
    for (int64_t q0 = 0; q0 < nq; q0 += BLOCK) {
        int64_t m = nq - q0 < BLOCK ? nq - q0 : BLOCK;
        /* sim (m, nb) = queries (m, dim) bank^T */
        qkv_k_gemm(false, true, m, nb, dim, 1.0f, queries + q0 * dim, dim, bank, dim, 0.0f, sim,
                   nb);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t i = 0; i < m; i++) {
#ifdef _OPENMP
            int t = omp_get_thread_num();
#else
            int t = 0;
#endif
            knn_item *h = heaps + t * k;
            double *v = votes + t * classes;
            top_k(h, sim + i * nb, nb, k);
            for (int64_t c = 0; c < classes; c++)
                v[c] = 0.0;
            for (int64_t j = 0; j < k; j++)
                v[labels[h[j].at]] += exp((double)h[j].sim / T);
            int64_t best = 0;
            for (int64_t c = 1; c < classes; c++)
                if (v[c] > v[best])
                    best = c;
            pred[q0 + i] = best;
            for (int64_t c = 0; scores && c < classes; c++)
                scores[(q0 + i) * classes + c] = (float)v[c];
        }
    }
    qkv__free(sim), qkv__free(heaps), qkv__free(votes);
    return QKV_OK;
}
