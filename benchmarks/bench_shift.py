"""SHIFT's training cost on the tiny model relative to SFT (the paper's Table 1: 2.46x per epoch).

    python benchmarks/bench_shift.py [--buffers 2] [--out benchmarks/results/shift.json]

An epoch of SHIFT and of SFT sees the same anchor clips (same batch size, one anchor batch per
step), so the per-epoch ratio is the ratio of mean seconds per step. SHIFT's steps are timed
over whole buffers (a buffer's rollouts, features and rewards are paid once every
``steps_per_pass * passes`` steps, so a median would hide them), after one warm-up buffer.
Also recorded: the cost of one buffer fill and its parts' share, per variant (A0: one static
reward; A4 = shift: two adversarial rewards).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_common import median_seconds, write_record

from harness.config import load_preset
from harness.models.tiny_wan import TinyWanAdapter
from harness.runner import RunOptions, method_config
from trainers.registry import trainer_for


def build(preset, method: str):
    cfg = method_config(preset, method, RunOptions(methods=[method]))
    torch.manual_seed(0)
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    trainer = trainer_for(method, {"trainer": cfg.trainer})(adapter, preset, cfg, 0)
    trainer.adapter.model.train()
    return trainer


def per_step_over_buffers(trainer, buffers: int) -> tuple[float, int]:
    per_buffer = trainer.steps_per_pass * trainer.config.buffer.passes
    for s in range(per_buffer):  # warm-up: one whole buffer
        trainer.train_step(s)
    n = buffers * per_buffer
    t0 = time.perf_counter()
    for s in range(per_buffer, per_buffer + n):
        trainer.train_step(s)
    return (time.perf_counter() - t0) / n, per_buffer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--buffers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shift.json")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    results: dict = {"buffers": args.buffers}
    sft = build(preset, "sft")
    it = iter(range(10**6))
    results["sft_step_s"] = median_seconds(lambda: sft.train_step(next(it)), args.repeats)
    for method in ("shift", "shift-a0"):
        trainer = build(preset, method)
        step_s, per_buffer = per_step_over_buffers(trainer, args.buffers)
        t0 = time.perf_counter()
        trainer._fill(0)
        fill_s = time.perf_counter() - t0
        row = {"step_s": step_s, "steps_per_buffer": per_buffer, "buffer_fill_s": fill_s,
               "buffer_fill_share": fill_s / (step_s * per_buffer), "vs_sft": step_s / results["sft_step_s"],
               "rewards": list(trainer.config.rewards), "adversarial": trainer.config.adversarial}
        results[method] = row
        print(method, row)
    write_record(args.out, "shift", args.preset, results,
                 paper={"shift_vs_sft_per_epoch": 2.46, "source": "SHIFT Table 1 (SVD, 64 GPUs)"})


if __name__ == "__main__":
    main()
