/* posenc.c - positional encodings added to x (B, T, C): d2l's sinusoidal
 * table and a learnable table (ViT). */
#include "../qkv_internal.h"

#include <math.h>

#define DEFAULT_MAX_LEN 1000

qkv_status qkv_nn_posenc_sin_init(qkv_nn_posenc *m, int64_t num_hiddens, float dropout,
                                  int64_t max_len)
{
    memset(m, 0, sizeof *m);
    m->num_hiddens = num_hiddens;
    m->max_len = max_len > 0 ? max_len : DEFAULT_MAX_LEN;
    m->dropout = dropout;
    return QKV_OK;
}

qkv_status qkv_nn_posenc_learned_init(qkv_nn_posenc *m, qkv_params *ps, const char *prefix,
                                      int64_t num_hiddens, float dropout, int64_t max_len)
{
    char name[512];
    qkv_nn_posenc_sin_init(m, num_hiddens, dropout, max_len);
    m->pos_embedding = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "pos_embedding"),
                                      3, (int64_t[]){1, m->max_len, num_hiddens}, 0);
    return m->pos_embedding ? QKV_OK : qkv_error_status();
}

void qkv_nn_posenc_reset(qkv_nn_posenc *m, qkv_rng *r)
{
    if (m->pos_embedding)
        qkv_init_normal(r, m->pos_embedding, 0.0f, 0.02f);
}

/* P (1, T, C): every step in float32, as d2l builds it, so that the table
 * matches PyTorch's to float rounding rather than to the double value */
static qkv_tensor *sin_table(qkv_ctx *ctx, int64_t T, int64_t C)
{
    qkv_tensor *P = qkv_new(ctx, 3, (int64_t[]){1, T, C});
    if (!P)
        return NULL;
    for (int64_t j = 0; j < C; j += 2) {
        float den = powf(10000.0f, (float)j / (float)C);
        for (int64_t i = 0; i < T; i++) {
            float x = (float)i / den;
            P->data[i * C + j] = sinf(x);
            if (j + 1 < C)
                P->data[i * C + j + 1] = cosf(x);
        }
    }
    return P;
}

qkv_tensor *qkv_nn_posenc_forward(qkv_ctx *ctx, const qkv_nn_posenc *m, qkv_tensor *x)
{
    QKV_INPUTS("posenc", x);
    if (x->ndim != 3 || x->shape[2] != m->num_hiddens || x->shape[1] > m->max_len) {
        char s[64];
        qkv_set_error(QKV_ERR_SHAPE, "posenc: x %s should be (B, T <= %lld, %lld)",
                      qkv_shape_str(x, s, sizeof s), (long long)m->max_len,
                      (long long)m->num_hiddens);
        return NULL;
    }
    int64_t T = x->shape[1];
    qkv_tensor *P = m->pos_embedding ? qkv_slice(ctx, m->pos_embedding, 1, 0, T, 1)
                                     : sin_table(ctx, T, m->num_hiddens);
    return qkv_dropout(ctx, qkv_add(ctx, x, P), m->dropout);
}
