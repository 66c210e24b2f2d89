"""A few-step tiny generator for FCRM's few-step mode (paper 002, App. D.3).

FCRM's main results run on a 4-NFE distilled Wan with sampling timesteps [1000, 757, 522].
The tiny world gets its own K-step generator by trajectory distillation of the base model:

* teacher: the base model's Euler ODE, with ``substeps`` steps inside each segment between
  consecutive student timesteps, so it passes exactly through sigma = 1, 0.757, 0.522, 0;
* student: a full copy of the base model, trained so that one Euler step from the teacher's
  state at tau_k lands on the teacher's state at tau_{k+1}: it regresses the segment's
  secant velocity (x_{k+1} - x_k) / (tau_{k+1} - tau_k) at (x_k, tau_k).

`harness build fewstep` writes the student (same layout as the base model) with a
training record that judges the teacher, the undistilled base at K steps and the student
at K steps on the eval conditions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.build.base import check_output_dir, judge_samples
from harness.config import PresetConfig
from harness.data.batches import split_batch
from harness.models.base import Conditioning
from harness.models.tiny_wan import TinyWanAdapter
from harness.sampling import SamplerConfig, initial_noise, integrate

DEFAULT_TIMESTEPS = (1000.0, 757.0, 522.0)


def teacher_states(teacher: TinyWanAdapter, cond, seeds: list[int], sigmas: list[float], substeps: int) -> torch.Tensor:
    """(K + 1, B, ...) teacher ODE states at ``sigmas`` (descending, ending at 0)."""
    ode = SamplerConfig(kind="ode")
    x = initial_noise(teacher.latent_shape(len(seeds)), seeds)
    states = [x]
    with torch.no_grad():
        for hi, lo in zip(sigmas, sigmas[1:], strict=False):
            grid = torch.linspace(hi, lo, substeps + 1, dtype=torch.float64)
            x = integrate(lambda z, s: teacher.predict(z, s, cond), x, grid, ode)
            states.append(x)
    return torch.stack(states)


def distill_fewstep(preset: PresetConfig, out: Path, *, timesteps: tuple[float, ...] = DEFAULT_TIMESTEPS,
                    substeps: int = 6, videos: int = 768, steps: int = 1200, batch_size: int = 32,
                    lr: float = 2e-4, seed: int = 0, force: bool = False, show_progress: bool = True) -> dict:
    check_output_dir(out, force)
    t0 = time.time()
    torch.manual_seed(seed)
    base_dir = preset.base_checkpoint_path()
    teacher = TinyWanAdapter.load(base_dir)
    teacher.model.eval()
    sigmas = [t / teacher.num_train_timesteps for t in timesteps] + [0.0]
    batch = split_batch(preset.world, "pretrain", range(50_000, 50_000 + videos))
    seeds = [int(np.random.SeedSequence([seed, 91, i]).generate_state(1)[0] & 0x7FFFFFFF) for i in range(videos)]
    states, conds = [], []
    for lo in tqdm(range(0, videos, 64), desc="teacher trajectories", disable=not show_progress):
        sl = slice(lo, min(videos, lo + 64))
        cond = teacher.encode_condition(batch.first_frames[sl], batch.captions[sl])
        states.append(teacher_states(teacher, cond, seeds[sl], sigmas, substeps))
        conds.append(cond)
    traj = torch.cat(states, dim=1)  # (K + 1, N, ...)
    first, text = batch.first_frames, torch.cat([c.text for c in conds])
    student = TinyWanAdapter.load(base_dir)
    student.model.train()
    params = [p for p in student.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    k_steps = len(timesteps)
    losses = []
    for step in tqdm(range(steps), desc="distil few-step", disable=not show_progress):
        i = torch.randint(videos, (batch_size,), generator=g)
        k = torch.randint(k_steps, (batch_size,), generator=g)
        x_k, x_next = traj[k, i], traj[k + 1, i]
        s_k = torch.tensor(sigmas, dtype=torch.float32)[k]
        s_next = torch.tensor(sigmas, dtype=torch.float32)[k + 1]
        target = (x_next - x_k) / (s_next - s_k).view(-1, 1, 1, 1, 1)
        cond = Conditioning(first[i], text[i], tuple(batch.captions[j] for j in i.tolist()))
        loss = torch.nn.functional.mse_loss(student.predict(x_k, s_k, cond), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        opt.step()
        losses.append(loss.item())
    student.model.eval()
    out.mkdir(parents=True, exist_ok=True)
    student.save(out)
    few = SamplerConfig(kind="ode", timesteps=list(timesteps))
    n = preset.eval.num_videos
    judged = {
        "teacher": judge_samples(teacher, preset, n),
        "base_at_k_steps": judge_samples(teacher, preset.model_copy(update={"sampler": few}), n),
        "student_at_k_steps": judge_samples(student, preset.model_copy(update={"sampler": few}), n),
    }
    record = {
        "what": f"tiny few-step generator: the base model distilled to {k_steps} Euler steps "
                f"at timesteps {list(timesteps)}",
        "reproduce": f"harness build fewstep --preset {preset.name} --out <dir> --force",
        "teacher": {"checkpoint": preset.base_checkpoint, "sampler": "Euler ODE", "substeps_per_segment": substeps,
                    "nfe": substeps * k_steps},
        "method": "trajectory distillation: one student Euler step from the teacher's state at tau_k regresses "
                  "the secant velocity to the teacher's state at tau_{k+1}; full fine-tune of a copy of the base",
        "data": {"split": "pretrain", "conditions": [50_000, 50_000 + videos], "seed": seed},
        "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "schedule": "cosine",
                  "loss_first_100": float(np.mean(losses[:100])), "loss_last_100": float(np.mean(losses[-100:])),
                  "seconds": round(time.time() - t0, 1)},
        "sampler": few.model_dump(mode="json"),
        "judged_on_eval": judged,
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=2))
    return record
