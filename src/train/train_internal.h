/*
 * train_internal.h - what the trainer shares with checkpoint.c: a
 * checkpoint's part of a safetensors file, written into an open writer and
 * read from an open file, so that the trainer can add its own state to the
 * same file.
 */
#ifndef QKV_TRAIN_INTERNAL_H
#define QKV_TRAIN_INTERNAL_H

#include "params.h"

/* Adds the parameters, the optimizer's moments and step count (opt may be
 * NULL) and info to w, as qkv_checkpoint_save writes them. */
qkv_status qkv__checkpoint_add(qkv_st_writer *w, qkv_params *ps, qkv_optim *opt,
                               const qkv_checkpoint_info *info);
/* Restores them from f (`path` names it in messages); opt and info may be
 * NULL. */
qkv_status qkv__checkpoint_read(const qkv_st_file *f, const char *path, qkv_params *ps,
                                qkv_optim *opt, qkv_checkpoint_info *info);

#endif
