/*
 * io_internal.h - what the loaders in src/io share: whole-file reading and
 * the in-memory decoders that both the loaders and the fuzz harnesses call
 * (fuzz/fuzz_*.c feed them arbitrary bytes, so every one of them must
 * return an error, never crash, on any input).
 */
#ifndef QKV_IO_INTERNAL_H
#define QKV_IO_INTERNAL_H

#include "../qkv_internal.h"

/* Reads a whole file into a qkv__malloc'd buffer (*len bytes, plus a
 * terminating NUL not counted in *len, so text parsers may rely on it).
 * `what` names the file's role in the error message ("fashion-mnist"). */
qkv_status qkv__read_file(const char *path, const char *what, uint8_t **buf, size_t *len);

/* Validates a safetensors image held in memory (the caller keeps `bytes`
 * alive until qkv_st_close); `name` stands for the path in messages. */
qkv_st_file *qkv__st_open_memory(const void *bytes, size_t len, const char *name);

/* IDX (LeCun's MNIST format), gzip-compressed or raw: u32 big-endian magic
 * 0x0000 0x08 ndim (unsigned bytes only), ndim u32 big-endian sizes, data.
 * Checks that the file has exactly `ndim` dimensions and exactly the bytes
 * they announce. On success *data (qkv__malloc'd) holds prod(dims) bytes.
 * `name` (the file) is used in error messages. */
qkv_status qkv__idx_decode(const uint8_t *buf, size_t len, const char *name, int ndim,
                           int64_t *dims, uint8_t **data);

/* Images above this many pixels are refused (2^26: 8192 x 8192), so that a
 * small file cannot make the decoder allocate gigabytes. */
#define QKV_IMAGE_MAX_PIXELS ((int64_t)1 << 26)

/* A PNG or JPEG held in memory, with a caller's pixel limit (the fuzz
 * harness passes a small one). */
qkv_status qkv__image_decode(qkv_image *img, const void *bytes, size_t len, int64_t max_pixels);

/* Writes 8-bit pixels (h, w, channels), channels 1 (grey) or 3 (RGB), as a
 * PNG through path.tmp and a rename. */
qkv_status qkv__png_write(const char *path, const uint8_t *pixels, int64_t w, int64_t h,
                          int channels);

/* fra-eng text (one "source \t target" pair per line) to the d2l r0.17
 * arrays; text must be NUL-terminated at text[len]. */
qkv_status qkv__nmt_parse(qkv_nmt_data *out, const char *text, size_t len, const char *name,
                          int64_t num_examples, int64_t num_steps);

/* ---- vocabularies (vocab.c) ---- */

/* A token -> count table while counting (tokens are not copied: they must
 * outlive it); the same hash layout as a vocabulary. */
typedef struct {
    const char **tok;
    int64_t *count, n, cap_tok;
    int64_t *slot, cap;
} qkv__counter;
qkv_status qkv__counter_add(qkv__counter *c, const char *token);
void qkv__counter_free(qkv__counter *c);
/* d2l's Vocab over counted tokens: "<unk>", "<pad>", "<bos>", "<eos>", then
 * the tokens counted min_freq times or more, most frequent first (ties in
 * order of first appearance). */
qkv_vocab *qkv__vocab_from_counts(const qkv__counter *c, int64_t min_freq);
/* The tokens one per line (a model file's metadata), and back. */
char *qkv__vocab_lines(const qkv_vocab *v);
qkv_vocab *qkv__vocab_from_lines(const char *lines);

#endif
