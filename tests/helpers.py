"""Shared test helpers: an independent float64 evaluation of the group-rational formula."""
from __future__ import annotations

import torch


def formula64(x, a, b, go, channel_dim=-1):
    """y, dy/dx * go, and the coefficient gradients, written from DESIGN.md §1 in float64.

    Deliberately not the package's code: explicit powers, explicit derivative formulas.
    sign(t) is +1 at t = 0, as in the official kernels.
    """
    def sign(t):
        return torch.where(t < 0, -1.0, 1.0).double()

    x = x.detach().cpu().double().movedim(channel_dim, -1)
    go = go.detach().cpu().double().movedim(channel_dim, -1)
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    c, g = x.shape[-1], b.shape[0]
    grp = torch.arange(c) // (c // g)
    A = a[grp] if a.shape[0] == g else a.expand(c, -1)  # (C, m+1)
    B = b[grp]  # (C, n)
    m1, n = A.shape[1], B.shape[1]
    xs = x.unsqueeze(-1)
    pw = xs ** torch.arange(m1, dtype=torch.float64)  # (..., C, m+1)
    P = (pw * A).sum(-1)
    dP = (pw[..., :-1] * A[:, 1:] * torch.arange(1, m1, dtype=torch.float64)).sum(-1) if m1 > 1 else 0 * x
    ax = xs.abs()
    apw = ax ** torch.arange(1, n + 1, dtype=torch.float64)  # |x|^j, j = 1..n
    Q = 1 + (apw * B.abs()).sum(-1)
    dQ = sign(x) * (ax ** torch.arange(0, n, dtype=torch.float64) * B.abs()
                          * torch.arange(1, n + 1, dtype=torch.float64)).sum(-1)
    y = P / Q
    gx = go * (dP / Q - P * dQ / Q**2)
    ga_c = ((go / Q).unsqueeze(-1) * pw).reshape(-1, c, m1).sum(0)  # (C, m+1)
    gb_c = ((-go * P / Q**2).unsqueeze(-1) * apw).reshape(-1, c, n).sum(0) * sign(B)
    ga_g = ga_c.view(g, c // g, m1).sum(1)
    ga = ga_g.sum(0, keepdim=True) if a.shape[0] == 1 else ga_g
    gb = gb_c.view(g, c // g, n).sum(1)
    return y.movedim(-1, channel_dim), gx.movedim(-1, channel_dim), ga, gb


def rel_err(actual, expected) -> float:
    """Norm-relative error ||actual - expected|| / ||expected|| in float64."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()
