/* example_translate.c - reloads a translation model that `qkv train
 * transformer` made and translates sentences with it (built and run by
 * `make test`):
 *
 *     qkv train transformer --out-dir runs/transformer
 *     cc example_translate.c $(pkg-config --cflags --libs qkv) -o translate
 *     ./translate runs/transformer "I'm home."
 */
#include <qkv.h>

int main(int argc, char **argv)
{
    const char *model = argc > 1 ? argv[1] : "runs/transformer";
    qkv_model *m = qkv_model_open(model, NULL); /* weights, config, vocabularies */
    qkv_ctx *ctx = qkv_ctx_new();
    int status = m && ctx ? 0 : 1;
    for (int i = 2; i < argc && status == 0; i++) {
        char french[512];
        if (qkv_model_translate(ctx, m, argv[i], NULL, french, sizeof french) < 0)
            status = 1;
        else
            printf("%s => %s\n", argv[i], french);
    }
    if (status)
        fprintf(stderr, "%s\n", qkv_error());
    qkv_ctx_free(ctx);
    qkv_model_free(m);
    return status;
}
