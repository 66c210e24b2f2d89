"""Guidance distillation on the tiny model: sampling speed and metrics before and after.

    python benchmarks/bench_guidance_distill.py [--steps 150] [--out benchmarks/results/guidance_distill.json]

"Before" is the base model sampled with CFG and spatiotemporal skip guidance (three
forward passes per step: conditional, unconditional, blocks skipped); "after" is a
student distilled from that guided teacher by `apo`'s `distill` stage, sampled with
one forward pass per step (the preset's plain sampler). The plain base model is the
third column. Each is scored on the eval set with the oracle metrics, motion score
and subject consistency. The paper reports a 3x speed-up on Wan.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_common import write_record

from harness.config import load_preset
from harness.evaluate import Evaluator
from harness.models.tiny_wan import TinyWanAdapter
from trainers.apo import APOConfig, APOTrainer
from trainers.base import trainer_settings

METRICS = ["distortion_rate", "motion_adherence", "motion_score", "subject_consistency"]


def score(evaluator: Evaluator, adapter) -> tuple[dict[str, float], float]:
    t0 = time.perf_counter()
    frames = evaluator.sample_videos(adapter, show_progress=False)
    seconds = (time.perf_counter() - t0) / len(frames)
    videos = evaluator.video_samples(frames)
    out = {}
    for metric in evaluator.metrics:
        metric.reset()
        for v in videos:
            metric.update(v)
        out[metric.identity] = float(metric.compute())
    return out, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=150, help="distillation steps")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--stg", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "guidance_distill.json")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    guided = preset.model_copy(update={"sampler": preset.sampler.model_copy(
        update={"guidance_scale": args.guidance, "stg_scale": args.stg, "stg_blocks": [2]})})
    plain_eval, guided_eval = Evaluator(preset, METRICS), Evaluator(guided, METRICS)

    base = TinyWanAdapter.load(preset.base_checkpoint_path())
    base.model.eval()
    results = {"base_plain": dict(zip(("metrics", "seconds_per_video"), score(plain_eval, base), strict=True)),
               "teacher_guided": dict(zip(("metrics", "seconds_per_video"), score(guided_eval, base), strict=True))}

    stage = {"kind": "distill", "steps": args.steps, "teacher_guidance_scale": args.guidance,
             "teacher_stg_scale": args.stg, "stg_blocks": [2]}
    cfg = APOConfig(**{**trainer_settings(preset.methods.get("apo", {})), "stages": [stage], "lr": 5e-4})
    torch.manual_seed(0)
    trainer = APOTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0)
    trainer.adapter.model.train()
    t0 = time.perf_counter()
    losses = [trainer.train_step(s)["loss"] for s in range(args.steps)]
    train_s = time.perf_counter() - t0
    trainer.adapter.model.eval()
    student = dict(zip(("metrics", "seconds_per_video"), score(plain_eval, trainer.adapter), strict=True))
    results["student_plain"] = {**student, "distill_steps": args.steps, "distill_seconds": train_s,
                                "distill_loss_first_last10": [losses[0], sum(losses[-10:]) / 10], "lr": 5e-4}
    results["speedup_teacher_over_student"] = (results["teacher_guided"]["seconds_per_video"]
                                               / student["seconds_per_video"])
    write_record(args.out, "guidance distillation (CFG + STG -> one pass)", args.preset, results,
                 teacher={"guidance_scale": args.guidance, "stg_scale": args.stg, "stg_blocks": [2]})


if __name__ == "__main__":
    main()
