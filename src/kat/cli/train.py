"""kat-train: train KAT (or any timm model) with the KAT paper's DeiT-style recipe, built from timm's
pieces. With no arguments it trains a small KAT on scikit-learn's bundled digits on the CPU and prints
the test accuracy. Scale out with torchrun (DDP: NCCL on GPUs, gloo on CPUs):

    kat-train                                              # embedded default, offline
    kat-train -c configs/fashion_mnist_kat.yaml            # Fashion-MNIST from Debian's package
    torchrun --nproc_per_node=8 -m kat.cli.train -c configs/kat_tiny_in1k.yaml --data-dir /imagenet

``--batch-size`` is per process; the global batch is batch-size x processes. ``--lr`` is used as given
unless ``--lr-base-batch B`` is set, in which case it is scaled by global_batch / B (the paper: lr 1e-3
at global batch 1024).
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .common import (DistInfo, SkipLog, all_gather_names, amp_dtype, build_eval_data, create_model,
                     dump_json, eval_loader, evaluate, load_checkpoint_file, load_weights, model_weights,
                     parse_kwargs, parse_with_config, resolve_data_args, save_atomic, setup_distributed,
                     synthetic_from_args)
from .errors import ArgumentParser, add_debug_flag, run_cli, usage_phase
from .train_utils import (_fmt_time, _plain, _raise_if_nonfinite, _tensorboard,
                          _write_csv, all_mean, optimizer_kwargs)

_log = logging.getLogger("kat")

# The embedded default: 8x8 digits -> 16 patches of 2x2; 0.2M parameters. 100 epochs gave 96.1% test
# accuracy on a 2-core CPU in 2 min 20 s (fresh clone, measured 2026-11-29).
DIGITS_MODEL_KWARGS = {"patch_size": 2, "embed_dim": 64, "depth": 4, "num_heads": 4, "drop_path_rate": 0.1}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="kat-train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train KAT (or any timm model) with the KAT paper's DeiT-style recipe. With no "
                                   "arguments: a small KAT on scikit-learn's bundled digits, on the CPU, printing "
                                   "the test accuracy. Your own images: --data-dir DIR (DIR/train/CLASS/*.png, "
                                   "DIR/val/CLASS/*.png), e.g. with -c configs/image_folder_cpu.yaml.")
    p.add_argument("-c", "--config", default=None, help="YAML recipe; command-line flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help="digits | fashion-mnist | synthetic (random images, for speed runs) | an image-folder root "
                        "(default: the --data-dir folder if given, else digits)")
    g.add_argument("--synthetic-size", type=int, default=12800, help="training images per epoch of --dataset synthetic")
    g.add_argument("--synthetic-on-device", action="store_true",
                   help="--dataset synthetic: keep its images on the training device and index batches there "
                        "(no host data pipeline; measures the model and the all-reduce, not data loading)")
    g.add_argument("--data-dir", default=None,
                   help="your image folder (DIR/train/CLASS/*, DIR/val/CLASS/*), or Fashion-MNIST's idx folder "
                        "with --dataset fashion-mnist")
    g.add_argument("--train-split", default="train", help="image folders: the training subfolder")
    g.add_argument("--val-split", default="validation",
                   help="image folders: the evaluation subfolder (validation also finds val/, valid/, eval/)")
    g.add_argument("--split-seed", type=int, default=0, help="train/test split of the digits set")
    g.add_argument("--workers", type=int, default=0, help="data-loading worker processes (0: in this process)")
    g.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable images instead of stopping; they are listed in result.json and left out "
                        "of the test accuracy")
    g.add_argument("--no-shuffle", action="store_true", help="keep the dataset order (for reproducibility checks)")
    g.add_argument("--no-augment", action="store_true", help="no train-time augmentation (embedded datasets)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="kat_tiny_patch16_224", help="a timm model name (kat_* or any other)")
    g.add_argument("--model-kwargs", default=argparse.SUPPRESS, type=parse_kwargs,
                   help="passed to timm.create_model: '{img_size: 32, patch_size: 4}' or 'img_size=32,patch_size=4' "
                        f"(default: {DIGITS_MODEL_KWARGS} for --dataset digits, else none)")
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (default: the model's)")
    g.add_argument("--initial-checkpoint", default=None, help="start from these weights")
    g.add_argument("--from-vit", default=None, help="start a KAT from a ViT: a timm model name or a weights file")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100, help="training epochs")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many updates (smoke tests)")
    g.add_argument("-b", "--batch-size", type=int, default=64, help="per process")
    g.add_argument("--opt", default="adamw", help="optimizer, by timm's create_optimizer_v2 name")
    g.add_argument("--fused-opt", default="auto", choices=["auto", "off"],
                   help="auto: Adam/AdamW run as PyTorch's fused kernel on CUDA (one launch for all "
                        "parameters instead of several multi-tensor ones: less host time per step; same "
                        "state, so checkpoints resume either way); off: PyTorch's default implementation")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (after warm-up)")
    g.add_argument("--lr-base-batch", type=int, default=None, help="scale lr by global_batch / this")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    g.add_argument("--sched", default="cosine", help="learning-rate schedule, by timm's create_scheduler_v2 name")
    g.add_argument("--warmup-epochs", type=float, default=3,
                   help="epochs of linear warm-up from --warmup-lr to --lr (a warning if the run is not longer)")
    g.add_argument("--warmup-lr", type=float, default=1e-6, help="learning rate at the first step")
    g.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the schedule")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradients' global norm to this")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    g.add_argument("--aa", default=None, help="RandAugment spec for folder datasets, e.g. rand-m9-mstd0.5")
    g.add_argument("--reprob", type=float, default=0.0, help="random-erasing probability (folder datasets)")
    g.add_argument("--prefetcher", choices=["auto", "on", "off"], default="auto",
                   help="folder datasets: workers hand over uint8 images, normalised (and randomly erased) on "
                        "the device by timm's PrefetchLoader, 4x less data through the workers' shared memory "
                        "and the host-to-device copy than float images (auto: on for CUDA)")
    g.add_argument("--remode", default="pixel", help="random-erasing mode")
    g.add_argument("--model-ema", action="store_true", help="keep (and evaluate) an EMA of the weights")
    g.add_argument("--model-ema-decay", type=float, default=0.9999, help="EMA decay per step")
    g.add_argument("--amp", default="none", choices=["none", "auto", "bf16", "fp16"],
                   help="autocast dtype; auto: bf16 on a GPU, none (fp32) on the CPU, where bf16 autocast is "
                        "several times slower")
    g.add_argument("--skip-nonfinite", action="store_true", help="skip (and count) steps with NaN/Inf loss")
    g.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile the training model with this mode (bare --compile: default); "
                        "'reduce-overhead' replays CUDA graphs, which removes the per-op host cost that "
                        "holds back small models in eager mode. Checkpoints and evaluation use the "
                        "uncompiled module, so checkpoints are the same either way")
    g = p.add_argument_group("run")
    g.add_argument("--output", default="output/train", help="checkpoints, logs and the resolved config")
    g.add_argument("--resume", default=None, help="continue from a checkpoint (e.g. OUTPUT/last.pth)")
    g.add_argument("--seed", type=int, default=0, help="seeds weights, data order and augmentation")
    g.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu or cuda")
    g.add_argument("--dist-timeout", type=float, default=600,
                   help="seconds a rank waits in a collective before failing (a peer died or hangs)")
    g.add_argument("--ddp-bucket-mb", type=float, default=25,
                   help="DDP all-reduce bucket size in MiB (PyTorch's default 25)")
    g.add_argument("--ddp-static-graph", action="store_true",
                   help="DDP static_graph=True: the same parameters get gradients every step (true for KAT "
                        "and ViT), which lets DDP skip per-step bookkeeping")
    g.add_argument("--log-interval", type=int, default=20,
                   help="log every this many steps (and after the first step, and at least every 30 s)")
    g.add_argument("--eval-interval", type=int, default=1, help="evaluate every N epochs (and at the end)")
    g.add_argument("--save-safetensors", action="store_true", help="also export final weights as safetensors")
    g.add_argument("--tensorboard", action="store_true", help="write TensorBoard scalars (if installed)")
    add_debug_flag(p)
    return p


def build_train_loader(args, d: DistInfo, skip_log=None):
    """(loader, sampler, DatasetInfo, mixup_fn) for training."""
    from torch.utils.data import DataLoader, DistributedSampler

    from ..data import EMBEDDED, embedded_dataset
    if args.dataset in EMBEDDED or args.dataset == "synthetic":
        train, _, info = synthetic_from_args(args) if args.dataset == "synthetic" else embedded_dataset(
            args.dataset, args.data_dir, args.split_seed, augment=not args.no_augment)
        shuffle = not args.no_shuffle
        sampler = DistributedSampler(train, d.world, d.rank, shuffle=shuffle, seed=args.seed) if d.world > 1 else None
        if args.synthetic_on_device and args.dataset == "synthetic":
            from ..data import device_synthetic_loader
            loader = device_synthetic_loader(train, d.device, args.batch_size, sampler=sampler,
                                             shuffle=shuffle and sampler is None, generator=torch.Generator())
            return loader, sampler, info, _mixup(args, info)
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                            drop_last=True, num_workers=args.workers, generator=torch.Generator(),
                            pin_memory=d.device.type == "cuda")  # no persistent workers: each epoch's
        # iterator draws the workers' seeds from the reseeded generator, which makes resumes exact
    else:
        import timm.data
        ds, info = build_eval_data(args, dist_info=d, train=True, skip_log=skip_log)
        ds.transform = None  # timm's create_loader sets the training transform
        loader = timm.data.create_loader(
            ds, input_size=info.input_size, batch_size=args.batch_size, is_training=True,
            no_aug=False, re_prob=args.reprob, re_mode=args.remode, auto_augment=args.aa,
            interpolation="bicubic", mean=info.mean, std=info.std, num_workers=args.workers,
            distributed=d.world > 1, device=d.device,
            use_prefetcher=args.prefetcher == "on" or (args.prefetcher == "auto" and d.device.type == "cuda"))
        sampler = getattr(loader, "sampler", None)
    return loader, sampler, info, _mixup(args, info)


def _mixup(args, info):
    if args.mixup > 0 or args.cutmix > 0:
        from timm.data import Mixup
        return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                     num_classes=info.num_classes)
    return None


def _model(args, info):
    extra = {} if args.drop_path is None else {"drop_path_rate": args.drop_path}
    if args.from_vit:
        import kat
        src = args.from_vit
        if not Path(src).exists():  # a timm model name: its pretrained weights (hub download)
            import timm
            src = timm.create_model(src, pretrained=True, num_classes=info.num_classes)
        # The ViT's weights fix every shape but the head count; KAT-only options may come along.
        mk = dict(args.model_kwargs)
        kat_opts = {k: mk[k] for k in ("act_init", "act1_init", "rational_groups", "rational_order",
                                       "rational_impl", "drop_path_rate") if k in mk}
        return kat.from_vit(src, num_heads=mk.get("num_heads"), **{**kat_opts, **extra})
    model = create_model(args.model, info, args.model_kwargs, **extra)
    if args.initial_checkpoint:
        load_weights(model, model_weights(load_checkpoint_file(args.initial_checkpoint)), args.initial_checkpoint)
    return model


def check_args(args) -> None:
    """Values argparse cannot check alone; a ValueError names the option."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.lr <= 0 or args.warmup_epochs < 0:
        raise ValueError("--lr must be positive and --warmup-epochs not negative")
    if args.log_interval < 1 or args.eval_interval < 1 or args.workers < 0:
        raise ValueError("--log-interval and --eval-interval must be at least 1, --workers at least 0")


