"""`harness build base`: train the tiny base model on the world's `pretrain` split.

Flow matching on pixels with logit-normal (or uniform) sigmas, caption dropout
for CFG, AdamW with warm-up and cosine decay, and an EMA of the weights, which is
what gets saved. Output (diffusers layout): config.json,
diffusion_pytorch_model.safetensors, adapter.json and training_record.json. The
directory is written under a temporary name and moved into place at the end, so
an existing checkpoint is never half-overwritten.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.config import PresetConfig
from harness.data.batches import split_batch
from harness.data.oracle import judge, summarise
from harness.data.video_io import tensor_to_frames
from harness.models.tiny_wan import TinyWanAdapter
from harness.provenance import provenance
from harness.sampling import sample
from trainers.objectives import sample_sigmas

log = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    pass


class TrainingDivergedError(RuntimeError):
    pass


def check_output_dir(out: Path, force: bool) -> None:
    """Fail before any work if the target cannot be written or would be overwritten."""
    if (out / "adapter.json").exists() and not force:
        raise OutputExistsError(f"a checkpoint already exists in {out}; pass --force to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write to {out.parent} ({exc.strerror}); choose another --out") from exc


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def judge_samples(adapter: TinyWanAdapter, preset: PresetConfig, n: int) -> dict:
    """Oracle scores of base-model samples, real eval clips and pure noise on n eval conditions."""
    batch = split_batch(preset.world, "eval", range(n))
    cond = adapter.encode_condition(batch.first_frames, batch.captions)
    seeds = [preset.eval.seed + i for i in range(n)]
    videos = sample(adapter, cond, seeds, preset.sampler)
    rng = np.random.default_rng(0)
    groups = {
        "samples": [tensor_to_frames(v) for v in videos],
        "real": list(batch.frames),
        "noise": [rng.integers(0, 256, batch.frames.shape[1:], dtype=np.uint8) for _ in range(n)],
    }
    out: dict = {name: summarise([judge(v, spec, preset.world) for v, spec in zip(vids, batch.specs, strict=True)])
                 for name, vids in groups.items()}
    out["n"] = n
    out["sampler"] = preset.sampler.model_dump()
    return out


def _warm_start(preset: PresetConfig, init_from: Path) -> tuple[TinyWanAdapter, dict]:
    """Continue from a saved model: same architecture, and clips it has not seen yet."""
    adapter = TinyWanAdapter.load(init_from)
    if adapter.config != preset.model:
        raise ValueError(f"--init-from {init_from} has model config {adapter.config.model_dump()}, "
                         f"but the preset asks for {preset.model.model_dump()}")
    parent = json.loads((init_from / "training_record.json").read_text())
    return adapter, parent


def pretrain(preset: PresetConfig, out: Path, force: bool = False, show_progress: bool = True,
             init_from: Path | None = None) -> dict:
    cfg = preset.pretrain
    check_output_dir(out, force)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    torch.manual_seed(cfg.seed)
    parent, offset = None, 0
    if init_from is not None:
        adapter, parent = _warm_start(preset, init_from)
        done = parent["preset"]["pretrain"]
        offset = parent.get("data_offset", 0) + done["steps"] * done["batch_size"]
    else:
        adapter = TinyWanAdapter(preset.model, preset.world.num_frames, preset.world.resolution)
    model = adapter.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    drop_rng = np.random.default_rng(cfg.seed)
    curve: list[dict] = []
    window: list[float] = []
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not show_progress, dynamic_ncols=True)
    for step in bar:
        first = offset + step * cfg.batch_size  # a warm start continues on unseen clips
        batch = split_batch(preset.world, "pretrain", range(first, first + cfg.batch_size))
        captions = ["" if drop_rng.random() < cfg.caption_dropout else c for c in batch.captions]
        x0 = adapter.encode_video(batch.videos)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = sample_sigmas(cfg.timestep_sampling, x0.shape[0], gen)
        cond = adapter.encode_condition(batch.first_frames, captions)
        pred = adapter.predict(adapter.add_noise(x0, noise, sigma), sigma, cond)
        loss = torch.nn.functional.mse_loss(pred, adapter.training_target(x0, noise, sigma))
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"loss is {loss.item()} at step {step}; nothing was written to {out}. "
                "Lower pretrain.lr or raise pretrain.warmup_steps"
            )
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # warm-up of the EMA
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        window.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "loss": float(np.mean(window)), "seconds": round(time.time() - start, 2)})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.4f}")
            window = []
    train_seconds = time.time() - start
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    model.eval()
    oracle = judge_samples(adapter, preset, cfg.judge_videos) if cfg.judge_videos else None
    record = {
        "what": "tiny base model pretrained on the tiny world's pretrain split (EMA weights)",
        "reproduce": (f"harness build base --preset {preset.name} --out <dir>"
                      + (" (after reproducing the parent below) --init-from <parent dir>" if parent else "")
                      + (f" --steps {cfg.steps}" if parent else "")),
        "steps": cfg.steps,
        "data_offset": offset,
        "init_from": None if parent is None else {"path": str(init_from), "record": parent},
        "preset": preset.record(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_curve": curve,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / cfg.steps, 4),
        "oracle_at_end": oracle,
        **provenance(),
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    adapter.save(tmp)
    (tmp / "training_record.json").write_text(json.dumps(record, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("saved %s (%.0f s)", out, train_seconds)
    return record
