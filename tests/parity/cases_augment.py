"""Parity cases for the image transforms of MoCo's views, against
torchvision 0.14's tensor functionals: resized_crop (bilinear, no
antialias), hflip, adjust_brightness, adjust_contrast (grey and RGB),
gaussian_blur. Images are (C, H, W) floats in [0, 1]."""
import torch
import torchvision.transforms.functional as TF


def image(g, c, h, w):
    return torch.rand(c, h, w, generator=g)


def resized_crop(g, c, h, w, box, size):
    x = image(g, c, h, w)
    top, left, bh, bw = box
    out = TF.resized_crop(x, top, left, bh, bw, list(size), antialias=False)
    return {"x": x, "out": out}, {"box": ",".join(map(str, box)),
                                  "size": ",".join(map(str, size))}


def jitter(g, c, brightness, contrast):
    x = image(g, c, 9, 7)
    return {"x": x, "brightness": TF.adjust_brightness(x, brightness),
            "contrast": TF.adjust_contrast(x, contrast)}, {"brightness": str(brightness),
                                                           "contrast": str(contrast)}


def blur(g, c, k, sigma):
    x = image(g, c, 12, 10)
    return {"x": x, "out": TF.gaussian_blur(x, [k, k], [sigma, sigma]),
            "flip": TF.hflip(x)}, {"k": str(k), "sigma": str(sigma)}


CASES = {
    # a window smaller than the output (MoCo's crops up-sample), one as wide
    "augment_resized_crop_up": lambda g: resized_crop(g, 1, 28, 28, (3, 5, 13, 17), (28, 28)),
    "augment_resized_crop_whole": lambda g: resized_crop(g, 1, 28, 28, (0, 0, 28, 28), (28, 28)),
    "augment_resized_crop_rgb": lambda g: resized_crop(g, 3, 10, 12, (1, 2, 7, 9), (16, 14)),
    "augment_jitter_grey": lambda g: jitter(g, 1, 1.3, 0.7),
    "augment_jitter_rgb": lambda g: jitter(g, 3, 0.8, 1.35),
    "augment_blur_small": lambda g: blur(g, 1, 3, 0.6),
    "augment_blur_wide": lambda g: blur(g, 2, 13, 2.0),
}
