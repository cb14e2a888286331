/* schedule.c - learning rates as functions of the (0-based) step. */
#include "../qkv_internal.h"

#include <math.h>

/* torch.optim.lr_scheduler.StepLR: base * gamma^floor(step / step_size). */
float qkv_lr_step_decay(float base, int64_t step, int64_t step_size, float gamma)
{
    if (step_size <= 0 || step < 0)
        return base;
    return (float)(base * pow(gamma, (double)(step / step_size)));
}

float qkv_lr_cosine(float base, int64_t step, int64_t warmup, int64_t total, float min_lr)
{
    if (step < warmup)
        return (float)((double)base * (double)step / (double)warmup);
    if (step >= total)
        return min_lr;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    return (float)(min_lr + (base - (double)min_lr) * 0.5 * (1.0 + cos(M_PI * progress)));
}

/* "Attention is all you need", eq. 3: linear warmup, then 1/sqrt(step). */
float qkv_lr_inverse_sqrt(int64_t d_model, int64_t step, int64_t warmup)
{
    double s = (double)(step + 1);
    double decay = 1.0 / sqrt(s);
    if (warmup > 0)
        decay = fmin(decay, s * pow((double)warmup, -1.5));
    return (float)(decay / sqrt((double)d_model));
}
