"""kat-bench: speed of the group-rational op and of KAT beside timm's ViT, measured in one process.

    kat-bench op      x of shape (B, T, C): forward and forward+backward time per provider
                      (torch eager reference, torch.compile of the reference, kat's Triton kernels)
                      and the fraction of device copy bandwidth, measured in the same run.
    kat-bench flops   FLOPs and parameters of any timm model with and without GR-KAN (runs on the CPU;
                      ``--kanify`` converts a plain transformer's MLPs first).
    kat-bench model   train step (autocast, AdamW step included) and inference img/s, and peak
                      training memory, for KAT-T/S/B beside vit_{tiny,small,base}_patch16_224
                      (``--profile``: also host ms, GPU operations and GPU ms per step).

Both print a table and can write JSON (--json). Timings are medians of triton.testing.do_bench
(CUDA events) for the op, and CUDA-event-timed loops for models; in model mode (eager, compiled or
CUDA graphs) ViT and KAT stay resident and their loops alternate, so host-speed drift during the run
hits both, and each ratio is the median of the per-repeat KAT/ViT ratios. Needs a CUDA GPU
(``model --device cpu`` runs the same code on the CPU as a functional check).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import statistics
import time
from typing import Sequence

import torch

from .common import parse_kwargs
from .errors import ArgumentParser, add_debug_flag, run_cli, usage_phase

_log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def environment() -> dict:
    import timm
    env = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "timm": timm.__version__,
           "python": platform.python_version()}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written)."""
    from triton.testing import do_bench
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def bench_op(shape: Sequence[int], dtype: torch.dtype, providers: Sequence[str], copy_bw: float,
             cuda_graphs: bool = False) -> list[dict]:
    from triton.testing import do_bench

    import kat
    x = torch.randn(*shape, device="cuda", dtype=dtype).requires_grad_()
    a = (torch.randn(1, 6, device="cuda") * 0.3).requires_grad_()
    b = (torch.randn(8, 4, device="cuda") * 0.3).requires_grad_()
    go = torch.randn_like(x)
    eager = lambda t: kat.group_rational(t, a, b, impl="torch")  # noqa: E731
    fns = {"torch": eager, "compile": torch.compile(eager), "kat": lambda t: kat.group_rational(t, a, b, impl="triton")}
    elem = x.element_size() * x.numel()
    rows = []
    for name in providers:
        f = fns[name]

        def fwd():
            with torch.no_grad():
                f(x)

        def fwd_bwd():
            torch.autograd.grad(f(x), (x, a, b), go)

        fwd_bwd()  # compile / autotune outside the timed region
        t_f = do_bench(fwd, warmup=25, rep=200, return_mode="median")
        t_fb = do_bench(fwd_bwd, warmup=25, rep=200, return_mode="median")
        # fwd: read x, write y; bwd: read x and grad_out, write grad_x
        rows.append({"provider": name, "shape": list(shape), "dtype": str(dtype).split(".")[-1],
                     "fwd_ms": t_f, "fwd_bw_frac": 2 * elem / (t_f * 1e-3) / copy_bw,
                     "fwd_bwd_ms": t_fb, "fwd_bwd_bw_frac": 5 * elem / (t_fb * 1e-3) / copy_bw})
        if cuda_graphs:
            # The same calls replayed from CUDA graphs: the GPU's time without the host's (the
            # eager timings above include Python, autograd and launch costs where those dominate).
            g_f = do_bench(_graphed(fwd), warmup=25, rep=200, return_mode="median")
            g_fb = do_bench(_graphed(fwd_bwd), warmup=25, rep=200, return_mode="median")
            rows[-1].update({"graph_fwd_ms": g_f, "graph_fwd_bw_frac": 2 * elem / (g_f * 1e-3) / copy_bw,
                             "graph_fwd_bwd_ms": g_fb, "graph_fwd_bwd_bw_frac": 5 * elem / (g_fb * 1e-3) / copy_bw})
    return rows


def _time_loop(step, iters: int, warmup: int, device: str = "cuda") -> float:
    """Seconds per call of ``step``: CUDA events on a GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        step()
    if device != "cuda":
        t = time.perf_counter()
        for _ in range(iters):
            step()
        return (time.perf_counter() - t) / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def _graphed(step):
    """Capture ``step`` in a CUDA graph (after warm-up on a side stream) and return its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


