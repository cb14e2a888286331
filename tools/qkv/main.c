/* main.c - the qkv command line: `qkv [--threads N] <command> [options]`. */
#include "args.h"
#include "commands.h"
#include "qkv.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *name;
    const char *help;
    int (*run)(int argc, char **argv);
} command;

static int cmd_version(int argc, char **argv);

static const command commands[] = {
    {"kernel-regression", "attention pooling: Nadaraya-Watson kernel regression (d2l)",
     cmd_kernel_regression},
    {"train transformer", "train d2l's Transformer to translate English to French",
     cmd_train_transformer},
    {"translate", "translate English to French with a model from `qkv train transformer`",
     cmd_translate},
    {"train vit", "train a Vision Transformer on Fashion-MNIST", cmd_train_vit},
    {"train moco", "self-supervised MoCo (v1, v2, v3) on Fashion-MNIST without labels",
     cmd_train_moco},
    {"probe", "linear probe of a MoCo encoder on Fashion-MNIST's labels", cmd_probe},
    {"finetune", "fine-tune a MoCo encoder on 1% and 10% of the labels, against scratch",
     cmd_finetune},
    {"eval vit", "accuracy and confusion matrix of a ViT on Fashion-MNIST", cmd_eval_vit},
    {"classify", "top classes of images by a ViT, attention rollout", cmd_classify},
    {"data scenes", "make a detection data set (COCO JSON) from Fashion-MNIST items",
     cmd_data_scenes},
    {"train detr", "train DETR on a COCO-format detection set (default: the scenes)",
     cmd_train_detr},
    {"eval detr", "the 12 COCO numbers of a DETR on a data set", cmd_eval_detr},
    {"detect", "boxes, labels and scores of a DETR drawn on images; attention maps",
     cmd_detect},
    {"forward", "run a module on named tensors (safetensors in, safetensors out)", cmd_forward},
    {"coco-eval", "COCO detection mAP of a results file, equal to pycocotools' COCOeval",
     cmd_coco_eval},
    {"comm", "check the ranks mpirun started and time their all-reduce", cmd_comm},
    {"version", "print the version, the GEMM backend and the thread count", cmd_version},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* The commands that take part in data-parallel training when a launcher
 * (mpirun, srun) starts several ranks. Any other command would run as N
 * independent copies writing the same files, so it refuses. */
static const char *const RANKED[] = {"train transformer", "train vit", "train moco",
                                     "train detr", "comm", "version"};

static int refuse_ranks(const char *name)
{
    for (size_t i = 0; i < sizeof RANKED / sizeof RANKED[0]; i++)
        if (!strcmp(RANKED[i], name))
            return 0;
    fprintf(stderr, "qkv %s: started by a launcher as one of several ranks, but this command "
                    "runs as one process only; data-parallel commands:", name);
    for (size_t i = 0; i < sizeof RANKED / sizeof RANKED[0]; i++)
        fprintf(stderr, "%s %s", i ? "," : "", RANKED[i]);
    fprintf(stderr, "\n");
    return 2;
}

static int cmd_version(int argc, char **argv)
{
    args_spec s = {.command = "version",
                   .summary = "Prints the version, the GEMM backend, the thread count and the\n"
                              "communicator backends built in."};
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    printf("qkv %s\nbackend %s\nthreads %d\ncommunicators %s\n", QKV_VERSION, qkv_backend(),
           qkv_threads(), qkv_comm_backends());
    return 0;
}

/* How many words of argv (1 or 2) name `name`, 0 if none: a two-word
 * command ("train vit") is its two words in a row. */
static int command_words(const char *name, int argc, char **argv)
{
    const char *sp = strchr(name, ' ');
    if (!sp)
        return !strcmp(name, argv[0]);
    size_t n = (size_t)(sp - name);
    return argc > 1 && strlen(argv[0]) == n && !strncmp(argv[0], name, n) &&
                   !strcmp(argv[1], sp + 1)
               ? 2
               : 0;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: qkv [--threads N] <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-20s %s\n", commands[i].name, commands[i].help);
    fprintf(out, "\n`qkv <command> --help` describes a command's options.\n"
                 "--threads N (any command; else $QKV_THREADS, else the cores) sets the "
                 "kernels' threads.\n");
}

/* An idle OpenMP worker of libgomp spins only briefly before it sleeps,
 * and waking it takes tens of microseconds: a training step made of many
 * small kernels (the book's Transformer) lost a third of its time to that
 * (BENCHMARKS.md). libgomp reads its spin count from the environment once,
 * when it loads, so qkv sets GOMP_SPINCOUNT to libgomp's own default for
 * a machine that is not oversubscribed, unless the user chose a value or a
 * wait policy, and starts itself again. If that fails it goes on as it is. */
static void tune_openmp(char **argv)
{
    if (getenv("GOMP_SPINCOUNT") || getenv("OMP_WAIT_POLICY"))
        return;
    if (setenv("GOMP_SPINCOUNT", "300000", 1) == 0)
        execv("/proc/self/exe", argv);
}

int main(int argc, char **argv)
{
    tune_openmp(argv);
    int i = 1;
    /* Global options come before the command; commands accept them too. */
    while (i < argc && !strncmp(argv[i], "--threads", 9)) {
        const char *v = argv[i][9] == '=' ? argv[i] + 10 : NULL;
        if (argv[i][9] != '=' && argv[i][9] != '\0')
            break;
        if (!v && i + 1 >= argc) {
            fprintf(stderr, "qkv: --threads needs a value\n");
            return 2;
        }
        if (args_threads("--threads", v ? v : argv[++i]))
            return 2;
        i++;
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[i];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t c = 0; c < N_COMMANDS; c++) {
        int words = command_words(commands[c].name, argc - i, argv + i);
        if (words && qkv_comm_launched() && refuse_ranks(commands[c].name))
            return 2;
        if (words) /* the command's argv[0] is its last word */
            return commands[c].run(argc - i - words + 1, argv + i + words - 1);
    }
    /* the first word of two-word commands alone ("qkv train"): list the rest */
    size_t n = strlen(name);
    int prefixes = 0;
    for (size_t c = 0; c < N_COMMANDS; c++)
        prefixes += !strncmp(commands[c].name, name, n) && commands[c].name[n] == ' ';
    if (prefixes) {
        bool help = i + 1 < argc && (!strcmp(argv[i + 1], "--help") || !strcmp(argv[i + 1], "-h"));
        FILE *out = help ? stdout : stderr;
        if (!help && i + 1 < argc)
            fprintf(out, "qkv %s: unknown model '%s'; one of:\n", name, argv[i + 1]);
        else if (!help)
            fprintf(out, "qkv %s: which model? one of:\n", name);
        for (size_t c = 0; c < N_COMMANDS; c++)
            if (!strncmp(commands[c].name, name, n) && commands[c].name[n] == ' ')
                fprintf(out, "  %-20s %s\n", commands[c].name, commands[c].help);
        return help ? 0 : 2;
    }
    if (name[0] == '-')
        fprintf(stderr, "qkv: unknown option '%s' (options go after the command)\n\n", name);
    else
        fprintf(stderr, "qkv: unknown command '%s'\n\n", name);
    usage(stderr);
    return 2;
}
