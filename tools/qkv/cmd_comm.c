/*
 * cmd_comm.c - `qkv comm`: the ranks mpirun started, their collectives
 * checked, and all-reduce timed by size (the latency and bandwidth behind
 * docs/distributed.md's cost model). Run it as `mpirun -np N qkv comm`
 * before a long training run over several machines.
 */
#include "args.h"
#include "cli_util.h"
#include "commands.h"
#include "qkv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int run(qkv_comm *c, int64_t max_kb, int64_t iters)
{
    int p = qkv_comm_size(c), lead = qkv_comm_rank(c) == 0;
    if (lead)
        printf("backend %s (built: %s), %d rank%s, %d on this machine, %d threads each\n",
               qkv_comm_backend(c), qkv_comm_backends(), p, p == 1 ? "" : "s",
               qkv_comm_local_size(c), qkv_threads());
    if (qkv_comm_check(c) != QKV_OK) {
        fprintf(stderr, "qkv comm%s: %s\n", cli_rank_note(c), qkv_error());
        return 1;
    }
    if (lead)
        printf("collectives agree: all-reduce (F32, F64, I64, non-blocking), broadcast, "
               "all-gather, barrier\n");
    if (max_kb <= 0 || p == 1) /* one rank has nothing to time */
        return 0;
    if (lead)
        printf("\n%10s %12s %12s %12s\n", "bytes", "time (us)", "algbw (GB/s)", "busbw (GB/s)");
    for (int64_t kb = 1; kb <= max_kb; kb *= 8) {
        int64_t n = kb * 1024 / 4;
        double s = qkv_comm_time_allreduce(c, n, (int)iters);
        if (isnan(s)) {
            fprintf(stderr, "qkv comm%s: %s\n", cli_rank_note(c), qkv_error());
            return 1;
        }
        /* busbw as nccl-tests counts it: the ring's 2 (p - 1) / p of the
         * bytes through each link */
        double alg = (double)n * 4 / s / 1e9;
        if (lead)
            printf("%10lld %12.1f %12.3f %12.3f\n", (long long)(n * 4), s * 1e6, alg,
                   p > 1 ? alg * 2 * (p - 1) / p : 0.0);
    }
    return 0;
}

int cmd_comm(int argc, char **argv)
{
    int64_t max_kb = 16384, iters = 20;
    arg_opt opts[] = {
        {.name = "max-kb", .kind = ARG_INT, .value = &max_kb, .min = 0, .max = 1 << 22,
         .help = "time all-reduces of 1 KiB, 8 KiB, .. up to this size (0: none)"},
        {.name = "iters", .kind = ARG_INT, .value = &iters, .min = 1, .max = 100000,
         .help = "rounds per size (the median is printed)"},
    };
    args_spec s = {
        .command = "comm",
        .summary = "Checks the communicator: prints the backend and the ranks, checks every\n"
                   "collective (all-reduce, broadcast, all-gather, barrier) against known\n"
                   "answers, and times all-reduce by size. One process without a launcher;\n"
                   "`mpirun -np N qkv comm` checks N ranks (docs/distributed.md).",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    qkv_comm *c = cli_comm_open("comm");
    if (!c)
        return 1;
    rc = run(c, max_kb, iters);
    cli_comm_close(c, rc != 0);
    return rc;
}
