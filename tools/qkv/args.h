/* args.h - the option parser every `qkv` command shares.
 *
 * A command lists its options in a table; each entry points at the variable
 * it sets, whose initial value is the default that --help prints:
 *
 *     int64_t epochs = 5;
 *     arg_opt opts[] = {
 *         {.name = "epochs", .kind = ARG_INT, .value = &epochs, .min = 0, .max = 1e6,
 *          .help = "training epochs"},
 *     };
 *
 * Accepted forms: --name value, --name=value, and --flag for ARG_FLAG. Every
 * command also takes --threads N (else $QKV_THREADS) and --help. An unknown
 * option or a bad value prints a message naming it, and the command exits
 * with status 2.
 */
#ifndef QKV_ARGS_H
#define QKV_ARGS_H

#include <stdint.h>
#include <stdio.h>

typedef enum {
    ARG_INT,    /* int64_t, within [min, max]                        */
    ARG_U64,    /* uint64_t (seeds), no range                         */
    ARG_FLOAT,  /* double, finite, within [min, max]                 */
    ARG_STRING, /* const char * (points into argv)                   */
    ARG_CHOICE, /* const char *, one of the '|'-separated `choices`  */
    ARG_FLAG,   /* int: 1 when given                                 */
} arg_kind;

typedef struct {
    const char *name; /* without the leading "--" */
    arg_kind kind;
    void *value;
    const char *help;
    double min, max;     /* ARG_INT, ARG_FLOAT; min == max means unbounded */
    const char *choices; /* ARG_CHOICE: "gaussian|boxcar|constant" */
    const char *metavar; /* the value's name in --help; NULL: N, X, TEXT, NAME */
} arg_opt;

typedef struct {
    const char *command;    /* "kernel-regression" */
    const char *summary;    /* what the command does, shown by --help */
    const char *positional; /* e.g. "SENTENCE", or NULL if none are taken */
    int max_positional;
    arg_opt *opts;
    int n_opts;
    /* filled by args_parse */
    char **pos;
    int n_pos;
} args_spec;

/* What args_parse returns when the command should go on. */
#define ARGS_CONTINUE (-1)

/* Parses argv[1..argc) (argv[0] is the command's name). Returns
 * ARGS_CONTINUE, or the exit status the command should return at once: 0
 * after printing --help to stdout, 2 after a usage error on stderr. s->pos
 * receives the positional arguments (pointers into argv, which it reuses). */
int args_parse(args_spec *s, int argc, char **argv);

/* Prints the command's usage and every option with its default to out. */
void args_help(const args_spec *s, FILE *out);

/* Applies a thread count given as text ("--threads" or $QKV_THREADS);
 * returns 0, or 2 with a message naming `what`. */
int args_threads(const char *what, const char *text);
/* Set once --threads was given. */
extern int args_threads_given;

#endif
