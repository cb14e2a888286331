/* error.c - errors as values: a per-thread status and message. */
#include "../qkv_internal.h"

#include <stdio.h>

static _Thread_local char err_msg[1024];
static _Thread_local qkv_status err_status = QKV_OK;

const char *qkv_error(void) { return err_msg; }

qkv_status qkv_error_status(void) { return err_status; }

qkv_status qkv_set_error(qkv_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_status = status;
    return status;
}

void qkv_clear_error(void)
{
    err_msg[0] = '\0';
    err_status = QKV_OK;
}

const char *qkv_status_name(qkv_status s)
{
    switch (s) {
    case QKV_OK: return "ok";
    case QKV_ERR_ARG: return "invalid argument";
    case QKV_ERR_SHAPE: return "shape mismatch";
    case QKV_ERR_NOMEM: return "out of memory";
    case QKV_ERR_IO: return "i/o error";
    case QKV_ERR_FORMAT: return "bad format";
    case QKV_ERR_NAN: return "nan or inf";
    case QKV_ERR_STATE: return "wrong state";
    case QKV_ERR_INTERRUPTED: return "interrupted";
    case QKV_ERR_COMM: return "communication failed";
    }
    return "unknown";
}
