/*
 * cmd_forward.c - `qkv forward`: runs one module on the named tensors of a
 * safetensors file and writes its named outputs to another, for checking a
 * port against PyTorch tensor by tensor. The architectures are listed in
 * forward.h; this file parses the options, opens the files, runs the chosen
 * architecture in inference mode and writes the outputs atomically.
 */
#include "args.h"
#include "commands.h"
#include "forward.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define FORWARD_ENTRY(name, help) {#name, help, forward_##name},
static const forward_arch archs[] = {FORWARD_ARCHS(FORWARD_ENTRY)};
#undef FORWARD_ENTRY
#define N_ARCHS (sizeof archs / sizeof archs[0])

/* ---- messages ---- */

static void vmessage(const char *fmt, va_list ap)
{
    fprintf(stderr, "qkv forward: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int forward_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
    return 1;
}

int forward_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
    fprintf(stderr, "(see `qkv forward --help`)\n");
    return 2;
}

/* ---- inputs and outputs ---- */

const char *forward_names(const qkv_st_file *f, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int64_t i = 0; i < qkv_st_count(f); i++) {
        int k = snprintf(buf + len, n - len, "%s%s", len ? ", " : "", qkv_st_name(f, i));
        if (k < 0 || (size_t)k >= n - len) {
            snprintf(buf + (n > 4 ? n - 4 : 0), n > 4 ? 4 : n, "...");
            break;
        }
        len += (size_t)k;
    }
    return len ? buf : "no tensors";
}

static qkv_tensor *load_input(forward_job *job, const char *name, bool required, bool *failed)
{
    int64_t i = qkv_st_find(job->input, name);
    if (i < 0) {
        if (required) {
            char names[1024];
            forward_fail("%s: no input tensor '%s' (the file has: %s)", job->input_path, name,
                         forward_names(job->input, names, sizeof names));
            *failed = true;
        }
        return NULL;
    }
    qkv_tensor *t = qkv_st_load(job->ctx, job->input, name);
    if (!t) {
        forward_fail("%s: input '%s': %s", job->input_path, name, qkv_error());
        *failed = true;
    }
    return t;
}

qkv_tensor *forward_input(forward_job *job, const char *name, bool *failed)
{
    return load_input(job, name, true, failed);
}

qkv_tensor *forward_optional(forward_job *job, const char *name, bool *failed)
{
    return load_input(job, name, false, failed);
}

bool forward_input_is_float(const forward_job *job, const char *name)
{
    int64_t i = qkv_st_find(job->input, name);
    if (i < 0)
        return false;
    qkv_dtype d = qkv_st_dtype(job->input, i);
    return d == QKV_DT_F32 || d == QKV_DT_F16 || d == QKV_DT_BF16 || d == QKV_DT_F64;
}

/* "(M, B=2, kdim=8)": the axis names, with the size where one is required. */
static void expected_str(char *buf, size_t n, int ndim, const int64_t *want, const char *axes)
{
    size_t len = 0;
    const char *a = axes;
    len += (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < ndim && len < n; d++) {
        const char *comma = a ? strchr(a, ',') : NULL;
        int alen = a ? (int)(comma ? (size_t)(comma - a) : strlen(a)) : 0;
        const char *sep = d ? ", " : "";
        if (want[d] < 0)
            len += (size_t)snprintf(buf + len, n - len, "%s%.*s", sep, alen, a ? a : "");
        else if (alen)
            len += (size_t)snprintf(buf + len, n - len, "%s%.*s=%lld", sep, alen, a,
                                    (long long)want[d]);
        else
            len += (size_t)snprintf(buf + len, n - len, "%s%lld", sep, (long long)want[d]);
        a = comma ? comma + 1 : NULL;
    }
    if (len < n)
        snprintf(buf + len, n - len, ")");
}

bool forward_check_shape(const char *what, const qkv_tensor *t, int ndim, const int64_t *want,
                         const char *axes)
{
    bool ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = want[d] < 0 || t->shape[d] == want[d];
    if (!ok) {
        char got[128], exp[256];
        expected_str(exp, sizeof exp, ndim, want, axes);
        forward_fail("%s has shape %s, expected %s", what, qkv_shape_str(t, got, sizeof got),
                     exp);
    }
    return ok;
}

int forward_load_weights(forward_job *job, qkv_params *ps)
{
    if (qkv_params_alloc(ps) != QKV_OK)
        return forward_fail("%s", qkv_error());
    if (!job->weights)
        return qkv_params_count(ps) ? forward_usage("--arch %s needs --weights", job->arch) : 0;
    if (qkv_params_load_file(ps, job->weights, job->weights_path, 1) != QKV_OK)
        return forward_fail("%s", qkv_error());
    return 0;
}

int forward_output(forward_job *job, const char *name, const qkv_tensor *t)
{
    if (!t || qkv_st_add_tensor(job->output, name, t) != QKV_OK)
        return forward_fail("%s: %s", name, qkv_error());
    return 0;
}

/* ---- the command ---- */

