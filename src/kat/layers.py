"""Layers: GroupRational (a learnable group-rational activation) and GRKAN (the KAT MLP block).

``GRKAN`` takes the constructor arguments of timm's ``Mlp``, so it drops into timm's
``VisionTransformer(mlp_layer=GRKAN)`` and other timm transformers. Parameter names and shapes match
the official KAT code (``act1``/``act2`` with ``weight_numerator (1, 6)`` and
``weight_denominator (8, 4)``), so released checkpoints load unchanged.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Iterator, Optional

import torch
from torch import nn

from .ops.group_rational import IMPLS, MAX_ORDER, group_rational
from .ops.grkan_mlp import autocast_dtype, grkan_mlp, rational_linear
from .ops.layernorm_rational import layernorm_rational
from .rational_init import InitSpec, init_coefficients, resolve_init, variance_gain

__all__ = ["GroupRational", "GroupRational2d", "GRKAN", "NormAct1", "set_rational_impl", "reference_impl"]


# torch.fx: the functions below look at their inputs' values, dtypes and the autocast state, which a
# symbolic trace cannot see; wrapped, each is one call node in a traced graph and runs eagerly there.
def _checked_rational(x, numerator, denominator, impl: str, channel_dim: int, num_features: int,
                      name: str):
    if x.dim() == 0 or not -x.dim() <= channel_dim < x.dim() or x.shape[channel_dim] != num_features:
        raise ValueError(f"{name}: expected {num_features} channels on dim {channel_dim}, got input of "
                         f"shape {tuple(x.shape)}")
    return group_rational(x, numerator, denominator, impl=impl, channel_dim=channel_dim)


def _compute_dtype_input(x):
    """x cast to the autocast dtype where autocast is on and x is fp32 (what fc1 would do anyway:
    casting act1's input instead lets act1 save a half-size input and write a half-size output)."""
    dt = autocast_dtype(x.device.type) if x.dtype == torch.float32 else None
    return x if dt is None else x.to(dt)


def _norm_act1(x, weight, bias, eps: float, numerator, denominator, impl: str):
    dt = autocast_dtype(x.device.type) if x.dtype == torch.float32 else None
    return layernorm_rational(x, weight, bias, eps, numerator, denominator, out_dtype=dt or x.dtype, impl=impl)


for _fn in ("_checked_rational", "_compute_dtype_input", "_norm_act1", "rational_linear"):
    torch.fx.wrap(_fn)


class GroupRational(nn.Module):
    """Learnable F(x) = P(x) / Q(x) applied per channel group (KAT, arXiv 2409.10594).

    Args:
        num_features: channels C of the input.
        groups: G groups of C // G channels; each group has its own denominator.
        init: activation F starts as (name such as "swish", "gelu", "identity", or a callable).
        order: (m, n), degrees of P and Q. The fused kernels cover up to (5, 4); higher orders run on
            the PyTorch reference (a warning says so once at construction).
        shared_numerator: one numerator for all groups (KAT's choice) or one per group.
        impl: "auto" | "torch" | "triton" (see ``kat.group_rational``).
        channel_dim: the channel axis of the input (-1: channels last; 1: (B, C, H, W)).
    """

    def __init__(self, num_features: int, groups: int = 8, init: InitSpec = "swish",
                 order: tuple[int, int] = (5, 4), shared_numerator: bool = True, impl: str = "auto",
                 channel_dim: int = -1, device=None, dtype=None):
        super().__init__()
        if groups < 1 or num_features % groups != 0:
            raise ValueError(f"GroupRational: groups={groups} must divide num_features={num_features}")
        m, n = order
        if m < 0 or n < 1:
            raise ValueError(f"GroupRational: order must be (m >= 0, n >= 1), got {order}")
        if impl not in IMPLS:
            raise ValueError(f"GroupRational: impl must be one of {IMPLS}, got {impl!r}")
        self.init_name, _ = resolve_init(init)  # raises on unknown names before any work
        if m > MAX_ORDER[0] or n > MAX_ORDER[1]:
            warnings.warn(f"GroupRational: order {tuple(order)} exceeds the fused kernels' {MAX_ORDER}; "
                          "this layer runs on the PyTorch reference (slower, more memory)", stacklevel=2)
        self.num_features, self.groups, self.order = num_features, groups, (m, n)
        self.shared_numerator, self.impl, self.channel_dim = shared_numerator, impl, channel_dim
        self._init_coefficients = init_coefficients(init, self.order)
        factory = {"device": device, "dtype": dtype}
        self.weight_numerator = nn.Parameter(torch.empty(1 if shared_numerator else groups, m + 1, **factory))
        self.weight_denominator = nn.Parameter(torch.empty(groups, n, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        num, den = self._init_coefficients
        self.weight_numerator.copy_(torch.tensor(num, device="cpu").expand_as(self.weight_numerator))
        self.weight_denominator.copy_(torch.tensor(den, device="cpu").expand_as(self.weight_denominator))

    def init_gain(self) -> float:
        """alpha = 1 / E[F(x)^2], x ~ N(0, 1), for the function this layer is initialised to."""
        return variance_gain(*self._init_coefficients)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _checked_rational(x, self.weight_numerator, self.weight_denominator, self.impl,
                                 self.channel_dim, self.num_features, type(self).__name__)

    @torch.no_grad()
    def function_on_grid(self, lo: float = -3.0, hi: float = 3.0, points: int = 601):
        """(x, F) with F of shape (groups, points): each group's learned function on a grid."""
        x = torch.linspace(lo, hi, points, dtype=torch.float64, device="cpu")
        num = self.weight_numerator.detach().double().cpu()
        num = num.expand(self.groups, -1)
        den = self.weight_denominator.detach().double().cpu()
        xs = x[:, None].expand(points, self.groups)  # one column per group
        y = group_rational(xs.contiguous(), num, den, impl="torch")
        return x, y.t().contiguous()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # FlashKAT names the coefficients numerator_v / denominator_v and may store one numerator per
        # group (identical rows when shared) or one denominator for all groups; adapt on load.
        for old, new in (("numerator_v", "weight_numerator"), ("denominator_v", "weight_denominator")):
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        for name in ("weight_numerator", "weight_denominator"):
            key, mine = prefix + name, getattr(self, name)
            value = state_dict.get(key)
            if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape == mine.shape \
                    or value.shape[1] != mine.shape[1]:
                continue  # let the standard loader report anything else
            if value.shape[0] == 1:
                state_dict[key] = value.expand_as(mine).clone()
            elif mine.shape[0] == 1 and torch.equal(value, value[:1].expand_as(value)):
                state_dict[key] = value[:1].clone()
            else:
                error_msgs.append(f"{key}: checkpoint has {value.shape[0]} distinct rows but this layer has "
                                  f"{mine.shape[0]} (build it with shared_numerator=False / groups="
                                  f"{value.shape[0]})")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, groups={self.groups}, init={self.init_name!r}, order={self.order}, "
                f"shared_numerator={self.shared_numerator}, impl={self.impl!r}")


class GroupRational2d(GroupRational):
    """GroupRational for ``(B, C, H, W)`` feature maps (channel axis 1), e.g. in a CNN."""

    def __init__(self, num_features: int, groups: int = 8, init: InitSpec = "swish",
                 order: tuple[int, int] = (5, 4), shared_numerator: bool = True, impl: str = "auto",
                 device=None, dtype=None):
        super().__init__(num_features, groups, init, order, shared_numerator, impl, channel_dim=1,
                         device=device, dtype=dtype)


class GRKAN(nn.Module):
    """The KAT MLP: act1 (identity init) -> drop -> fc1 -> act2 (``act_init``) -> drop -> norm -> fc2.

    ``recompute_act1=True`` stores only act1's input for backward and recomputes act1's output there
    (``kat.ops.grkan_mlp.rational_linear``): one (..., C) tensor less per block, for one more
    element-wise pass. ``apply_act1=False`` leaves act1 to the caller (``NormAct1``: the block's
    norm2 applies it); its parameters stay here, under the same state_dict keys.

    The signature is timm's ``Mlp`` (``act_layer`` is accepted and ignored: the rationals are the
    activations), so ``functools.partial(GRKAN, act_init="gelu")`` is a valid ``mlp_layer``.

    ``linear_init`` picks what ``init_weights()`` (called by timm's model init) does to fc1/fc2:
    "variance" draws w ~ N(0, alpha / fan_in) with alpha the gain of the rational before the layer
    (the KAT paper's variance-preserving init); "trunc_normal" keeps timm's std 0.02, which is what
    the official code ended up using (its gain init was overwritten). ``skip_init=True`` leaves that
    to a later ``init_weights()`` call (timm's model init makes one), so the weights are drawn once.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 out_features: Optional[int] = None, act_layer=None, norm_layer=None, bias=True,
                 drop=0.0, use_conv: bool = False, act_init: InitSpec = "swish",
                 act1_init: InitSpec = "identity", groups: int = 8, order: tuple[int, int] = (5, 4),
                 shared_numerator: bool = True, linear_init: str = "variance", impl: str = "auto",
                 recompute_act1: bool = False, skip_init: bool = False, device=None, dtype=None):
        super().__init__()
        if use_conv:
            raise ValueError("GRKAN: use_conv=True is not supported; use channels-last tensors")
        if linear_init not in ("variance", "trunc_normal"):
            raise ValueError(f"GRKAN: linear_init must be 'variance' or 'trunc_normal', got {linear_init!r}")
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        bias = tuple(bias) if isinstance(bias, (tuple, list)) else (bias, bias)
        drop = tuple(drop) if isinstance(drop, (tuple, list)) else (drop, drop)
        factory = {"device": device, "dtype": dtype}
        rational = dict(groups=groups, order=order, shared_numerator=shared_numerator, impl=impl, **factory)
        self.linear_init, self.recompute_act1 = linear_init, recompute_act1
        self.apply_act1 = True
        # Registration order follows the official module so state_dict keys list in the same order.
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias[0], **factory)
        self.act1 = GroupRational(in_features, init=act1_init, **rational)
        self.drop1 = nn.Dropout(drop[0])
        self.norm = norm_layer(hidden_features, **factory) if norm_layer is not None else nn.Identity()
        self.act2 = GroupRational(hidden_features, init=act_init, **rational)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias[1], **factory)
        self.drop2 = nn.Dropout(drop[1])
        if not skip_init:  # a model that calls init_weights() itself passes skip_init (one draw, not two)
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise fc1/fc2 per ``linear_init`` (rational coefficients keep their init)."""
        for fc, act in ((self.fc1, self.act1), (self.fc2, self.act2)):
            if self.linear_init == "variance":
                nn.init.normal_(fc.weight, std=math.sqrt(act.init_gain() / fc.in_features))
            else:
                nn.init.trunc_normal_(fc.weight, std=0.02)
            if fc.bias is not None:
                nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules  # plain dict lookups: Module.__getattr__ is Python, and this runs every call
        if type(mods["norm"]) is nn.Identity and not (self.training and (mods["drop1"].p > 0 or mods["drop2"].p > 0)):
            fc1, fc2, act1, act2 = mods["fc1"]._parameters, mods["fc2"]._parameters, mods["act1"], mods["act2"]
            if act1.impl == act2.impl:
                p1, p2 = act1._parameters, act2._parameters
                try:
                    a1, b1 = (p1["weight_numerator"], p1["weight_denominator"]) if self.apply_act1 else (None, None)
                    a2, b2, w1, c1, w2, c2 = (p2["weight_numerator"], p2["weight_denominator"], fc1["weight"],
                                              fc1["bias"], fc2["weight"], fc2["bias"])
                except KeyError:  # a tensor under torch.nn.utils.parametrize is computed by its module
                    return self._modules_forward(x)
                out = grkan_mlp(x, a1, b1, w1, c1, a2, b2, w2, c2, impl=act2.impl,
                                recompute_act1=self.recompute_act1)
                if out is not None:
                    return out
        return self._modules_forward(x)

    def _modules_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP module by module (torch.compile, dropout, a norm, the CPU)."""
        if not self.apply_act1:  # x is already act1's output (NormAct1)
            x = self.drop2(self.act2(self.fc1(self.drop1(x))))
            return self.fc2(self.norm(x))
        x = _compute_dtype_input(x)
        if self.recompute_act1 and not (self.training and self.drop1.p > 0):
            x = rational_linear(x, self.act1.weight_numerator, self.act1.weight_denominator, self.fc1.weight,
                                self.fc1.bias, impl=self.act1.impl)
        else:
            x = self.fc1(self.drop1(self.act1(x)))
        x = self.drop2(self.act2(x))
        x = self.norm(x)
        return self.fc2(x)


class NormAct1(nn.LayerNorm):
    """A LayerNorm that also applies a GroupRational after it (``kat.ops.layernorm_rational``): a KAT
    block's norm2 with its GR-KAN's act1, which then starts at fc1 (``GRKAN(apply_act1=False)``;
    ``kat.KAT(fuse_norm_act1=True)`` wires both). Same parameters and state_dict keys as the
    LayerNorm it replaces; the rational's coefficients stay in the GR-KAN, which owns them. Under
    autocast the output is in the autocast dtype, as GR-KAN would cast act1's input."""

    def __init__(self, norm: nn.LayerNorm, act: GroupRational):
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
            raise ValueError("NormAct1: needs a LayerNorm with weight and bias")
        if not isinstance(act, GroupRational) or act.channel_dim != -1 \
                or (act.num_features,) != tuple(norm.normalized_shape):
            raise ValueError("NormAct1: needs a channels-last GroupRational of the norm's width")
        super().__init__(norm.normalized_shape, eps=norm.eps, device=norm.weight.device, dtype=norm.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(norm.weight)
            self.bias.copy_(norm.bias)
        self.__dict__["_act"] = act  # a reference, not a submodule: no second copy of its keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self._act
        return _norm_act1(x, self.weight, self.bias, self.eps, act.weight_numerator, act.weight_denominator,
                          act.impl)


def set_rational_impl(model: nn.Module, impl: str) -> nn.Module:
    """Set ``impl`` ("auto" | "torch" | "triton") on every GroupRational in ``model``; returns it."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    for m in model.modules():
        if isinstance(m, GroupRational):
            m.impl = impl
    return model


@contextlib.contextmanager
def reference_impl(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every GroupRational of ``model`` runs the PyTorch reference (module by
    module, so hooks on the rationals see every call)."""
    layers = [m for m in model.modules() if isinstance(m, GroupRational)]
    saved = [m.impl for m in layers]
    try:
        yield set_rational_impl(model, "torch")
    finally:
        for m, impl in zip(layers, saved):
            m.impl = impl