def _warn_inapplicable(args, device: torch.device) -> None:
    """Options given that the chosen data cannot use: said, not silently dropped."""
    from ..data import EMBEDDED
    folder = args.dataset not in (*EMBEDDED, "synthetic")
    unused = [f for f, on in (("--no-augment", folder and args.no_augment),
                              ("--split-seed", args.dataset != "digits" and args.split_seed != 0),
                              ("--synthetic-on-device", args.dataset != "synthetic" and args.synthetic_on_device),
                              ("--aa", not folder and args.aa), ("--reprob", not folder and args.reprob > 0),
                              ("--train-split", not folder and args.train_split != "train"),
                              ("--val-split", not folder and args.val_split != "validation"),
                              ("--skip-corrupt", not folder and args.skip_corrupt)) if on]
    if unused:
        _log.warning("%s: no effect with --dataset %s", ", ".join(unused), args.dataset)
    if folder and device.type == "cpu" and "img_size" not in args.model_kwargs:
        _log.warning("training %s at its full input size (224x224 for kat_*) on the CPU: a few images per "
                     "second. For small images use -c configs/image_folder_cpu.yaml (32x32) or "
                     "--model-kwargs 'img_size=64,patch_size=8'", args.model)


def _warn_warmup(args, steps_per_epoch: int) -> None:
    run_steps = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps,
                                                                                 args.epochs * steps_per_epoch)
    warm_steps = args.warmup_epochs * steps_per_epoch
    if args.warmup_epochs > 0 and warm_steps >= run_steps:
        _log.warning("warm-up (%g epochs, %d steps) is not shorter than the run (%d steps): the learning rate "
                     "never reaches --lr %g; lower --warmup-epochs", args.warmup_epochs, warm_steps, run_steps,
                     args.lr)


