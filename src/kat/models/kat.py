"""Kolmogorov-Arnold Transformer (KAT) models for timm.

Paper: "Kolmogorov-Arnold Transformer", Xingyi Yang and Xinchao Wang, ICLR 2025, arXiv 2409.10594.
Official code: https://github.com/Adamdad/kat (MIT licence).

KAT is timm's ``VisionTransformer`` with every MLP replaced by a GR-KAN (``kat.layers.GRKAN``): a
group-rational activation before each of the two linear layers. This module composes timm's class
rather than copying it; what KAT adds is the MLP, the "mimetic" attention init, the
variance-preserving MLP init and checkpoint handling. Importing ``kat`` registers:

    kat_{tiny,small,base}_patch16_224           act2 initialised as swish (the released models)
    kat_{tiny,small,base}_swish_patch16_224     the same architecture under the official alias
    kat_{tiny,small,base}_gelu_patch16_224      act2 initialised as GELU (fitted under kat's formula)

with pretrained tags ``.in1k`` (trained from scratch) and ``.vitft`` (started from an AugReg ViT).
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as _vit_checkpoint_filter_fn

from ..layers import GRKAN, NormAct1

# timm's fx tracer (feature extraction, timm's fx tests) calls each GR-KAN whole, so a traced model
# computes the MLP exactly as eager does; traced module by module, it would take another path than
# eager's fused kernels on a GPU and differ in the last bits (timm's fx test compares with ==).
register_notrace_module(GRKAN)

__all__ = ["KAT", "mimetic_init_", "checkpoint_filter_fn", "unwrap_state_dict", "KAT_SIZES"]

KAT_SIZES = {"tiny": dict(embed_dim=192, num_heads=3), "small": dict(embed_dim=384, num_heads=6),
             "base": dict(embed_dim=768, num_heads=12)}
_HUB_FILES = {  # files in the hub repo adamdad/kat_pretained; the hex suffix is the file's SHA-256
    ("tiny", "in1k"): "kat_tiny_patch16_224_1f3ad3b2e69821f3d412f2924cf159a0e266f142d739cb68f68f796f5a0fe289.pth",
    ("tiny", "vitft"): "kat_tiny_patch16_224-finetune_64f124d003803e4a7e1aba1ba23500ace359b544e8a5f0110993f25052e402fb.pth",
    ("small", "in1k"): "kat_small_patch16_224_32487885cf13d2c14e461c9016fac8ad43f7c769171f132530941e930aeb5fe2.pth",
    ("small", "vitft"): "kat_small_patch_224-finetune_3ae087a4c28e2993468eb377d5151350c52c80b2a70cc48ceec63d1328ba58e0.pth",
    ("base", "in1k"): "kat_base_patch16_224_abff874d925d756d15cde97303f772a3460ddbd44b9c53fb9ce5cf15be230fb6.pth",
    ("base", "vitft"): "kat_base_patch16_224-finetune_440bf1ead9dd8ecab642078cfb60ae542f1fa33ca65517260501e02c011e38f2.pth",
}
_TOP1 = {("tiny", "in1k"): 74.6, ("tiny", "vitft"): 75.7, ("small", "in1k"): 81.2,
         ("small", "vitft"): 82.0, ("base", "in1k"): 82.3, ("base", "vitft"): 82.8}


@torch.no_grad()
def _ortho_like(dim: int, alpha: float, beta: float, sign: float, rank: int, generator=None):
    """Factors L (dim, rank), R (rank, dim) whose product is the best rank-``rank`` approximation of
    A = alpha * U(-sqrt(3/dim), sqrt(3/dim)) + sign * beta * I, split evenly: L = U sqrt(S),
    R = sqrt(S) V^T (the mimetic-init construction; rank = dim reproduces A)."""
    bound = math.sqrt(3.0 / dim)
    a = (torch.rand(dim, dim, generator=generator) * 2 - 1) * bound * alpha
    a += sign * beta * torch.eye(dim)
    u, s, vh = torch.linalg.svd(a)  # float32: the factors are rounded to fp32 weights anyway
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _signed_permutation(left: torch.Tensor, right: torch.Tensor, generator=None):
    """(D P L Pi E, E Pi^T R P^T D) for random permutations P (outer), Pi (inner) and random signs D,
    E: the product becomes D P (L R) P^T D. Conjugating A by a signed permutation keeps its law (iid
    symmetric entries stay iid, the identity stays the identity) and commutes with the best rank-k
    approximation, so each draw is distributed exactly like the factors of a fresh A, at the cost of
    indexing instead of an SVD."""
    dim, rank = left.shape
    p, q = torch.randperm(dim, generator=generator), torch.randperm(rank, generator=generator)
    d = torch.randint(0, 2, (dim, 1), generator=generator).mul_(2).sub_(1).to(left.dtype)
    e = torch.randint(0, 2, (1, rank), generator=generator).mul_(2).sub_(1).to(left.dtype)
    return (left.index_select(0, p).index_select(1, q).mul_(d).mul_(e),
            right.index_select(0, q).index_select(1, p).mul_(e.t()).mul_(d.t()))


@torch.no_grad()
def mimetic_init_(model: torch.nn.Module, qk=(0.7, 0.7), vo=(0.4, 0.4), generator=None) -> None:
    """Mimetic attention init (Trockman & Kolter, 2023) as KAT uses it: for every attention layer,
    each head's W_q^T W_k is the best rank-head_dim approximation of alpha*U + beta*I (U uniform,
    variance 1/dim), split evenly between the two factors; the value and output weights are the
    even split L, R of A = alpha*U - beta*I (W_v = L, W_proj = R, the official code's order, so the
    map the forward applies is R L: A's eigenvalues, not A itself). ``KAT(attn_init="mimetic")``.

    One SVD per kind and width, not one per head: every head and layer gets a random signed
    permutation of it, distributed exactly as a fresh draw (``_signed_permutation``); heads then
    share singular values, where fresh draws would differ by sampling noise. KAT-B: 2 SVDs instead
    of 156 (seconds on a CPU). Weights on the meta device are left alone."""
    base: dict = {}
    for module in model.modules():
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        heads = getattr(module, "num_heads", None)
        if not isinstance(qkv, torch.nn.Linear) or not isinstance(proj, torch.nn.Linear) or not heads:
            continue
        dim = qkv.in_features
        if qkv.out_features != 3 * dim or proj.in_features != dim or proj.out_features != dim \
                or qkv.weight.is_meta:
            continue
        hd = dim // heads
        if (dim, hd) not in base:
            base[dim, hd] = (_ortho_like(dim, qk[0], qk[1], 1.0, hd, generator),
                             _ortho_like(dim, vo[0], vo[1], -1.0, dim, generator))
        qk_base, vo_base = base[dim, hd]
        w = qkv.weight
        for h in range(heads):
            left, right = _signed_permutation(*qk_base, generator)
            w[h * hd:(h + 1) * hd].copy_(left.t())
            w[dim + h * hd:dim + (h + 1) * hd].copy_(right)
        left, right = _signed_permutation(*vo_base, generator)
        w[2 * dim:].copy_(left)
        proj.weight.copy_(right)


class KAT(VisionTransformer):
    """A VisionTransformer whose MLPs are GR-KANs.

    KAT-specific args (everything else is timm's ``VisionTransformer``):
        act_init: what act2 (before fc2) starts as: "swish" (released models), "gelu", "identity", ...
        act1_init: what act1 (before fc1) starts as; "identity" in the paper.
        rational_groups, rational_order, shared_numerator: see ``kat.GroupRational``.
        mlp_init: "variance" (w ~ N(0, alpha/fan_in), the paper's init) or "trunc_normal" (std 0.02,
            what the official code ended up using).
        attn_init: "timm" (timm's ViT init, the default) or "mimetic" (the official code's init, kept
            by the paper recipe, configs/*_in1k.yaml). Built fresh with mimetic attention, KATs spike
            and can collapse at learning rates where ViT trains, without warm-up (its query/key
            part does it; measured on KAT-T/S, tests/models/test_robust_training.py).
        rational_impl: "auto" | "torch" | "triton".
        recompute_act1: recompute act1's output in backward instead of storing it (less memory;
            see ``GRKAN``).
        fuse_norm_act1: each block's norm2 also applies act1 (``kat.layers.NormAct1``): one Triton
            kernel for both, forward and backward, where the rational runs on Triton. Same
            state_dict keys.
    """

    def __init__(self, *, act_init="swish", act1_init="identity", rational_groups: int = 8,
                 rational_order=(5, 4), shared_numerator: bool = True, mlp_init: str = "variance",
                 attn_init: str = "timm", rational_impl: str = "auto", recompute_act1: bool = False,
                 fuse_norm_act1: bool = False, **kwargs: Any):
        if "mlp_layer" in kwargs:
            raise ValueError("KAT builds its own mlp_layer (GRKAN); do not pass mlp_layer")
        if attn_init not in ("mimetic", "timm"):
            raise ValueError(f"KAT: attn_init must be 'mimetic' or 'timm', got {attn_init!r}")
        # Read by init_weights, which VisionTransformer.__init__ calls: set before it (plain attribute).
        self.attn_init = attn_init
        mlp_layer = partial(GRKAN, act_init=act_init, act1_init=act1_init, groups=rational_groups,
                            order=tuple(rational_order), shared_numerator=shared_numerator,
                            linear_init=mlp_init, impl=rational_impl, recompute_act1=recompute_act1,
                            skip_init=kwargs.get("weight_init", "") != "skip")  # init_weights() runs after
        super().__init__(mlp_layer=mlp_layer, **kwargs)
        if fuse_norm_act1:
            if recompute_act1:
                raise ValueError("KAT: recompute_act1 (act1 fused with fc1) and fuse_norm_act1 (act1 fused with "
                                 "norm2) exclude each other")
            for block in self.blocks:  # norm2 applies act1, the MLP starts at fc1
                block.norm2 = NormAct1(block.norm2, block.mlp.act1)
                block.mlp.apply_act1 = False
        self._register_load_state_dict_pre_hook(self._check_checkpoint_variant)

    def init_weights(self, *args, **kwargs) -> None:
        super().init_weights(*args, **kwargs)  # timm's init, then GRKAN.init_weights for each MLP
        if self.attn_init == "mimetic":
            mimetic_init_(self)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        if strict and any(k.startswith("blocks.") for k in state_dict) \
                and not any(".mlp.act" in k for k in state_dict):
            raise ValueError("checkpoint has no rational coefficients (blocks.N.mlp.act1/act2): it looks like "
                             "a plain ViT; convert it with kat.from_vit(...) instead")
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    def _check_checkpoint_variant(self, state_dict, prefix, *args) -> None:
        """Fail early, naming the mismatch, when a checkpoint is for another size (every loading path)."""
        pos = state_dict.get(prefix + "pos_embed")
        if isinstance(pos, torch.Tensor) and pos.shape[-1] != self.embed_dim:
            raise ValueError(f"checkpoint is for a model with embed_dim {pos.shape[-1]}, but this KAT has "
                             f"embed_dim {self.embed_dim}: wrong variant (e.g. kat_small vs kat_tiny)")
        depth = {int(m.group(1)) for k in state_dict
                 if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
        if depth and max(depth) + 1 != len(self.blocks):
            raise ValueError(f"checkpoint has {max(depth) + 1} blocks, but this KAT has {len(self.blocks)}")


def unwrap_state_dict(checkpoint: dict) -> dict:
    """The weights inside an official/timm checkpoint ({'state_dict' | 'model' | 'state_dict_ema': ...},
    or bare), without DDP's 'module.' prefix."""
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def checkpoint_filter_fn(state_dict: dict, model: KAT, **kwargs) -> dict:
    """Pretrained-weights filter: unwrap, then timm's ViT filter (position-embedding resampling)."""
    return _vit_checkpoint_filter_fn(unwrap_state_dict(state_dict), model, **kwargs)


def _cfg(size: str = "", tag: str = "", **kwargs) -> dict[str, Any]:
    cfg = {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "mit",
        "paper_ids": "arXiv:2409.10594", "paper_name": "Kolmogorov-Arnold Transformer",
        "origin_url": "https://github.com/Adamdad/kat",
    }
    if size:
        suffix = "" if tag == "in1k" else f".{tag}"
        cfg.update(
            hf_hub_id=f"adamdad/kat_{size}_patch16_224{suffix}",
            url=f"https://huggingface.co/adamdad/kat_pretained/resolve/main/{_HUB_FILES[(size, tag)]}",
            notes=(f"ImageNet-1k top-1 {_TOP1[(size, tag)]} (paper)",
                   "trained from scratch" if tag == "in1k" else "initialised from an AugReg IN-21k ViT"),
        )
    cfg.update(kwargs)
    return cfg


default_cfgs = generate_default_cfgs({
    **{f"kat_{s}_patch16_224.{t}": _cfg(s, t) for s in KAT_SIZES for t in ("in1k", "vitft")},
    **{f"kat_{s}_swish_patch16_224.{t}": _cfg(s, t) for s in KAT_SIZES for t in ("in1k", "vitft")},
    **{f"kat_{s}_gelu_patch16_224": _cfg() for s in KAT_SIZES},
})


def _create_kat(variant: str, pretrained: bool = False, **kwargs) -> KAT:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        KAT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _register(size: str, act: str, name: str) -> None:
    def entry(pretrained: bool = False, **kwargs) -> KAT:
        args = dict(patch_size=16, depth=12, act_init=act, **KAT_SIZES[size])
        return _create_kat(name, pretrained=pretrained, **dict(args, **kwargs))

    entry.__name__ = name
    entry.__qualname__ = name
    entry.__doc__ = (f"KAT-{size.capitalize()}/16 at 224x224: ViT-{size.capitalize()} with GR-KAN MLPs, "
                     f"act2 initialised as {act} (arXiv 2409.10594).")
    entry.__module__ = __name__
    globals()[name] = register_model(entry)


for _size in KAT_SIZES:
    _register(_size, "swish", f"kat_{_size}_patch16_224")
    _register(_size, "swish", f"kat_{_size}_swish_patch16_224")
    _register(_size, "gelu", f"kat_{_size}_gelu_patch16_224")
