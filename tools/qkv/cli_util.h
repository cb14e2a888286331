/* cli_util.h - small helpers the commands share. */
#ifndef QKV_CLI_UTIL_H
#define QKV_CLI_UTIL_H

/* mkdir -p: 0, or -1 with errno set. */
int cli_make_dirs(const char *path);
/* Seconds on a monotonic clock, for rates and elapsed times. */
double cli_now(void);

#endif
