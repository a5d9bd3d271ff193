"""Fault injection for kat-train's tests. A test puts this folder first on a child process's
PYTHONPATH, and Python imports ``sitecustomize`` at start-up; nothing of this is in the product.

KAT_TEST_FAULT=save:K     SIGKILL half-way through writing the K-th checkpoint file
KAT_TEST_FAULT=rank:R:S   SIGKILL rank R (the RANK variable torchrun sets) after its S-th optimizer step
KAT_TEST_FAULT=epoch:K    SIGKILL once epoch K's checkpoints are written, before the next optimizer step
"""
import os

_FAULT = os.environ.get("KAT_TEST_FAULT", "")


def _die():
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def _install(kind, *nums):
    import io

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    real_save = torch.save
    state = {"saves": 0, "steps": 0, "epoch_saved": None}

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):  # a checkpoint file written by kat's save_atomic
            state["saves"] += 1
            if kind == "save" and state["saves"] == nums[0]:
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                f.write(buf.getvalue()[: buf.tell() // 2])
                f.flush()
                _die()
            if isinstance(obj, dict) and "epoch" in obj:
                state["epoch_saved"] = obj["epoch"]
        return real_save(obj, f, *args, **kwargs)

    def step_pre(optimizer, args, kwargs):
        if kind == "epoch" and state["epoch_saved"] == nums[0]:
            _die()

    def step_post(optimizer, args, kwargs):
        state["steps"] += 1
        if kind == "rank" and int(os.environ.get("RANK", "0")) == nums[0] and state["steps"] == nums[1]:
            _die()

    torch.save = save
    register_optimizer_step_pre_hook(step_pre)
    register_optimizer_step_post_hook(step_post)


if _FAULT:
    _kind, *_nums = _FAULT.split(":")
    _install(_kind, *map(int, _nums))
