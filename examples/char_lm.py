"""GR-KAN in a language-model block: a small character-level transformer, KAT MLP vs GELU MLP.

The text is bundled with every Python: the source of a few standard-library modules. Both models
share everything (data order, initial attention/embedding weights from the same seed, optimiser)
except the MLP: timm's ``Mlp`` with GELU, or ``kat.GRKAN`` (act1 identity, act2 swish) on the same
``(B, T, C)`` activations. Runs on the CPU in about a minute:

    python examples/char_lm.py                  # 300 steps each
    python examples/char_lm.py --steps 1000 --dim 128 --layers 4
"""
from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import kat
from timm.layers import Mlp

MODULES = ("textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py",
           "colorsys.py", "keyword.py", "queue.py", "sched.py", "calendar.py")


def load_text(modules=MODULES) -> str:
    """Concatenated source of some standard-library modules (those that exist in this Python)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = [(root / m).read_text(encoding="utf-8", errors="replace") for m in modules if (root / m).is_file()]
    if not parts:
        raise FileNotFoundError(f"none of {modules} found under {root}")
    return "\n".join(parts)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: nn.Module):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.heads, self.mlp = heads, mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))  # the MLP sees (B, T, C)


class CharLM(nn.Module):
    def __init__(self, vocab: int, context: int, dim: int, layers: int, heads: int, mlp: str):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Parameter(torch.zeros(1, context, dim))
        make = {"gelu": lambda: Mlp(dim, 4 * dim, act_layer=nn.GELU),
                "kat": lambda: kat.GRKAN(dim, 4 * dim, act_init="swish", act1_init="identity")}[mlp]
        self.blocks = nn.ModuleList(Block(dim, heads, make()) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos[:, :idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


def batches(data: torch.Tensor, batch: int, context: int, gen: torch.Generator):
    while True:
        i = torch.randint(0, len(data) - context - 1, (batch,), generator=gen)
        rows = torch.stack([data[j:j + context + 1] for j in i.tolist()])
        yield rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, context: int, batches_: int = 20) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(1234)  # the same held-out windows for every model
    it = batches(data, 64, context, gen)
    losses = []
    for _ in range(batches_):
        x, y = next(it)
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def train_one(mlp: str, train: torch.Tensor, val: torch.Tensor, vocab: int, args) -> dict:
    torch.manual_seed(args.seed)
    model = CharLM(vocab, args.context, args.dim, args.layers, args.heads, mlp)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    it = batches(train, args.batch, args.context, torch.Generator().manual_seed(args.seed))
    start = evaluate(model, val, args.context)
    t0 = time.time()
    for step in range(args.steps):
        x, y = next(it)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{mlp}: non-finite loss at step {step}")
    return {"mlp": mlp, "parameters": sum(p.numel() for p in model.parameters()), "val_loss_start": start,
            "train_loss_last": loss.item(), "val_loss": evaluate(model, val, args.context),
            "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    text = load_text()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    print(f"text: {len(text):,} characters of stdlib source, vocabulary {len(chars)}; "
          f"{args.steps} steps of {args.batch}x{args.context} tokens per model")
    results = [train_one(mlp, train, val, len(chars), args) for mlp in ("gelu", "kat")]
    for r in results:
        print(f"{r['mlp']:>4} MLP: {r['parameters']:,} parameters, held-out loss {r['val_loss_start']:.3f} -> "
              f"{r['val_loss']:.3f} nats/char ({r['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
