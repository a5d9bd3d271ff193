"""Build a KAT from a ViT of the same shape ("KAT from ViT", arXiv 2409.10594 Sec. 5.1).

Attention, norms, embeddings, head and fc1/fc2 are copied; act1 starts as the identity and act2 as the
ViT's activation (GELU) fitted under kat's rational formula, so the KAT computes (nearly) the same
function as the ViT it came from. Sources: a timm ``VisionTransformer``, a state dict file
(``.pth``/``.pt``/``.bin``/``.safetensors``) or a JAX/big_vision ``.npz`` (AugReg) checkpoint.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Union

import torch
from timm.models.vision_transformer import VisionTransformer

from .kat import KAT, unwrap_state_dict

__all__ = ["from_vit", "load_state_dict_file"]

_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def load_state_dict_file(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Read a checkpoint without running pickled code (safetensors, or torch.load(weights_only=True))."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..), older versions a pickle (protocol 2+ starts with 0x80)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(f"{path} is not a checkpoint: expected a PyTorch weights file (.pth/.pt, as torch.save "
                         "writes) or .safetensors")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: refuse, never execute
        reason = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise ValueError(f"refusing to load {path}: it is not a plain tensor checkpoint, and loading it would run "
                         f"code stored in it ({reason})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def _infer_args(sd: dict[str, torch.Tensor], num_heads: int | None) -> dict[str, Any]:
    proj = sd["patch_embed.proj.weight"]  # (D, in_chans, p, p)
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    class_token = "cls_token" in sd
    reg_tokens = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    tokens = sd["pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    no_embed_class = grid * grid == tokens and (class_token or reg_tokens)
    if not no_embed_class:
        grid = math.isqrt(tokens - int(class_token) - reg_tokens)
    heads = num_heads or _HEADS.get(dim)
    if heads is None:
        raise ValueError(f"cannot infer num_heads for embed_dim {dim}; pass num_heads=")
    head = sd.get("head.weight")
    return dict(img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim, depth=depth,
                num_heads=heads, num_classes=head.shape[0] if head is not None else 0,
                class_token=class_token, reg_tokens=reg_tokens, no_embed_class=bool(no_embed_class),
                qkv_bias="blocks.0.attn.qkv.bias" in sd, pre_norm="norm_pre.weight" in sd,
                global_pool="token" if class_token else "avg",
                fc_norm="fc_norm.weight" in sd)


def from_vit(source: Union[VisionTransformer, str, Path], *, act_init: str = "gelu",
             num_heads: int | None = None, **kat_kwargs: Any) -> KAT:
    """Return a KAT with the ViT's weights and act2 initialised to ``act_init`` (the ViT's GELU).

    ``kat_kwargs`` go to ``KAT`` (e.g. ``drop_path_rate``, ``rational_impl``).
    """
    if isinstance(source, VisionTransformer):
        vit = source
        sd = vit.state_dict()
        num_heads = num_heads or vit.blocks[0].attn.num_heads
        args = _infer_args(sd, num_heads)
        args.update(img_size=vit.patch_embed.img_size, global_pool=vit.global_pool)
    else:
        path = Path(source)
        if path.suffix == ".npz":
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint not found: {path}")
            import numpy as np
            with np.load(path) as npz:
                keys = list(npz.keys())
                emb = next(npz[k] for k in keys if k.endswith("embedding/kernel") and "pos" not in k)
                head = next((npz[k] for k in keys if k.endswith("head/bias")), None)
            dim, patch = emb.shape[-1], emb.shape[0]
            vit = VisionTransformer(patch_size=patch, embed_dim=dim, depth=sum(
                1 for k in keys if re.search(r"encoderblock_\d+/LayerNorm_0/scale$", k)) or 12,
                num_heads=num_heads or _HEADS[dim], num_classes=0 if head is None else head.shape[-1])
            vit.load_pretrained(str(path))  # timm's public .npz loader
            return from_vit(vit, act_init=act_init, num_heads=num_heads, **kat_kwargs)
        sd = unwrap_state_dict(load_state_dict_file(path))
        args = _infer_args(sd, num_heads)
    if any(".mlp.act" in k for k in sd):
        raise ValueError("the source already has rational activations (it is a KAT checkpoint)")
    model = KAT(act_init=act_init, **args, **kat_kwargs)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    not_rational = [k for k in missing if not re.search(r"\.mlp\.act[12]\.weight_(numerator|denominator)$", k)]
    if not_rational or unexpected:
        raise ValueError(f"ViT checkpoint does not match a KAT of shape {args}: missing {not_rational[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")
    return model