class _ModelRun:
    """One model ready to be timed: its train step (autocast forward, backward, AdamW step) and
    inference step, optionally compiled or replayed from CUDA graphs, and its peak training memory
    (measured over the warm-up steps: what this model adds to the device's allocated bytes, so the
    other model of a pair, resident at the same time, does not count)."""

    def __init__(self, name: str, batch: int, infer_batch: int, dtype: torch.dtype, compile_: str | None,
                 warmup: int, cuda_graphs: bool = False, kat_kwargs=None, device: str = "cuda", img_size=None):
        import timm

        import kat  # noqa: F401
        self.name, self.batch, self.infer_batch, self.device = name, batch, infer_batch, device
        cuda = device == "cuda"
        torch.manual_seed(0)
        base = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        kw = dict(kat_kwargs) if name.startswith("kat_") and kat_kwargs else {}
        if img_size:
            kw["img_size"] = img_size
        self.model = model = timm.create_model(name, **kw).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda, capturable=cuda_graphs)
        # static shapes: the train and inference batches differ
        run = torch.compile(model, mode=compile_, dynamic=False) if compile_ else model
        size = img_size or 224
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, model.num_classes, (batch,), device=device)
        loss_fn = torch.nn.CrossEntropyLoss()

        def train_step():
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                loss = loss_fn(run(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=not cuda_graphs)

        model.train()
        if cuda_graphs:
            opt.zero_grad(set_to_none=False)  # graphs need grads allocated outside the capture
            train_step = _graphed(train_step)
        for _ in range(warmup):
            train_step()
        if cuda:
            torch.cuda.synchronize()
        self.peak = (torch.cuda.max_memory_allocated() - base) if cuda else None  # no CPU counter
        xi = torch.randn(infer_batch, 3, size, size, device=device)  # after the memory reading

        def infer_step():
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                run(xi)

        if cuda_graphs:
            model.eval()
            infer_step = _graphed(infer_step)
        elif compile_:  # compile the inference graph now, not in the first timed loop
            model.eval()
            infer_step()
            model.train()
        self.train_step, self.infer_step = train_step, infer_step
        self.train_times: list[float] = []
        self.infer_times: list[float] = []
        self.profiled: dict = {}

    def _step(self, phase: str):
        self.model.train(phase == "train")
        return self.train_step if phase == "train" else self.infer_step

    def time(self, phase: str, iters: int, warmup: int) -> None:
        getattr(self, f"{phase}_times").append(_time_loop(self._step(phase), iters, warmup, self.device))

    def profile(self, phase: str, iters: int) -> None:
        """Host time of one step started on an idle device (median of ``iters``; with the host the
        bottleneck, it is at least the step's share of the timed loops), and the GPU operations
        (kernels, memsets, copies) one step runs and their summed durations, from torch.profiler
        (None off CUDA). GPU ms well below the loop's ms per step: the step is bound by the host."""
        step = self._step(phase)
        cuda = self.device == "cuda"
        host = []
        for _ in range(iters):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            step()
            host.append(time.perf_counter() - t)
        ops = gpu_ms = None
        if cuda:
            from torch.profiler import ProfilerActivity, profile
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            ops, gpu_ms = len(events), sum(e.device_time_total for e in events) / 1e3
        self.profiled[phase] = {"host_ms": 1e3 * statistics.median(host), "gpu_ops": ops, "gpu_ms": gpu_ms}

    def result(self) -> dict:
        return {"model": self.name, "profile": self.profiled,
                "train_img_s": self.batch / statistics.median(self.train_times),
                "infer_img_s": self.infer_batch / statistics.median(self.infer_times),
                "peak_train_mem_gib": None if self.peak is None else self.peak / 2**30,
                "train_img_s_runs": [self.batch / t for t in self.train_times],
                "infer_img_s_runs": [self.infer_batch / t for t in self.infer_times]}


def bench_pair(size: str, batch: int, infer_batch: int, dtype: torch.dtype, compile_: str | None, iters: int,
               warmup: int, repeats: int, cuda_graphs: bool = False, kat_kwargs=None, device: str = "cuda",
               img_size=None, profile: bool = False) -> dict:
    """ViT and KAT of one size. Both models stay resident and their timing loops alternate (ViT, KAT,
    ViT, KAT, ...), so a drift of the host's speed during the run hits both alike; the ratio is the
    median of the per-repeat ratios. ``profile``: then each model's host time and GPU operations per
    step (``_ModelRun.profile``)."""
    names = [f"{fam}_{size}_patch16_224" for fam in ("vit", "kat")]
    with _dynamo_room(compile_):
        runs = [_ModelRun(name, batch, infer_batch, dtype, compile_, warmup, cuda_graphs, kat_kwargs, device,
                          img_size) for name in names]
        for phase in ("train", "infer"):
            for _ in range(repeats):
                for run in runs:
                    run.time(phase, iters, 2)
            if profile:
                for run in runs:
                    run.profile(phase, iters)
    vit, kt = (r.result() for r in runs)
    row = {"size": size, "vit": vit, "kat": kt}
    for phase in ("train", "infer"):
        paired = [k / v for k, v in zip(kt[f"{phase}_img_s_runs"], vit[f"{phase}_img_s_runs"])]
        row[f"{phase}_ratio_runs"] = paired
        row[f"{phase}_ratio"] = statistics.median(paired)
    row["mem_ratio"] = (kt["peak_train_mem_gib"] / vit["peak_train_mem_gib"]
                        if vit["peak_train_mem_gib"] is not None else None)
    return row


@contextlib.contextmanager
def _dynamo_room(compile_: str | None):
    """For a compiled pair: Dynamo's graphs of earlier pairs dropped, and room for both models' train
    and inference graphs. Every timm ViT (KAT too) runs VisionTransformer.forward, and Dynamo caches
    graphs per code object: at its default limit (8) a model compiled after others silently runs eager."""
    if not compile_:
        yield
        return
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch({limit: 64}):
            yield
    finally:
        torch._dynamo.reset()


def _ms(value) -> str:
    return "n/a" if value is None else "%.2f" % value


def flops_rows(models: Sequence[str], kanify: bool, input_size=None, model_kwargs=None) -> list[dict]:
    """FLOPs and parameters of each model; ``input_size`` (C, H, W) also builds the model for that
    size (in_chans, img_size), unless ``model_kwargs`` set those."""
    import kat
    from kat.flops import flops_report
    from .common import create_model
    kwargs = dict(model_kwargs or {})
    if input_size:
        kwargs.setdefault("in_chans", input_size[0])
        kwargs.setdefault("img_size", tuple(input_size[1:]))
    rows = []
    for name in models:
        try:
            model = create_model(name, None, kwargs)
        except TypeError:  # a model without img_size (a CNN): input_size only sets the input
            model = create_model(name, None, {k: v for k, v in kwargs.items() if k != "img_size"})
        size = tuple(input_size or model.pretrained_cfg.get("input_size", (3, 224, 224)))
        if kanify:
            model, rep = kat.kanify(model)
            _log.info("%s: %s", name, str(rep).splitlines()[0])
        r = flops_report(model, size)
        _log.info("%-32s %s", name, r)
        rows.append({"model": name, "kanified": kanify, **r.as_dict()})
    return rows


def _kat_kwargs(args) -> dict:
    kw = {"recompute_act1": True} if args.recompute_act1 else {}
    if args.fuse_norm_act1:
        kw["fuse_norm_act1"] = True
    if args.rational_impl:
        kw["rational_impl"] = args.rational_impl
    return kw


def cli(argv=None) -> int:
    """The kat-bench console script: errors as one line (``--debug``: the traceback)."""
    return run_cli("kat-bench", main, argv)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="kat-bench", description="Speed of the group-rational op and of KAT beside timm's "
                                                          "ViT, measured in one process; FLOPs and parameters.")
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="mode", required=True, help="what to measure")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    o = sub.add_parser("op", help="group-rational op: time and bandwidth fraction", formatter_class=fmt)
    o.add_argument("--channels", type=int, nargs="+", default=[192, 768, 3072], help="C of x (B, T, C), one row each")
    o.add_argument("--batch", type=int, default=128, help="B")
    o.add_argument("--tokens", type=int, default=197, help="T")
    o.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES), help="x's dtypes")
    o.add_argument("--providers", nargs="+", default=["torch", "compile", "kat"], choices=["torch", "compile", "kat"],
                   help="torch: the PyTorch reference; compile: torch.compile of it; kat: the Triton kernels")
    o.add_argument("--cuda-graphs", action="store_true",
                   help="also time each call replayed from a CUDA graph (GPU time without host overhead)")
    m = sub.add_parser("model", help="KAT vs ViT train/inference throughput", formatter_class=fmt)
    m.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"], choices=["tiny", "small", "base"],
                   help="model sizes, each KAT beside the ViT of its size")
    m.add_argument("--batch", type=int, default=128, help="training batch")
    m.add_argument("--infer-batch", type=int, default=256, help="inference batch")
    m.add_argument("--dtype", default="bf16", choices=list(DTYPES), help="autocast dtype (fp32: no autocast)")
    m.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile both models with this mode (bare --compile: default)")
    m.add_argument("--cuda-graphs", action="store_true", help="replay each step as a CUDA graph (no host overhead)")
    m.add_argument("--recompute-act1", action="store_true",
                   help="KAT: recompute act1's output in backward (kat.ops.grkan_mlp.rational_linear) to save memory")
    m.add_argument("--fuse-norm-act1", action="store_true",
                   help="KAT: norm2 and act1 as one kernel, forward and backward (kat.layers.NormAct1)")
    m.add_argument("--rational-impl", default=None, choices=["auto", "torch", "triton"],
                   help="KAT: the rational op's implementation (e.g. 'torch' lets torch.compile fuse it)")
    m.add_argument("--profile", action="store_true",
                   help="also report each model's host ms, GPU operations (kernels, copies) and GPU ms per step")
    m.add_argument("--iters", type=int, default=20, help="timed steps per repeat")
    m.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    m.add_argument("--repeats", type=int, default=3, help="alternating KAT/ViT repeats; ratios are their medians")
    m.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a functional check of the benchmark itself (wall-clock times, no memory)")
    m.add_argument("--img-size", type=int, default=None, help="input resolution (default 224; small for --device cpu)")
    f = sub.add_parser("flops", help="FLOPs/params with and without GR-KAN (CPU is fine)", formatter_class=fmt)
    f.add_argument("--models", nargs="+", default=["kat_tiny_patch16_224", "kat_small_patch16_224",
                                                   "kat_base_patch16_224"], help="timm model names")
    f.add_argument("--kanify", action="store_true", help="convert plain transformers' MLPs with kat.kanify first")
    f.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="input size; the model is built for it (default: the model's)")
    f.add_argument("--model-kwargs", default=None, type=parse_kwargs,
                   help="passed to timm.create_model, e.g. 'img_size=28,patch_size=4,embed_dim=64'")
    for p in (o, m, f):
        p.add_argument("--json", default=None, help="write results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.mode == "flops":
        with usage_phase():
            rows = flops_rows(args.models, args.kanify, args.input_size, args.model_kwargs)
        result = {"env": environment(), "mode": "flops", "rows": rows}
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
        return 0
    if not (args.mode == "model" and args.device == "cpu") and not torch.cuda.is_available():
        parser.error("kat-bench needs a CUDA GPU (model mode also runs with --device cpu, as a check)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result = {"env": environment(), "mode": args.mode, "args": vars(args)}
    if args.mode == "op":
        bw = copy_bandwidth()
        result["copy_bandwidth_gb_s"] = bw / 1e9
        _log.info("copy bandwidth %.0f GB/s", bw / 1e9)
        rows = []
        for dt in args.dtypes:
            for c in args.channels:
                rows += bench_op((args.batch, args.tokens, c), DTYPES[dt], args.providers, bw, args.cuda_graphs)
                # what a plain copy of x's size reaches (a short copy pays launch and ramp costs the
                # 2 GB reference copy does not): the op's fractions read against this too
                nbytes = args.batch * args.tokens * c * DTYPES[dt].itemsize
                size_frac = copy_bandwidth(nbytes) / bw
                _log.info("copy of x's %.1f MB alone: %.0f%% of the reference copy bandwidth", nbytes / 1e6,
                          100 * size_frac)
                for r in rows[-len(args.providers):]:
                    r["same_size_copy_bw_frac"] = size_frac
                    line = "%-8s %-5s C=%-5d fwd %.4f ms (%3.0f%%)  fwd+bwd %.4f ms (%3.0f%%)" % (
                        r["provider"], dt, c, r["fwd_ms"], 100 * r["fwd_bw_frac"], r["fwd_bwd_ms"],
                        100 * r["fwd_bwd_bw_frac"])
                    if args.cuda_graphs:
                        line += " | graphs: fwd %.4f ms (%3.0f%%)  fwd+bwd %.4f ms (%3.0f%%)" % (
                            r["graph_fwd_ms"], 100 * r["graph_fwd_bw_frac"], r["graph_fwd_bwd_ms"],
                            100 * r["graph_fwd_bwd_bw_frac"])
                    _log.info("%s", line)
        result["rows"] = rows
    else:
        rows = []
        for size in args.sizes:
            r = bench_pair(size, args.batch, args.infer_batch, DTYPES[args.dtype], args.compile, args.iters,
                           args.warmup, args.repeats, args.cuda_graphs, _kat_kwargs(args), args.device,
                           args.img_size, args.profile)
            rows.append(r)
            vit, kt = r["vit"], r["kat"]
            mem = ("mem ViT %.2f KAT %.2f GiB (x%.3f)" % (vit["peak_train_mem_gib"], kt["peak_train_mem_gib"],
                                                          r["mem_ratio"]) if r["mem_ratio"] is not None else "mem n/a")
            _log.info("%-5s train ViT %7.0f KAT %7.0f img/s (x%.3f) | infer ViT %7.0f KAT %7.0f (x%.3f) | %s",
                      size, vit["train_img_s"], kt["train_img_s"], r["train_ratio"], vit["infer_img_s"],
                      kt["infer_img_s"], r["infer_ratio"], mem)
            for phase, p in kt["profile"].items():
                v = vit["profile"][phase]
                _log.info("%-5s %-5s host ms/step ViT %.2f KAT %.2f | GPU ops/step ViT %s KAT %s | GPU ms/step "
                          "ViT %s KAT %s", size, phase, v["host_ms"], p["host_ms"], v["gpu_ops"], p["gpu_ops"],
                          _ms(v["gpu_ms"]), _ms(p["gpu_ms"]))
            if args.device == "cuda":
                torch.cuda.empty_cache()
        result["rows"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
