/*
 * cmd_data.c - `qkv data scenes`: makes the detection data set that DETR
 * trains on by default (qkv_scenes_make): Fashion-MNIST items on textured
 * canvases, PNG images and COCO JSON annotations.
 */
#include "args.h"
#include "commands.h"
#include "qkv.h"

#include <stdio.h>

int cmd_data_scenes(int argc, char **argv)
{
    qkv_scenes_config c = {.out_dir = "data/scenes", .data_dir = QKV_MNIST_DIR,
                           .n_train = 10000, .n_val = 1000, .size = 128, .min_scale = 0.5,
                           .max_scale = 2.0, .min_objects = 1, .max_objects = 5,
                           .max_overlap = 0.3};
    arg_opt opts[] = {
        {.name = "out", .kind = ARG_STRING, .value = &c.out_dir, .metavar = "DIR",
         .help = "train/, val/ and annotations/{train,val}.json go here"},
        {.name = "data", .kind = ARG_STRING, .value = &c.data_dir, .metavar = "DIR",
         .help = "Fashion-MNIST IDX files"},
        {.name = "train", .kind = ARG_INT, .value = &c.n_train, .min = 0, .max = 1e7,
         .help = "training images (items from Fashion-MNIST's training set)"},
        {.name = "val", .kind = ARG_INT, .value = &c.n_val, .min = 0, .max = 1e7,
         .help = "validation images (items from its test set)"},
        {.name = "size", .kind = ARG_INT, .value = &c.size, .min = 16, .max = 4096,
         .help = "canvas width and height in pixels"},
        {.name = "min-scale", .kind = ARG_FLOAT, .value = &c.min_scale, .min = 0.05, .max = 100,
         .help = "smallest item scale (1: 28 pixels)"},
        {.name = "max-scale", .kind = ARG_FLOAT, .value = &c.max_scale, .min = 0.05, .max = 100,
         .help = "largest item scale"},
        {.name = "min-objects", .kind = ARG_INT, .value = &c.min_objects, .min = 0, .max = 64,
         .help = "fewest items per image"},
        {.name = "max-objects", .kind = ARG_INT, .value = &c.max_objects, .min = 0, .max = 64,
         .help = "most items per image"},
        {.name = "max-overlap", .kind = ARG_FLOAT, .value = &c.max_overlap, .min = 0, .max = 1,
         .help = "largest IoU between two items' frames"},
        {.name = "seed", .kind = ARG_U64, .value = &c.seed, .help = "the images' random draws"},
    };
    args_spec s = {
        .command = "data scenes",
        .summary = "Makes a detection data set from Fashion-MNIST: items scaled 0.5 to 2\n"
                   "times, several per canvas, some overlapping, on textured backgrounds;\n"
                   "PNG images and COCO JSON annotations (docs/detr.md).",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (c.max_scale < c.min_scale || c.max_objects < c.min_objects) {
        fprintf(stderr, "qkv data scenes: --max-scale and --max-objects must not be below "
                        "their --min- counterparts\n");
        return 2;
    }
    if (qkv_scenes_make(&c) != QKV_OK) {
        fprintf(stderr, "qkv data scenes: %s\n", qkv_error());
        return 1;
    }
    printf("wrote %lld training and %lld validation images with COCO annotations into %s\n",
           (long long)c.n_train, (long long)c.n_val, c.out_dir);
    return 0;
}
