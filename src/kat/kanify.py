"""Turn an existing transformer into a KAT: replace its MLP blocks with GR-KAN layers.

``kanify(model)`` finds timm ``Mlp`` blocks (ViT, DeiT, Swin, EVA variants without SwiGLU, ...) — or
any module a ``predicate`` accepts that has ``fc1``/``act``/``fc2`` — and swaps each for a ``GRKAN``
that computes the same function at the start: act1 is the identity, act2 is a rational fitted to the
replaced activation, fc1/fc2 (and the MLP's norm, if any) keep their weights. Training then lets the
rationals move away from their initial shapes, as in the KAT paper's ViT-to-KAT initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from .layers import GRKAN, GroupRational
from .rational_init import InitSpec

__all__ = ["kanify", "KanifyReport", "activation_init"]

# Activation modules whose rational preset is known; anything else callable is fitted on the fly.
_ACT_NAMES = {nn.SiLU: "silu", nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Identity: "identity"}


def activation_init(act: nn.Module) -> InitSpec:
    """The rational init that reproduces ``act``: a preset name where one exists, else ``act`` itself
    (fitted by least squares when the layer is built)."""
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01:
        return "leaky_relu"
    for cls, name in _ACT_NAMES.items():
        if type(act) is cls:
            return name
    if isinstance(act, nn.Module) or callable(act):
        return act
    raise TypeError(f"kanify: cannot use {act!r} as an activation to fit")


@dataclass
class KanifyReport:
    """What ``kanify`` replaced: one entry per MLP, plus the parameters the rationals added."""
    replaced: list[dict] = field(default_factory=list)
    added_parameters: int = 0

    def __len__(self) -> int:
        return len(self.replaced)

    def __str__(self) -> str:
        lines = [f"kanify: replaced {len(self.replaced)} MLP block(s), +{self.added_parameters} parameters"]
        for r in self.replaced:
            lines.append(f"  {r['name']}: {r['in_features']}->{r['hidden_features']}->{r['out_features']}, "
                         f"{r['activation']} -> rational init {r['act_init']!r}")
        return "\n".join(lines)


def _is_timm_mlp(module: nn.Module) -> bool:
    from timm.layers import Mlp
    return type(module) is Mlp


def _check_mlp(name: str, m: nn.Module) -> None:
    for attr in ("fc1", "fc2"):
        if not isinstance(getattr(m, attr, None), nn.Linear):
            raise ValueError(f"kanify: {name or 'model'} ({type(m).__name__}) has no nn.Linear {attr!r}; only "
                             "fc1 -> act -> fc2 MLPs can be converted")
    if not hasattr(m, "act"):
        raise ValueError(f"kanify: {name or 'model'} ({type(m).__name__}) has no 'act' activation")


def _convert(m: nn.Module, act_init: Optional[InitSpec], act1_init: InitSpec, groups: int,
             order: tuple[int, int], impl: str) -> tuple[GRKAN, InitSpec]:
    fc1, fc2 = m.fc1, m.fc2
    init = act_init if act_init is not None else activation_init(m.act)
    norm = getattr(m, "norm", None)
    drop = (getattr(getattr(m, "drop1", None), "p", 0.0), getattr(getattr(m, "drop2", None), "p", 0.0))
    kan = GRKAN(fc1.in_features, fc1.out_features, fc2.out_features, bias=(fc1.bias is not None,
                fc2.bias is not None), drop=drop, act_init=init, act1_init=act1_init, groups=groups,
                order=order, impl=impl, device=fc1.weight.device, dtype=fc1.weight.dtype)
    with torch.no_grad():
        kan.fc1.load_state_dict(fc1.state_dict())
        kan.fc2.load_state_dict(fc2.state_dict())
    if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
        kan.norm = norm
    return kan, init


def kanify(model: nn.Module, *, predicate: Optional[Callable[[str, nn.Module], bool]] = None,
           act_init: Optional[InitSpec] = None, act1_init: InitSpec = "identity", groups: int = 8,
           order: tuple[int, int] = (5, 4), impl: str = "auto") -> tuple[nn.Module, KanifyReport]:
    """Replace MLP blocks of ``model`` in place with function-preserving GR-KAN layers.

    Args:
        model: e.g. a timm ViT/DeiT/Swin.
        predicate: ``(name, module) -> bool`` selecting the modules to replace; default: every timm
            ``Mlp``. Selected modules must have ``fc1`` and ``fc2`` (nn.Linear) and ``act``.
        act_init: what act2 starts as; default: fitted to each replaced ``act``.
        act1_init: what act1 (before fc1) starts as; "identity" keeps the function.
        groups, order, impl: passed to the GroupRational layers (channel counts must divide by groups).

    Returns ``(model, report)``; ValueError if nothing matched or a match cannot be converted.
    """
    select = predicate or (lambda name, m: _is_timm_mlp(m))
    targets = [(name, m) for name, m in model.named_modules() if select(name, m)]
    if not targets:
        raise ValueError("kanify: no module matched (default: timm.layers.Mlp blocks); pass predicate=")
    # Convert outermost matches only: a matched module's children are replaced with it.
    chosen: list[tuple[str, nn.Module]] = []
    for name, m in targets:
        if not any(p == "" or name.startswith(p + ".") for p, _ in chosen):
            chosen.append((name, m))
    report = KanifyReport()
    for name, m in chosen:
        _check_mlp(name, m)
        for width in (m.fc1.in_features, m.fc1.out_features):
            if width % groups:
                raise ValueError(f"kanify: {name}: width {width} is not divisible by groups={groups}")
        kan, init = _convert(m, act_init, act1_init, groups, order, impl)
        added = sum(p.numel() for mod in kan.modules() if isinstance(mod, GroupRational) for p in mod.parameters())
        report.replaced.append({"name": name, "in_features": m.fc1.in_features, "hidden_features": m.fc1.out_features,
                                "out_features": m.fc2.out_features, "activation": type(m.act).__name__,
                                "act_init": init if isinstance(init, str) else f"fitted to {type(init).__name__}"})
        report.added_parameters += added
        if name:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, kan)
        else:
            model = kan
    return model, report
