/* idx.c - Fashion-MNIST (and MNIST) from IDX files, gzip-compressed or raw.
 *
 * IDX: a big-endian u32 magic 0x00 0x00 <type> <ndim>, then ndim big-endian
 * u32 sizes, then the data row-major. Fashion-MNIST uses type 0x08 (u8):
 * images with ndim 3 (n, rows, cols), labels with ndim 1 (n). The whole file
 * is read, then inflated in one call into a buffer of exactly the size the
 * header announces, so a short or long stream is caught, not guessed at. */
#include "io_internal.h"

#include <stdio.h>
#include <zlib.h>

#define IDX_U8 0x08
/* deflate expands at most ~1032:1, so a gzip stream of n bytes cannot hold
 * more than this many; a header announcing more is a truncated file, and we
 * say so before allocating what it claims */
#define DEFLATE_MAX_RATIO 1032

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool is_gzip(const uint8_t *buf, size_t len)
{
    return len >= 2 && buf[0] == 0x1f && buf[1] == 0x8b;
}

/* Inflates a gzip stream into out[0..cap); *got receives the bytes produced.
 * Returns Z_STREAM_END when the stream ended within cap, Z_BUF_ERROR when it
 * holds more than cap bytes or is cut short, another zlib code if corrupt. */
static int gunzip(const uint8_t *buf, size_t len, uint8_t *out, size_t cap, size_t *got)
{
    z_stream z = {0};
    if (inflateInit2(&z, 15 + 16) != Z_OK) /* 15 + 16: a gzip wrapper */
        return Z_MEM_ERROR;
    size_t in_pos = 0, out_pos = 0;
    const size_t slice = (size_t)1 << 30; /* avail_in/out are 32-bit */
    int rc = Z_OK;
    while (rc == Z_OK) {
        if (z.avail_in == 0 && in_pos < len) {
            z.next_in = (Bytef *)(buf + in_pos);
            z.avail_in = (uInt)(len - in_pos < slice ? len - in_pos : slice);
            in_pos += z.avail_in;
        }
        if (z.avail_out == 0 && out_pos < cap) {
            z.next_out = out + out_pos;
            z.avail_out = (uInt)(cap - out_pos < slice ? cap - out_pos : slice);
            out_pos += z.avail_out;
        }
        rc = inflate(&z, Z_NO_FLUSH); /* Z_BUF_ERROR once no progress is possible */
    }
    *got = (size_t)z.total_out;
    inflateEnd(&z);
    return rc;
}

qkv_status qkv__idx_decode(const uint8_t *buf, size_t len, const char *name, int ndim,
                           int64_t *dims, uint8_t **data)
{
    *data = NULL;
    uint8_t head[4 + 4 * 4];
    if (ndim < 1 || ndim > 4)
        return qkv_set_error(QKV_ERR_ARG, "%s: IDX with %d dimensions asked for", name, ndim);
    size_t head_len = 4 + 4 * (size_t)ndim, got = 0;
    bool gz = is_gzip(buf, len);
    const char *cut = "file ends";
    if (gz) {
        /* the header first, to learn how much to allocate */
        int rc = gunzip(buf, len, head, head_len, &got);
        if (rc != Z_BUF_ERROR && rc != Z_STREAM_END)
            cut = "gzip stream is corrupt";
        else
            cut = "gzip stream ends";
    } else {
        got = len < head_len ? len : head_len;
        memcpy(head, buf, got);
    }
    /* the magic first: a wrong file is more likely than a cut one */
    uint32_t want_magic = (uint32_t)IDX_U8 << 8 | (uint32_t)ndim;
    if (got >= 4 && be32(head) != want_magic)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: wrong magic number 0x%08x (an IDX file of "
                             "u8 with %d dimensions has 0x%08x)", name, be32(head), ndim,
                             want_magic);
    if (got < head_len)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: truncated: %s after %zu bytes of the "
                             "%zu-byte IDX header", name, cut, got, head_len);
    uint64_t total = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = be32(head + 4 + 4 * i);
        if (dims[i] && total > ((uint64_t)1 << 40) / (uint64_t)dims[i])
            return qkv_set_error(QKV_ERR_FORMAT, "%s: sizes announce over 2^40 bytes", name);
        total *= (uint64_t)dims[i];
    }
    uint64_t limit = gz ? (uint64_t)len * DEFLATE_MAX_RATIO : (uint64_t)(len - head_len);
    if (total > limit)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: truncated: the header announces %llu bytes "
                             "of data, the file cannot hold more than %llu", name,
                             (unsigned long long)total, (unsigned long long)limit);
    if (!gz && total != len - head_len)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: %llu bytes of data, the header announces "
                             "%llu", name, (unsigned long long)(len - head_len),
                             (unsigned long long)total);
    uint8_t *out = qkv__malloc((size_t)(head_len + total + 1));
    if (!out)
        return QKV_ERR_NOMEM;
    if (gz) {
        /* one spare byte: a stream that fills it is longer than announced */
        int rc = gunzip(buf, len, out, (size_t)(head_len + total + 1), &got);
        if (rc != Z_STREAM_END || got != head_len + total) {
            qkv__free(out);
            if (rc == Z_STREAM_END || rc == Z_BUF_ERROR)
                return qkv_set_error(QKV_ERR_FORMAT, "%s: %s: %llu bytes of data, the header "
                                     "announces %llu", name, got < head_len + total ?
                                     "truncated" : "too long",
                                     (unsigned long long)(got > head_len ? got - head_len : 0),
                                     (unsigned long long)total);
            return qkv_set_error(QKV_ERR_FORMAT, "%s: gzip stream is corrupt (zlib error %d "
                                 "after %zu bytes)", name, rc, got);
        }
        memmove(out, out + head_len, (size_t)total);
    } else
        memcpy(out, buf + head_len, (size_t)total);
    *data = out;
    return QKV_OK;
}

