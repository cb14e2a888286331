/*
 * cmd_train_transformer.c - `qkv train transformer`: the book's Transformer
 * trained for English-to-French translation (d2l r0.17 "transformer"). The
 * options fill a qkv_seq2seq_recipe; qkv_seq2seq_train (the library's
 * trainer) does the work: it loads fra.txt as load_data_nmt, trains with
 * Adam, the masked softmax cross-entropy and gradient clipping, prints loss
 * and tokens/s, writes metrics.jsonl, a resumable checkpoint and
 * model.safetensors (weights, configuration and both vocabularies: all that
 * `qkv translate` and qkv_model_open need), then translates the book's four
 * sentences with their BLEU.
 */
#include "args.h"
#include "cli_util.h"
#include "commands.h"
#include "qkv.h"

#include <stdio.h>
#include <string.h>

int cmd_train_transformer(int argc, char **argv)
{
    qkv_seq2seq_recipe o = {.data = QKV_FRA_ENG_PATH, .out_dir = "runs/transformer"};
    const char *preset = "book", *split = NULL, *loss = NULL;
    /* the preset sets the defaults; options given on the command line win */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--preset") && i + 1 < argc)
            preset = argv[i + 1];
        else if (!strncmp(argv[i], "--preset=", 9))
            preset = argv[i] + 9;
    }
    if (qkv_seq2seq_recipe_preset(&o, preset) != QKV_OK) {
        fprintf(stderr, "qkv train transformer: %s\n", qkv_error());
        return 2;
    }
    split = o.split_tail ? "tail" : "random";
    loss = o.loss_mean ? "mean" : "sum";
    arg_opt opts[] = {
        {.name = "preset", .kind = ARG_CHOICE, .value = &preset, .choices = "book|v1|large",
         .help = "book: d2l r0.17's run; v1: v1.0.3's config; large: 40k pairs, held-out BLEU"},
        {.name = "data", .kind = ARG_STRING, .value = &o.data, .metavar = "FILE",
         .help = "fra.txt (english TAB french per line)"},
        {.name = "examples", .kind = ARG_INT, .value = &o.examples, .min = 0, .max = 1e7,
         .help = "pairs read (lines 0..N, as d2l; 0: all)"},
        {.name = "held-out", .kind = ARG_INT, .value = &o.held_out, .min = 0, .max = 1e7,
         .help = "pairs kept out of training for loss and corpus BLEU"},
        {.name = "split", .kind = ARG_CHOICE, .value = &split, .choices = "random|tail",
         .help = "held-out pairs: a fixed random choice, or the last ones"},
        {.name = "loss", .kind = ARG_CHOICE, .value = &loss, .choices = "sum|mean",
         .help = "sum: r0.17's masked CE / num_steps summed over the batch; mean: v1.0.3's "
                 "per-token mean"},
        {.name = "num-steps", .kind = ARG_INT, .value = &o.num_steps, .min = 2, .max = 512,
         .help = "tokens per sentence after truncation or padding"},
        {.name = "hidden", .kind = ARG_INT, .value = &o.hidden, .min = 1, .max = 8192,
         .help = "num_hiddens (d_model)"},
        {.name = "blocks", .kind = ARG_INT, .value = &o.blocks, .min = 1, .max = QKV_TF_MAX_LAYERS,
         .help = "encoder and decoder blocks"},
        {.name = "heads", .kind = ARG_INT, .value = &o.heads, .min = 1, .max = 256,
         .help = "attention heads (divide --hidden)"},
        {.name = "ffn", .kind = ARG_INT, .value = &o.ffn, .min = 1, .max = 65536,
         .help = "hidden units of the position-wise FFN"},
        {.name = "dropout", .kind = ARG_FLOAT, .value = &o.dropout, .min = 0, .max = 0.99,
         .help = "dropout (positions, attention weights, AddNorm)"},
        {.name = "norm-first", .kind = ARG_FLAG, .value = &o.norm_first,
         .help = "pre-norm blocks instead of the book's post-norm"},
        {.name = "batch", .kind = ARG_INT, .value = &o.batch_size, .min = 1, .max = 1e6,
         .help = "batch size"},
        {.name = "epochs", .kind = ARG_INT, .value = &o.epochs, .min = 0, .max = 1e6,
         .help = "epochs"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &o.lr, .min = 0, .max = 10,
         .help = "Adam learning rate"},
        {.name = "clip", .kind = ARG_FLOAT, .value = &o.clip, .min = 0, .max = 1e6,
         .help = "gradient norm clipping (0: none)"},
        {.name = "seed", .kind = ARG_U64, .value = &o.seed, .help = "initialisation, dropout, "
                                                                    "shuffling"},
        {.name = "beam", .kind = ARG_INT, .value = &o.beam, .min = 1, .max = 64,
         .help = "beam width of the final translations (1: greedy)"},
        {.name = "save-every", .kind = ARG_INT, .value = &o.save_every, .min = 0, .max = 1e6,
         .help = "epochs between checkpoints (and at the end)"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &o.out_dir, .metavar = "DIR",
         .help = "checkpoint.safetensors, model.safetensors, metrics.jsonl"},
        {.name = "resume", .kind = ARG_FLAG, .value = &o.resume,
         .help = "continue from DIR/checkpoint.safetensors (same options)"},
    };
    args_spec s = {
        .command = "train transformer",
        .summary =
            "Trains the book's Transformer (d2l r0.17) to translate English to French on\n"
            "fra.txt: embeddings, sinusoidal positions, post-norm blocks, masked softmax\n"
            "cross-entropy, Adam, gradient clipping. Prints loss and tokens/s, writes\n"
            "metrics.jsonl, checkpoint.safetensors and model.safetensors (for `qkv\n"
            "translate`), then translates \"go .\", \"i lost .\", \"he's calm .\", \"i'm\n"
            "home .\" with their BLEU (k = 2), and with --held-out the corpus BLEU.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    o.split_tail = !strcmp(split, "tail");
    o.loss_mean = !strcmp(loss, "mean");
    if (!(o.comm = cli_comm_open("train transformer")))
        return 1;
    qkv_status st = qkv_seq2seq_train(&o, NULL);
    if (st != QKV_OK)
        fprintf(stderr, "qkv train transformer%s: %s\n", cli_rank_note(o.comm), qkv_error());
    cli_comm_close(o.comm, st != QKV_OK);
    return st == QKV_OK ? 0 : st == QKV_ERR_INTERRUPTED ? 130 : 1;
}
