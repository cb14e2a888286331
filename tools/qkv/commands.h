/* commands.h - the `qkv` subcommands. Each takes its own argv (argv[0] is
 * the command's name) and returns the process exit status: 0 done, 1 the
 * work failed (message printed), 2 bad usage. */
#ifndef QKV_COMMANDS_H
#define QKV_COMMANDS_H

int cmd_kernel_regression(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_train_transformer(int argc, char **argv);
int cmd_comm(int argc, char **argv);
int cmd_translate(int argc, char **argv);
/* cmd_vit.c */
int cmd_train_vit(int argc, char **argv);
int cmd_eval_vit(int argc, char **argv);
int cmd_classify(int argc, char **argv);
int cmd_data_scenes(int argc, char **argv);
int cmd_coco_eval(int argc, char **argv);
/* cmd_moco.c */
int cmd_train_moco(int argc, char **argv);
int cmd_probe(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
/* cmd_detr.c */
int cmd_train_detr(int argc, char **argv);
int cmd_eval_detr(int argc, char **argv);
int cmd_detect(int argc, char **argv);

#endif
