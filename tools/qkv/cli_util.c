/* cli_util.c - small helpers the commands share. */
#include "cli_util.h"

#include "args.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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