def cli(argv=None) -> int:
    """The kat-train console script: errors as one line (``--debug``: the traceback)."""
    return run_cli("kat-train", main, argv)


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    with usage_phase():
        check_args(args)
        resolve_data_args(args)
    if getattr(args, "model_kwargs", None) is None:  # the small digits model where it fits: the 8x8 digits
        args.model_kwargs = dict(DIGITS_MODEL_KWARGS) if args.dataset == "digits" else {}
    d = setup_distributed(args.device, timeout_s=args.dist_timeout)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {d.rank}] %(message)s", datefmt="%H:%M:%S")
    _log.info("rank %d of %d started on %s", d.rank, d.world, d.device)
    if d.is_main:
        _warn_inapplicable(args, d.device)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    skip_log = SkipLog() if args.skip_corrupt else None
    try:
        return _train(args, d, out, skip_log)
    finally:
        if skip_log is not None:
            skip_log.close()


def _train(args, d: DistInfo, out: Path, skip_log) -> int:
    with usage_phase():
        loader, sampler, info, mixup = build_train_loader(args, d, skip_log)
        test_set, _ = build_eval_data(args, dist_info=d, skip_log=skip_log)
        test_loader = eval_loader(test_set, args.batch_size * 2, args.workers, d)
        model = _model(args, info).to(d.device)
    if d.is_main:  # after the set-up: a run that cannot start leaves no output folder
        out.mkdir(parents=True, exist_ok=True)
        import yaml
        (out / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in vars(args).items()}, sort_keys=False))
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    n_params = sum(p.numel() for p in model.parameters())
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    global_batch = args.batch_size * d.world
    lr = args.lr * global_batch / args.lr_base_batch if args.lr_base_batch else args.lr
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    **optimizer_kwargs(args.opt, d.device.type, args.fused_opt))
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        with usage_phase():
            raise ValueError(f"{info.name}: {len(loader.dataset)} training images make no full batch of "
                             f"{args.batch_size}; lower --batch-size")
    if d.is_main:
        _warn_warmup(args, steps_per_epoch)
    scheduler, _ = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=args.epochs,
                                       warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                                       min_lr=args.min_lr, updates_per_epoch=steps_per_epoch)
    start_epoch, best = 0, {"top1": -1.0}
    if args.resume:
        with usage_phase():  # a missing file, or a checkpoint of another model or run
            ck = load_checkpoint_file(args.resume)
            if "optimizer" not in ck or "scheduler" not in ck:
                raise ValueError(f"--resume {args.resume}: not a kat-train checkpoint (no optimizer state); "
                                 "to start from its weights use --initial-checkpoint")
            load_weights(model, ck["state_dict"], args.resume)
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            if ema is not None and "state_dict_ema" in ck:
                ema.module.load_state_dict(ck["state_dict_ema"])
        start_epoch, best = ck["epoch"] + 1, ck.get("best", best)
        if d.is_main:
            _log.info("resumed from %s: continuing at epoch %d", args.resume, start_epoch)
    # gradient_as_bucket_view: gradients live in DDP's all-reduce buckets (no copy in or out of them)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
        gradient_as_bucket_view=True, bucket_cap_mb=args.ddp_bucket_mb,
        static_graph=args.ddp_static_graph) if d.world > 1 else model
    if args.compile:
        ddp = torch.compile(ddp, mode=args.compile)
    criterion = SoftTargetCrossEntropy() if mixup else (
        LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing > 0 else torch.nn.CrossEntropyLoss())
    dtype = amp_dtype(args.amp, d.device)
    if dtype is not None and d.device.type == "cpu" and d.is_main:
        _log.warning("--amp %s on the CPU: autocast there is usually several times slower than fp32 "
                     "(--amp none or auto)", args.amp)
    scaler = torch.amp.GradScaler(d.device.type, enabled=args.amp == "fp16")
    writer = _tensorboard(out) if args.tensorboard and d.is_main else None
    main_log = _log.info if d.is_main else (lambda *a, **k: None)  # per-step lines from rank 0 only
    main_log("model %s: %d parameters; %s: %d train images, global batch %d, lr %.3g, %d processes",
              args.model if not args.from_vit else f"KAT from {args.from_vit}", n_params, info.name,
              len(loader.dataset), global_batch, lr, d.world)

    step = start_epoch * steps_per_epoch
    skipped = 0
    metrics = {}
    t_start = time.time()
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    first_loss = None
    train_seconds = train_images = last_epoch_rate = 0.0  # the training loops only (no evaluation, no checkpointing)
    main_log("training: %d epochs of %d steps (batch %d) from epoch %d", args.epochs, steps_per_epoch,
             global_batch, start_epoch)
    last_log = time.time()
    for epoch in range(start_epoch, args.epochs):
        # Every epoch's randomness (order, augmentation, drop path) derives from (seed, epoch, rank), so
        # a resumed run replays exactly what an uninterrupted one would have done.
        epoch_seed = args.seed * 1000003 + epoch * 1009 + d.rank
        torch.manual_seed(epoch_seed)
        random.seed(epoch_seed)  # timm's crops draw from Python's random (in this process with --workers 0)
        np.random.seed(epoch_seed % 2**32)
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(args.seed * 1000003 + epoch)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        ddp.train()
        # No host-device synchronisation per step (it would stall the host, which queues the next
        # step's kernels while the GPU runs this one): the loss sum stays on the device, and a
        # non-finite loss is remembered there and raised at the next log step or the epoch's end.
        # --skip-nonfinite has to decide before the optimizer step, so it checks every step.
        loss_sum_t = torch.zeros((), device=d.device)
        bad_step = torch.full((), -1, dtype=torch.long, device=d.device)
        bad_loss = torch.zeros((), device=d.device)
        seen = 0
        steady = None  # (time, images) at the epoch's first log step: the rate after start-up
        t_epoch = time.time()
        for images, targets in loader:
            images, targets = images.to(d.device, non_blocking=True), targets.to(d.device, non_blocking=True)
            if mixup:
                images, targets = mixup(images, targets)
            with torch.autocast(d.device.type, dtype=dtype, enabled=dtype is not None):
                loss = criterion(ddp(images), targets)
            if not args.skip_nonfinite:
                first = torch.isfinite(loss).logical_not_().logical_and_(bad_step < 0)
                bad_step = torch.where(first, step, bad_step)
                bad_loss = torch.where(first, loss.detach().float(), bad_loss)
            elif not torch.isfinite(loss):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                _log.warning("skipped step %d: non-finite loss (%d skipped so far)", step, skipped)
                step += 1
                continue
            scaler.scale(loss).backward()
            if args.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            scheduler.step_update(num_updates=step)
            if first_loss is None:
                first_loss = all_mean(loss.item(), 1.0, d)  # mean over ranks = the global batch's loss
            loss_sum_t += loss.detach().float() * len(images)
            seen += len(images)
            if step % args.log_interval == 0 or seen == len(images) or time.time() - last_log > 30:
                last_log = time.time()
                _raise_if_nonfinite(bad_step, bad_loss, epoch)  # synchronises
                if steady is None and step % args.log_interval == 0:
                    steady = (time.time(), seen)
                rate = seen * d.world / max(time.time() - t_epoch, 1e-9)
                eta = (total_steps - step) * global_batch / max(rate, 1e-9)
                main_log("epoch %d step %d/%d loss %.4f lr %.3g %.0f img/s ETA %s", epoch, step, total_steps,
                          loss.item(), optimizer.param_groups[0]["lr"], rate, _fmt_time(eta))
            if args.max_steps and step >= args.max_steps:
                break
        _raise_if_nonfinite(bad_step, bad_loss, epoch)
        loss_sum = loss_sum_t.item()  # waits for the epoch's last step
        t_end = time.time()
        scheduler.step(epoch + 1)
        train_seconds += t_end - t_epoch
        train_images += seen * d.world
        last_epoch_rate = seen * d.world / max(t_end - t_epoch, 1e-9)
        steady_rate = (seen - steady[1]) * d.world / max(t_end - steady[0], 1e-9) \
            if steady is not None and seen > steady[1] else None
        train_loss = all_mean(loss_sum, seen, d)
        last = epoch + 1 == args.epochs or (args.max_steps and step >= args.max_steps)
        is_best = False
        if (epoch + 1) % args.eval_interval == 0 or last:
            metrics = evaluate(ema.module if ema is not None else model, test_loader, d.device, dtype, d)
            is_best = metrics["top1"] > best["top1"]
            if is_best:
                best = {"top1": metrics["top1"], "epoch": epoch}
            if d.is_main:
                _log.info("epoch %d: train loss %.4f, test top-1 %.2f%%, top-5 %.2f%%, loss %.4f (%.0fs)", epoch,
                          train_loss, metrics["top1"], metrics["top5"], metrics["loss"], time.time() - t_epoch)
                _write_csv(out / "summary.csv", epoch, train_loss, metrics, optimizer.param_groups[0]["lr"],
                           time.time() - t_start)
                if writer:
                    for k in ("top1", "top5", "loss"):
                        writer.add_scalar(f"eval/{k}", metrics[k], epoch)
                    writer.add_scalar("train/loss", train_loss, epoch)
        if d.is_main:  # every epoch, evaluated or not: a run that stops later resumes from here
            ck = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
                  "metrics": metrics, "args": _plain(vars(args)), "dataset": _plain(info.__dict__)}
            if ema is not None:
                ck["state_dict_ema"] = ema.module.state_dict()
            save_atomic(ck, out / "last.pth")
            if is_best:
                save_atomic(ck, out / "model_best.pth")
        if args.max_steps and step >= args.max_steps:
            break
    skipped_images = all_gather_names(skip_log.names(), d) if skip_log is not None else []
    if d.is_main:
        if args.save_safetensors:
            from safetensors.torch import save_file
            final = (ema.module if ema is not None else model).state_dict()
            save_file({k: v.detach().contiguous().cpu() for k, v in final.items()}, str(out / "model.safetensors"))
        result = {"test_top1": metrics.get("top1"), "test_top5": metrics.get("top5"), "best_top1": best["top1"],
                  "steps": step, "skipped_steps": skipped, "parameters": n_params, "first_loss": first_loss,
                  "seconds": round(time.time() - t_start, 1),
                  "train_img_per_s": round(train_images / train_seconds, 1) if train_seconds else None,
                  "last_epoch_img_per_s": round(last_epoch_rate, 1) if train_seconds else None,
                  # the last epoch from its first log step on: without data-loader start-up and warm-up
                  "steady_img_per_s": round(steady_rate, 1) if train_seconds and steady_rate else None,
                  "world_size": d.world, "skipped_images": skipped_images}
        dump_json(result, out / "result.json")
        print(f"test accuracy: {metrics.get('top1', float('nan')):.2f}% (top-5 {metrics.get('top5', float('nan')):.2f}%) "
              f"on {metrics.get('images', 0)} {info.name} test images after {step} steps; checkpoints in {out}")
        if skipped_images:
            print(f"skipped {len(skipped_images)} unreadable image(s), listed in {out / 'result.json'}")
    _log.info("rank %d of %d finished after %d steps", d.rank, d.world, step)
    if d.world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
