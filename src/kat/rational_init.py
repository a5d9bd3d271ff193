"""Initialising rational functions: coefficient fits to known activations, and variance gains.

Fits are made under the formula the op computes (``kat.ops.group_rational.reference``):
``F(x) = P(x) / (1 + sum_j |b_j| |x|^j)``. The official "gelu" coefficients were fitted to a
different formula and are off by up to 1.47 on [-3, 3] under this one.

Fit weighting: least squares on 2001 points of [-4, 4] with weight ``exp(-x^2 / 2) + 0.1``, i.e. the
N(0, 1) density (peak scaled to 1) that LayerNorm'd activations roughly follow, plus a floor so the
fit stays bounded out to |x| = 4. Fit error is reported as the max |F - f| on [-3, 3].

The variance-preserving gain (KAT paper, Sec. 4.3) is ``alpha = 1 / E[F(x)^2]`` for x ~ N(0, 1):
a linear layer after F with weights ~ N(0, alpha / fan_in) keeps unit output variance.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .ops.group_rational.reference import group_rational_reference
from .rational_presets import PRESETS

__all__ = ["ACTIVATIONS", "RationalFit", "fit_rational", "init_coefficients", "variance_gain",
           "activation_gain", "rational_function", "max_error", "PRESETS", "resolve_init"]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}
ALIASES = {"swish": "silu", "linear": "identity"}

InitSpec = Union[str, Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class RationalFit:
    numerator: tuple[float, ...]
    denominator: tuple[float, ...]
    max_abs_error: float  # max |F - f| on [-3, 3]


def resolve_init(init: InitSpec) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Map an init spec (name or callable) to (canonical name, function); ValueError if unknown."""
    if callable(init):
        return getattr(init, "__name__", "custom"), init
    if not isinstance(init, str):
        raise TypeError(f"init must be an activation name or a callable, got {type(init).__name__}")
    name = ALIASES.get(init.lower(), init.lower())
    if name not in ACTIVATIONS:
        known = sorted(set(ACTIVATIONS) | set(ALIASES))
        raise ValueError(f"unknown rational init {init!r}; choose one of {known} or pass a callable")
    return name, ACTIVATIONS[name]


