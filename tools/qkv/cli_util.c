/* cli_util.c - small helpers the commands share. */
#include "cli_util.h"

#include "args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

int cli_make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        char c = *p;
        if (c != '/' && c != '\0')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return -1;
        *p = c;
        if (!c)
            return 0;
    }
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

qkv_comm *cli_comm_open(const char *command)
{
    qkv_comm *c = qkv_comm_open(NULL);
    if (!c) {
        fprintf(stderr, "qkv %s: %s\n", command, qkv_error());
        return NULL;
    }
    int local = qkv_comm_local_size(c);
    const char *env = getenv("QKV_THREADS");
    if (local > 1 && !args_threads_given && !(env && *env)) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        qkv_set_threads(cores > local ? (int)(cores / local) : 1);
    }
    return c;
}

void cli_comm_close(qkv_comm *c, int failed)
{
    if (failed)
        qkv_comm_abandon(c);
    qkv_comm_close(c);
}

const char *cli_rank_note(const qkv_comm *c)
{
    static char note[48];
    if (qkv_comm_size(c) < 2)
        return "";
    snprintf(note, sizeof note, " (rank %d of %d)", qkv_comm_rank(c), qkv_comm_size(c));
    return note;
}