/* Reads dir/base.gz, else dir/base (some copies are stored inflated). */
static qkv_status idx_load(const char *dir, const char *base, int ndim, int64_t *dims,
                           uint8_t **data)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.gz", dir, base);
    FILE *probe = fopen(path, "rb");
    if (probe)
        fclose(probe);
    else
        snprintf(path, sizeof path, "%s/%s", dir, base);
    uint8_t *buf;
    size_t len;
    qkv_status st = qkv__read_file(path, "fashion-mnist", &buf, &len);
    if (st) {
        if (!probe)
            qkv_set_error(st, "fashion-mnist: %s/%s(.gz) not found: %s (Debian: apt install "
                          "dataset-fashion-mnist, or pass the folder)", dir, base, qkv_error());
        return st;
    }
    st = qkv__idx_decode(buf, len, path, ndim, dims, data);
    qkv__free(buf);
    return st;
}

qkv_status qkv_mnist_load(qkv_mnist *out, const char *dir, int train)
{
    if (!out)
        return qkv_set_error(QKV_ERR_ARG, "qkv_mnist_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!dir)
        dir = QKV_MNIST_DIR;
    const char *split = train ? "train" : "t10k";
    char base[64];
    int64_t idims[3], ldims[1];
    snprintf(base, sizeof base, "%s-images-idx3-ubyte", split);
    qkv_status st = idx_load(dir, base, 3, idims, &out->images);
    if (st)
        return st;
    snprintf(base, sizeof base, "%s-labels-idx1-ubyte", split);
    st = idx_load(dir, base, 1, ldims, &out->labels);
    if (st) {
        qkv_mnist_free(out);
        return st;
    }
    if (ldims[0] != idims[0]) {
        qkv_mnist_free(out);
        return qkv_set_error(QKV_ERR_FORMAT, "fashion-mnist: %s/%s-*: %lld images but %lld "
                             "labels", dir, split, (long long)idims[0], (long long)ldims[0]);
    }
    for (int64_t i = 0; i < ldims[0]; i++)
        if (out->labels[i] > 9) {
            int bad = out->labels[i];
            qkv_mnist_free(out);
            return qkv_set_error(QKV_ERR_FORMAT, "fashion-mnist: %s/%s: label %lld is %d, "
                                 "not 0..9", dir, base, (long long)i, bad);
        }
    out->n = idims[0];
    out->rows = idims[1];
    out->cols = idims[2];
    return QKV_OK;
}

void qkv_mnist_free(qkv_mnist *m)
{
    if (!m)
        return;
    qkv__free(m->images);
    qkv__free(m->labels);
    memset(m, 0, sizeof *m);
}

qkv_status qkv_mnist_image(float *dst, const qkv_mnist *d, int64_t i, int64_t size, qkv_rng *rng,
                           const qkv_augment *aug)
{
    if (!dst || !d || !d->images || i < 0 || i >= d->n || size < 1 ||
        (aug && (aug->crop > 0 || aug->flip) && !rng))
        return qkv_set_error(QKV_ERR_ARG, "mnist_image: bad arguments (image %lld of %lld, "
                             "size %lld%s)", (long long)i, d ? (long long)d->n : 0LL,
                             (long long)size, aug && !rng ? ", augmentation without an rng" : "");
    int64_t R = d->rows, C = d->cols;
    const uint8_t *src = d->images + i * R * C;
    int64_t dy = 0, dx = 0;
    int flip = 0;
    if (aug && (aug->crop > 0 || aug->flip)) { /* three draws whichever is on */
        dy = (int64_t)qkv_rng_below(rng, (uint64_t)(2 * aug->crop + 1)) - aug->crop;
        dx = (int64_t)qkv_rng_below(rng, (uint64_t)(2 * aug->crop + 1)) - aug->crop;
        flip = qkv_rng_below(rng, 2) == 1 && aug->flip;
    }
    qkv_image img = {.c = 1, .h = R, .w = C, .data = size == R && size == C ? dst : NULL};
    if (!img.data && !(img.data = qkv__malloc((size_t)(R * C) * sizeof(float))))
        return QKV_ERR_NOMEM;
    for (int64_t y = 0; y < R; y++)
        for (int64_t x = 0; x < C; x++) {
            int64_t sy = y + dy, sx = (flip ? C - 1 - x : x) + dx;
            img.data[y * C + x] =
                sy < 0 || sy >= R || sx < 0 || sx >= C ? 0.0f : src[sy * C + sx] / 255.0f;
        }
    if (img.data == dst)
        return QKV_OK;
    qkv_image big;
    qkv_status s = qkv_image_resize(&big, &img, size, size);
    qkv__free(img.data);
    if (s != QKV_OK)
        return s;
    memcpy(dst, big.data, (size_t)(size * size) * sizeof(float));
    qkv_image_free(&big);
    return QKV_OK;
}
