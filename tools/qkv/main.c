/* main.c - the qkv command line: `qkv <command> [options]`. */
#include "qkv.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    const char *help;
    int (*run)(int argc, char **argv);
} command;

static int cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("qkv %s\n", QKV_VERSION);
    return 0;
}

static const command commands[] = {
    {"version", "print the version", cmd_version},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: qkv <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-20s %s\n", commands[i].name, commands[i].help);
    fprintf(out, "\n`qkv <command> --help` describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "qkv: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
