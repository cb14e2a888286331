/*
 * conv.h - 2-D convolution as im2col + GEMM, and a direct reference.
 *
 * Legend (outermost first): C channels of one group, (H, W) input height and
 * width, (kh, kw) kernel, (Ho, Wo) output, K = C kh kw the rows of a column
 * buffer. Geometry: output pixel (oh, ow) and tap (i, j) read input pixel
 * (oh sh - ph + i dh, ow sw - pw + j dw); outside the image it reads 0.
 */
#ifndef QKV_KERNELS_CONV_H
#define QKV_KERNELS_CONV_H

#include <stdint.h>

typedef struct {
    int64_t H, W, Ho, Wo;
    int kh, kw, sh, sw, ph, pw, dh, dw;
} qkv_conv_geom;

/* col (C kh kw, Ho Wo) = the input patch under each output pixel;
 * x (C, H, W). Rows of col are ld >= Ho Wo floats apart, so that the columns
 * of several images can sit side by side for one GEMM. */
void qkv_k_im2col(float *col, int64_t ld, const float *x, int64_t C, const qkv_conv_geom *g);
/* Backward of im2col: dx (C, H, W) += every column entry at the pixel it
 * was read from; col as in im2col. */
void qkv_k_col2im(float *dx, const float *col, int64_t ld, int64_t C, const qkv_conv_geom *g);
/* The same over m images side by side: col (C kh kw, m Ho Wo), image n's
 * columns from n Ho Wo, image n at x + n image_stride (dx likewise). One
 * call per chunk of images: each tap's geometry is worked out once. */
void qkv_k_im2col_images(float *col, int64_t ld, const float *x, int64_t image_stride,
                         int64_t m, int64_t C, const qkv_conv_geom *g);
/* One image whose channels lie plane >= H W floats apart (g's H rows of a
 * taller image: a tile of output rows, ops_conv.c): col (C kh kw, Ho Wo). */
void qkv_k_im2col_planes(float *col, int64_t ld, const float *x, int64_t plane, int64_t C,
                         const qkv_conv_geom *g);
void qkv_k_col2im_images(float *dx, int64_t image_stride, const float *col, int64_t ld,
                         int64_t m, int64_t C, const qkv_conv_geom *g);

/* Depthwise (one input channel per group): input channel c feeds outputs
 * c m .. c m + m - 1. out (B, C m, Ho, Wo) = sum over taps of w (C m, 1, kh,
 * kw) times x (B, C, H, W), plus bias (C m) or nothing if NULL. */
void qkv_k_conv2d_depthwise(float *out, const float *x, const float *w, const float *bias,
                            int64_t B, int64_t C, int64_t m, const qkv_conv_geom *g);
/* Its backward: dx (B, C, H, W), dw (C m, 1, kh, kw), dbias (C m) += the
 * gradients from dout (B, C m, Ho, Wo); a NULL output is skipped. */
void qkv_k_conv2d_depthwise_backward(float *dx, float *dw, float *dbias, const float *dout,
                                     const float *x, const float *w, int64_t B, int64_t C,
                                     int64_t m, const qkv_conv_geom *g);

/* The plain definition, double accumulation, for tests:
 * out (B, Cout, Ho, Wo) = sum over taps of w (Cout, Cin/groups, kh, kw) times
 * x (B, Cin, H, W), plus bias (Cout) or nothing if NULL. */
void qkv_k_conv2d_ref(float *out, const float *x, const float *w, const float *bias,
                      int64_t B, int64_t Cin, int64_t Cout, int64_t groups,
                      const qkv_conv_geom *g);

#endif
