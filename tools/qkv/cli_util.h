/* cli_util.h - small helpers the commands share. */
#ifndef QKV_CLI_UTIL_H
#define QKV_CLI_UTIL_H

#include "qkv.h"

/* The ranks this command trains with: MPI's when mpirun (or srun) started
 * it and qkv has MPI, else one process. Several ranks on one machine share
 * its cores: without --threads or $QKV_THREADS each takes cores / ranks.
 * NULL with a message printed (`command` names the command). */
qkv_comm *cli_comm_open(const char *command);
/* Closes c after the command; failed: it failed on this rank, so the
 * others are not waited for (mpirun then ends them). */
void cli_comm_close(qkv_comm *c, int failed);
/* "" for one process, else " (rank R of N)": for messages. */
const char *cli_rank_note(const qkv_comm *c);

#endif
