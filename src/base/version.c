/* version.c - what this build of qkv is made of, for `qkv version`. */
#include "../qkv_internal.h"
#include "../kernels/kernels.h"

const char *qkv_backend(void) { return qkv_k_gemm_backend(); }
