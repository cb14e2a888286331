/* test_bleu.c - d2l's sentence BLEU (the book's 0.512) and corpus BLEU
 * against numbers sacrebleu 2.x printed for the same sentences
 * (corpus_bleu(sys, [refs], tokenize='none')). */
#include "test.h"

TEST(bleu_d2l_book_value)
{
    /* d2l: bleu("je suis certain .", "je suis chez moi .", k=2) = 0.512:
     * exp(1 - 5/4) * (3/4)^(1/2) * (1/3)^(1/4) */
    double want = exp(-0.25) * sqrt(0.75) * pow(1.0 / 3.0, 0.25);
    double got = qkv_bleu("je suis certain .", "je suis chez moi .", 2);
    CHECK_SCALAR(got, want, 0, 1e-15);
    CHECK_SCALAR(got, 0.512, 5e-4, 0); /* the book prints 3 digits */
}

TEST(bleu_d2l_edges)
{
    CHECK_SCALAR(qkv_bleu("va !", "va !", 2), 1.0, 0, 1e-15);
    /* clipped: "le" counts once against one "le" in the label */
    CHECK_SCALAR(qkv_bleu("le le le", "le chat", 1), pow(1.0 / 3.0, 0.5), 0, 1e-15);
    /* no bigram at all in a one-token prediction: 0, where d2l divides by 0 */
    CHECK(qkv_bleu("va", "va !", 2) == 0.0, "one token, k = 2");
    /* a longer prediction has no brevity penalty */
    CHECK_SCALAR(qkv_bleu("il est calme . .", "il est calme .", 1), pow(4.0 / 5.0, 0.5), 0, 1e-15);
    CHECK(isnan(qkv_bleu(NULL, "a", 2)) && qkv_error_status() == QKV_ERR_ARG, "NULL is an error");
}

TEST(bleu_corpus_sacrebleu)
{
    const char *sys[] = {"le chat est sur le tapis .", "il fait beau", "je suis chez moi .",
                         "va !"};
    const char *ref[] = {"le chat est sur le tapis .", "il fait très beau aujourd'hui",
                         "je suis à la maison .", "va !"};
    CHECK_SCALAR(qkv_corpus_bleu(4, sys, ref), 0.57810167801631316, 0, 1e-15);
    /* a zero 4-gram count is smoothed as sacrebleu's 'exp' method */
    const char *sys2[] = {"a b c d", "x y"}, *ref2[] = {"a b c e", "x y z"};
    CHECK_SCALAR(qkv_corpus_bleu(2, sys2, ref2), 0.5321972092465657, 0, 1e-15);
    CHECK_SCALAR(qkv_corpus_bleu(4, sys, sys), 1.0, 0, 1e-15);
}