def rational_function(x: torch.Tensor, numerator: Sequence[float] | torch.Tensor,
                      denominator: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Evaluate one rational (a single group) on x with the op's formula, in x's dtype."""
    a = torch.as_tensor(numerator, dtype=x.dtype, device=x.device).reshape(1, -1)
    b = torch.as_tensor(denominator, dtype=x.dtype, device=x.device).reshape(1, -1)
    return group_rational_reference(x.reshape(-1, 1), a, b).reshape(x.shape)


def max_error(numerator, denominator, target: Callable, interval=(-3.0, 3.0), points: int = 6001) -> float:
    x = torch.linspace(*interval, points, dtype=torch.float64, device="cpu")
    return (rational_function(x, numerator, denominator) - target(x)).abs().max().item()


def _sk_start(x, y, w, m, n, iters=30):
    """Sanathanan-Koerner iterations on the linearised problem P - y * Q = 0 (weighted by 1/Q_prev)."""
    a_pow = torch.stack([x**i for i in range(m + 1)], 1)
    b_pow = torch.stack([x.abs() ** (j + 1) for j in range(n)], 1)
    q_prev = torch.ones_like(x)
    for _ in range(iters):
        scale = (w.sqrt() / q_prev)[:, None]
        sol = torch.linalg.lstsq(torch.cat([a_pow, -y[:, None] * b_pow], 1) * scale,
                                 (y[:, None] * scale)).solution[:, 0]
        a, c = sol[: m + 1], sol[m + 1:]
        q_prev = (1 + b_pow @ c).clamp_min(1e-3)
    return a, c.abs()


def fit_rational(target: InitSpec, order: tuple[int, int] = (5, 4), *, interval=(-4.0, 4.0),
                 floor: float = 0.1, points: int = 2001, restarts: int = 4, max_iter: int = 1000,
                 seed: int = 0) -> RationalFit:
    """Least-squares fit of an (m, n) rational to ``target`` (a name or a callable on float64 tensors).

    Starts from a linearised (Sanathanan-Koerner) solution and a few perturbed copies, refines each
    with L-BFGS on the weighted squared error, and keeps the best.
    """
    _, fn = resolve_init(target)
    m, n = order
    if m < 0 or n < 1:
        raise ValueError(f"order must be (m >= 0, n >= 1), got {order}")
    x = torch.linspace(*interval, points, dtype=torch.float64, device="cpu")
    w = torch.exp(-x**2 / 2) + floor
    y = fn(x).to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    a0, b0 = _sk_start(x, y, w, m, n)
    starts = [(a0, b0)] + [(a0 + 0.05 * torch.randn(m + 1, generator=gen, dtype=torch.float64, device="cpu"),
                            b0 + 0.05 * torch.rand(n, generator=gen, dtype=torch.float64, device="cpu"))
                           for _ in range(restarts)]
    best = None
    for a_init, b_init in starts:
        a = a_init.clone().requires_grad_()
        b = b_init.clone().requires_grad_()
        opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-15,
                                tolerance_change=1e-18, history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (w * (rational_function(x, a, b) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        loss = closure().item()
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, a.detach().clone(), b.detach().abs().clone())
    if best is None:
        raise ValueError(f"could not fit a rational of order {order} to {target!r} (non-finite loss)")
    _, a, b = best
    return RationalFit(tuple(a.tolist()), tuple(b.tolist()), max_error(a, b, fn))


def init_coefficients(init: InitSpec, order: tuple[int, int] = (5, 4)) -> tuple[list[float], list[float]]:
    """Coefficients (numerator, denominator) approximating ``init``: a preset when one exists for
    this order, otherwise a fresh fit (a few seconds)."""
    name, _ = resolve_init(init)
    preset = PRESETS.get((name, tuple(order))) if isinstance(init, str) else None
    if preset is not None:
        return list(preset["numerator"]), list(preset["denominator"])
    if name == "identity":  # exact for every order: P = x, Q = 1
        return [0.0, 1.0] + [0.0] * (order[0] - 1), [0.0] * order[1]
    if isinstance(init, str):
        fit = _fit_named(name, tuple(order))
    else:
        fit = fit_rational(init, order)
    return list(fit.numerator), list(fit.denominator)


@functools.lru_cache(maxsize=None)
def _fit_named(name: str, order: tuple[int, int]) -> RationalFit:
    return fit_rational(name, order)


def _gain(fn: Callable[[torch.Tensor], torch.Tensor], nodes: int = 96) -> float:
    """1 / E[fn(x)^2], x ~ N(0, 1), by Gauss-Legendre quadrature on each half-line.

    Rationals (through |x|) and ReLU-like targets have a kink at 0, so each half-line is integrated
    separately over [0, 12] (the normal tail beyond 12 is below 1e-30).
    """
    t, wt = np.polynomial.legendre.leggauss(nodes)
    # Explicit CPU: models may be built under a meta/cuda default-device context.
    x = torch.tensor(6.0 * (t + 1.0), dtype=torch.float64, device="cpu")  # [-1, 1] -> [0, 12]
    w = torch.tensor(6.0 * wt, dtype=torch.float64, device="cpu")
    phi = torch.exp(-x**2 / 2) / math.sqrt(2 * math.pi)
    second_moment = (w * phi * (fn(x) ** 2 + fn(-x) ** 2)).sum().item()
    if not second_moment > 0:
        raise ValueError("variance gain: E[F(x)^2] is zero; the function is identically 0")
    return 1.0 / second_moment


def variance_gain(numerator, denominator) -> float:
    """alpha = 1 / E[F(x)^2] for the rational with these coefficients, x ~ N(0, 1)."""
    return _rational_gain(tuple(map(float, numerator)), tuple(map(float, denominator)))


@functools.lru_cache(maxsize=256)  # every GR-KAN of a model asks for the same few coefficient sets
def _rational_gain(numerator: tuple, denominator: tuple) -> float:
    return _gain(lambda x: rational_function(x, list(numerator), list(denominator)))


def activation_gain(init: InitSpec) -> float:
    """alpha = 1 / E[f(x)^2] for an activation itself (GELU: 2.3517, SiLU: 2.8108)."""
    return _gain(resolve_init(init)[1])