static const forward_arch *find_arch(const char *name)
{
    for (size_t i = 0; i < N_ARCHS; i++)
        if (!strcmp(archs[i].name, name))
            return &archs[i];
    return NULL;
}

static int unknown_arch(const char *name)
{
    char known[256] = "";
    size_t len = 0;
    for (size_t i = 0; i < N_ARCHS; i++)
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", i ? ", " : "",
                                archs[i].name);
    return forward_usage("unknown --arch '%s' (known: %s)", name, known);
}

typedef struct {
    const char *arch, *weights, *input, *output, *activation;
    int64_t heads;
    int batch_first, no_weights, per_head_weights, norm_first;
} options;

/* Opens the files, runs the architecture, writes the outputs. */
static int run(const forward_arch *arch, const options *o)
{
    int rc = 1;
    forward_job job = {
        .weights_path = o->weights,
        .input_path = o->input,
        .arch = arch->name,
        .heads = o->heads,
        .batch_first = o->batch_first,
        .need_weights = !o->no_weights,
        .per_head_weights = o->per_head_weights,
        .activation = o->activation,
        .norm_first = o->norm_first,
    };
    qkv_st_file *weights = NULL, *input = qkv_st_open(o->input);
    if (!input) {
        forward_fail("%s", qkv_error());
        goto done;
    }
    if (o->weights && !(weights = qkv_st_open(o->weights))) {
        forward_fail("%s", qkv_error());
        goto done;
    }
    job.input = input;
    job.weights = weights;
    job.ctx = qkv_ctx_new();
    job.output = qkv_st_writer_new();
    if (!job.ctx || !job.output) {
        forward_fail("out of memory");
        goto done;
    }
    qkv_set_grad_enabled(job.ctx, 0);
    qkv_set_training(job.ctx, 0);
    rc = arch->run(&job);
    if (rc == 0 && qkv_st_write(job.output, o->output) != QKV_OK)
        rc = forward_fail("%s", qkv_error());
done:
    qkv_st_writer_free(job.output);
    qkv_ctx_free(job.ctx);
    qkv_st_close(weights);
    qkv_st_close(input);
    return rc;
}

int cmd_forward(int argc, char **argv)
{
    options o = {0};
    arg_opt opts[] = {
        {.name = "arch", .kind = ARG_STRING, .value = &o.arch, .metavar = "ARCH",
         .help = "the module to run (required; listed above)"},
        {.name = "weights", .kind = ARG_STRING, .value = &o.weights, .metavar = "FILE",
         .help = "its state_dict as safetensors (modules with parameters)"},
        {.name = "input", .kind = ARG_STRING, .value = &o.input, .metavar = "FILE",
         .help = "the named input tensors, safetensors (required)"},
        {.name = "output", .kind = ARG_STRING, .value = &o.output, .metavar = "FILE",
         .help = "where the named outputs go, safetensors (required)"},
        {.name = "heads", .kind = ARG_INT, .value = &o.heads, .min = 1, .max = 4096,
         .help = "attention heads (mha, transformer, vit, detr; else the weights' __metadata__ "
                 "num_heads)"},
        {.name = "batch-first", .kind = ARG_FLAG, .value = &o.batch_first,
         .help = "mha, transformer: inputs and outputs are (B, N, E), not (N, B, E)"},
        {.name = "activation", .kind = ARG_CHOICE, .value = &o.activation,
         .choices = "relu|gelu",
         .help = "transformer: the FFN's activation (else the weights' __metadata__ "
                 "activation, else relu)"},
        {.name = "norm-first", .kind = ARG_FLAG, .value = &o.norm_first,
         .help = "transformer: pre-norm layers, norm_first=True (else the weights' "
                 "__metadata__ norm_first)"},
        {.name = "no-weights", .kind = ARG_FLAG, .value = &o.no_weights,
         .help = "no attention weights output (need_weights=False)"},
        {.name = "per-head-weights", .kind = ARG_FLAG, .value = &o.per_head_weights,
         .help = "mha: weights per head (average_attn_weights=False)"},
    };
    char summary[2048];
    size_t len = (size_t)snprintf(
        summary, sizeof summary,
        "Runs a module on the named tensors of --input in inference mode (no gradients,\n"
        "no dropout) and writes its named outputs to --output (atomically; nothing is\n"
        "written if anything fails). Architectures:");
    for (size_t i = 0; i < N_ARCHS && len < sizeof summary; i++)
        len += (size_t)snprintf(summary + len, sizeof summary - len, "\n  %-11s %s",
                                archs[i].name, archs[i].help);
    args_spec s = {.command = "forward", .summary = summary, .opts = opts,
                   .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (!o.arch)
        return forward_usage("--arch is required");
    const forward_arch *arch = find_arch(o.arch);
    if (!arch)
        return unknown_arch(o.arch);
    if (!o.input || !o.output)
        return forward_usage("--input and --output are required");
    if ((o.activation || o.norm_first) && strcmp(arch->name, "transformer") != 0)
        return forward_usage("--activation and --norm-first are options of --arch transformer");
    return run(arch, &o);
}
