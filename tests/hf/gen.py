#!/usr/bin/env python3
"""Hugging Face's DetrForObjectDetection as the reference of qkv's DETR
(tests/test_detr.c): a random model with a timm ResNet-18 backbone (no
pretrained weights) and a tiny transformer, run on two images, one padded.

Usage: gen.py OUTDIR

Writes OUTDIR/detr_hf5.safetensors (the state_dict under transformers 5's
names, as the model has them, rounded to and stored as bfloat16), OUTDIR/detr_hf4.safetensors (the same under
the names of the hub's checkpoints, written by transformers 4:
model.backbone.conv_encoder.model.*, self_attn.out_proj, fc1, fc2) and
OUTDIR/detr_hf_io.safetensors: pixel_values (B, 3, H, W), pixel_mask
(B, H, W) (1 on image pixels), the model's logits (B, Q, K + 1) and
pred_boxes (B, Q, 4) in eval mode, random upstream gradients of both, and
the gradient of every tensor outside the backbone under its official DETR
name (q, k, v projections concatenated as in_proj). Runs on PyPI's torch,
transformers and timm in the project's .venv (scripts/install-deps.sh).
"""
import os
import re
import sys

import torch
from safetensors.torch import save_file
from transformers import DetrConfig, DetrForObjectDetection

E, HEADS, FFN, N_ENC, N_DEC, Q, LABELS = 16, 4, 32, 2, 3, 5, 4


def official(name):
    """transformers 5 name -> the official checkpoint's (SPEC.md section 8);
    None for a q/k/v piece (handled by the caller)."""
    rules = [
        (r"^model\.backbone\.model\.", "backbone.0.body."),
        (r"^model\.input_projection\.", "input_proj."),
        (r"^model\.query_position_embeddings\.", "query_embed."),
        (r"^model\.decoder\.layernorm\.", "transformer.decoder.norm."),
        (r"^class_labels_classifier\.", "class_embed."),
        (r"^bbox_predictor\.layers\.", "bbox_embed.layers."),
    ]
    for pat, rep in rules:
        if re.match(pat, name):
            return re.sub(pat, rep, name)
    m = re.match(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.*)$", name)
    stack, n, rest = m.group(1), m.group(2), m.group(3)
    dec = stack == "decoder"
    sub = [(r"^self_attn\.o_proj\.", "self_attn.out_proj."),
           (r"^encoder_attn\.o_proj\.", "multihead_attn.out_proj."),
           (r"^mlp\.fc1\.", "linear1."), (r"^mlp\.fc2\.", "linear2."),
           (r"^self_attn_layer_norm\.", "norm1."),
           (r"^encoder_attn_layer_norm\.", "norm2."),
           (r"^final_layer_norm\.", "norm3." if dec else "norm2.")]
    for pat, rep in sub:
        if re.match(pat, rest):
            return f"transformer.{stack}.layers.{n}." + re.sub(pat, rep, rest)
    return None


def hub_name(name):
    """transformers 5 name -> the hub checkpoints' (transformers 4)."""
    name = name.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
    name = re.sub(r"\.(self_attn|encoder_attn)\.o_proj\.", r".\1.out_proj.", name)
    return name.replace(".mlp.fc1.", ".fc1.").replace(".mlp.fc2.", ".fc2.")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = DetrConfig(use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False,
                     d_model=E, encoder_layers=N_ENC, decoder_layers=N_DEC,
                     encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, encoder_attention_heads=HEADS,
                     decoder_attention_heads=HEADS, num_queries=Q, num_labels=LABELS,
                     dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = DetrForObjectDetection(cfg).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 96, generator=g)
    x[1, :, :, 64:] = 0
    mask = torch.ones(2, 64, 96, dtype=torch.long)
    mask[1, :, 64:] = 0
    with torch.no_grad():
        # random frozen batch norms (1, 0, 0, 1) leave C5 far from a trained
        # backbone's scale: input_projection brings it back to about 1, so
        # the first encoder layer's softmax is not saturated
        for n, p in model.named_parameters():
            if not n.startswith("model.backbone.") and p.dim() == 1:
                p.add_((torch.rand(p.shape, generator=g) - 0.5) * 0.2)
        feat = model.model.backbone.model(x)[-1]
        model.model.input_projection.weight.div_(feat.std())
        for t in list(model.parameters()) + list(model.buffers()):  # bfloat16, exactly
            if t.dtype.is_floating_point:
                t.copy_(t.to(torch.bfloat16).float())
    state = {k: (v.to(torch.bfloat16) if v.dtype.is_floating_point else v).clone().contiguous()
             for k, v in model.state_dict().items()}
    meta = {"num_heads": str(HEADS)}
    save_file(state, os.path.join(out, "detr_hf5.safetensors"), metadata=meta)
    save_file({hub_name(k): v for k, v in state.items()},
              os.path.join(out, "detr_hf4.safetensors"), metadata=meta)
    o = model(pixel_values=x, pixel_mask=mask)
    gl = torch.randn(o.logits.shape, generator=g)
    gb = torch.randn(o.pred_boxes.shape, generator=g)
    ((o.logits * gl).sum() + (o.pred_boxes * gb).sum()).backward()
    io = {"pixel_values": x, "pixel_mask": mask.float(), "logits": o.logits.detach(),
          "pred_boxes": o.pred_boxes.detach(), "g_logits": gl, "g_boxes": gb}
    params = dict(model.named_parameters())
    for n, p in params.items():
        if n.startswith("model.backbone.") or p.grad is None:
            continue
        m = re.match(r"^(model\.(?:encoder|decoder)\.layers\.\d+\.(self_attn|encoder_attn))"
                     r"\.(q|k|v)_proj\.(weight|bias)$", n)
        if m:
            if m.group(3) != "q":
                continue
            base, kind = m.group(1), m.group(4)
            grads = [params[f"{base}.{c}_proj.{kind}"].grad for c in "qkv"]
            off = official(f"{base}.o_proj.{kind}").replace(".out_proj." + kind,
                                                            ".in_proj_" + kind)
            io["grad." + off] = torch.cat(grads, 0)
        else:
            io["grad." + official(n)] = p.grad
    save_file({k: v.contiguous() for k, v in io.items()},
              os.path.join(out, "detr_hf_io.safetensors"))
    print(f"hf fixtures: DetrForObjectDetection (transformers), written to {out}")


if __name__ == "__main__":
    main()
