"""Data-parallel training and sharded evaluation over torch.distributed.

`accelerate launch`, `torchrun` and Slurm's `srun` (through either) start one process per
device and set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``init_from_env``
joins the group (NCCL on GPUs, gloo on CPU). The design keeps every rank's trainer state
identical, so a checkpoint is the same file at any world size and resumes at another:

* data: every rank draws the *global* batch's indices, timesteps and noise from the same
  seeded generator and keeps its own contiguous rows (``Dist.rows``); the global batch must
  split evenly (checked at config time, with the arithmetic), except a batch whose size is only
  known at run time, which ranks share in weighted blocks (``Dist.share``);
* gradients: the mean over local rows, averaged across ranks (``average_gradients``), is
  the gradient of the global batch mean, as DDP computes it; averaging after the last
  backward (not in hooks) lets a trainer call backward several times per step;
* evaluation: each rank samples and scores every world-th eval video; frames and per-video
  records are gathered on rank 0, which alone writes files and the results database;
* DeepSpeed: launched with a ZeRO-1/2 config (harness/launch/accelerate-zero2.yaml), each
  method's AdamW runs inside a ZeRO engine (trainers/optimizer.py) instead of averaging
  gradients here; the config is read from accelerate's environment and checked at start.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class DistributedConfigError(ValueError):
    """A batch layout that cannot be split across the ranks."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n`` (n divisible by world size)."""
        if n % self.world_size:
            raise DistributedConfigError(
                f"a batch of {n} does not split across {self.world_size} ranks ({n} % {self.world_size} = "
                f"{n % self.world_size}); use a multiple of {self.world_size}")
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def share(self, n: int) -> tuple[slice, float]:
        """This rank's contiguous rows of ``n`` items that need not split evenly (a batch whose size
        is known only at run time, e.g. APO's untied online pairs) and the weight of its local mean:
        W * rows / n, so that the rank-average of ``weight * local mean`` (what gradient averaging
        computes) is the mean over all ``n``. Blocks differ by at most one row; a rank left without
        a row gets row 0 at weight 0, so that it still back-propagates and joins the all-reduce."""
        if n < 1:
            raise ValueError(f"cannot share {n} rows across ranks")
        per, extra = divmod(n, self.world_size)
        lo = self.rank * per + min(self.rank, extra)
        hi = lo + per + (self.rank < extra)
        if hi == lo:
            return slice(0, 1), 0.0
        return slice(lo, hi), self.world_size * (hi - lo) / n

    def strided(self, n: int) -> range:
        """This rank's share of ``n`` items that need not split evenly (eval videos): r, r + W, ..."""
        return range(self.rank, n, self.world_size)

    # -- collectives (no-ops on one process) -----------------------------------------------
    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective per step, like a DDP bucket
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_tensors(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Rank-averages of ``tensors`` (returned; the inputs are untouched)."""
        if not self.enabled or not tensors:
            return tensors
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()
        return out

    def average_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Scalars logged by a step, averaged over ranks (each is a mean over equal-sized shards)."""
        if not self.enabled or not logs:
            return logs
        keys = sorted(logs)
        values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return {k: float(v) / self.world_size for k, v in zip(keys, values.tolist(), strict=True)}

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (decisions that read the results database or the disk)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


_current = Dist()


def current() -> Dist:
    """The process's rank layout: the initialised group's, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return _current


def init_from_env(timeout_s: int = 1800) -> Dist:
    """Join the process group a launcher set up (WORLD_SIZE > 1); one process otherwise."""
    global _deepspeed
    _deepspeed = _deepspeed_from_env()  # checked before any work: a bad ZeRO config fails here
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (world <= 1 and _deepspeed is None) or (dist.is_available() and dist.is_initialized()):
        return current()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedConfigError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; start the run with `accelerate launch` or "
            "`torchrun` (see configs/accelerate/), which set them")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


_deepspeed: dict[str, Any] | None = None


def deepspeed_config() -> dict[str, Any] | None:
    """The launch's DeepSpeed config (``accelerate launch`` with a DeepSpeed config), or None for
    plain data parallelism. Trainers complete it per method with ``zero_config``."""
    return _deepspeed


def _deepspeed_from_env() -> dict[str, Any] | None:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return None
    try:
        import deepspeed  # noqa: F401
        from accelerate.utils import DeepSpeedPlugin
    except ImportError as exc:
        raise DistributedConfigError(
            f"launched with a DeepSpeed config but DeepSpeed is not importable ({exc}); install the extra: "
            "pip install -e '.[deepspeed]' (scripts/install.sh does on GPU machines)") from exc
    cfg = DeepSpeedPlugin().deepspeed_config  # reads accelerate's ACCELERATE_DEEPSPEED_* variables
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision == "fp16" or cfg.get("fp16", {}).get("enabled") in (True, "true"):
        raise DistributedConfigError("DeepSpeed fp16 (loss scaling) is not supported; use mixed_precision bf16 or no")
    if cfg.get("bf16", {}).get("enabled", "auto") == "auto":
        cfg["bf16"] = {"enabled": precision == "bf16"}
    zero_config(cfg, None, 1)  # method-independent checks now, before any work
    return cfg


def zero_config(base: dict[str, Any], grad_clip: float | None, world_size: int) -> dict[str, Any]:
    """A DeepSpeed config for one method: the launch's ZeRO settings with the harness's batch and
    clipping. The preset owns the batch (global, split over ranks by the harness) and each method
    its optimizer and clipping, so the launch's config must leave those to it ("auto")."""
    cfg = copy.deepcopy(base)
    stage = int(cfg.get("zero_optimization", {}).get("stage", 0))
    if stage not in (1, 2):
        raise DistributedConfigError(
            f"DeepSpeed ZeRO stage {stage}: the harness runs ZeRO-1 and ZeRO-2 (optimizer state and gradients "
            "partitioned); stage 3 also partitions the weights, which rollouts and reward scoring read whole; "
            "use harness/launch/accelerate-zero2.yaml")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if cfg.get(key, "auto") not in ("auto", None):
            raise DistributedConfigError(
                f"DeepSpeed config sets {key}={cfg[key]!r}; the batch is the preset's methods.*.batch_size (global, "
                f"split over ranks by the harness): set {key} to auto")
    clip = cfg.get("gradient_clipping", "auto")
    if clip not in ("auto", None) and grad_clip is not None and not math.isclose(float(clip), grad_clip):
        raise DistributedConfigError(
            f"DeepSpeed config sets gradient_clipping={clip} but the method clips at {grad_clip} "
            "(methods.<name>.grad_clip); set gradient_clipping to auto")
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise DistributedConfigError(
                f"DeepSpeed config has a {key!r} section; each method's AdamW and schedule are the harness's "
                "(methods.<name>.lr, ...): remove it")
    offload = (cfg.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none")
    if offload not in ("none", None):
        raise DistributedConfigError(
            f"ZeRO optimizer offload to {offload!r} is not supported (the methods' optimizer is torch AdamW, which "
            "DeepSpeed does not offload); set offload_optimizer_device to none")
    cfg.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=world_size,
               gradient_clipping=grad_clip, zero_allow_untested_optimizer=True, steps_per_print=2**31 - 1)
    return cfg


def check_divisible(what: str, global_batch: int, world_size: int, group: int = 1) -> None:
    """Refuse, with the arithmetic, a global batch that does not split into whole groups per rank."""
    unit = world_size * group
    if global_batch % unit:
        per_rank = global_batch / world_size
        raise DistributedConfigError(
            f"{what}: global batch {global_batch} must be a multiple of world size {world_size} x group size {group}"
            f" = {unit}; {global_batch} / {world_size} = {per_rank:g} per rank"
            + (f", {per_rank:g} / {group} = {per_rank / group:g} groups" if group > 1 else "")
            + f"; use {global_batch - global_batch % unit or unit} or {global_batch - global_batch % unit + unit}")


class NoStore:
    """The results database on ranks other than 0: every call is a no-op returning None. Only
    rank 0 writes; a read that steers control flow is broadcast from rank 0 by its caller."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

    def __enter__(self) -> NoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
