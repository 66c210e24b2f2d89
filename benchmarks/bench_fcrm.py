"""FCRM's cost on the tiny model: seconds per step against `sft`, and what double sampling costs.

    python benchmarks/bench_fcrm.py [--repeats 5] [--out benchmarks/results/fcrm.json]

* ``sft``: median seconds per step (the reference).
* ``fcrm`` per preset variant: mean seconds per step over whole rollout rounds (a round of
  rollouts is paid once every ``inner_steps`` steps, so a median would hide it), and the
  round's own cost (sampling + reward).
* double sampling: the objective alone (no rollouts, online branch only) with the
  double-sampling estimator against the single-batch square (``estimator: naive``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_common import median_seconds, write_record

from harness.config import load_preset, package_path
from harness.models.tiny_wan import TinyWanAdapter
from harness.runner import RunOptions, method_config
from trainers.registry import trainer_for


def build(preset, method: str, **overrides):
    cfg = method_config(preset, method, RunOptions(methods=[method]))
    cfg = cfg.model_copy(update=overrides)
    torch.manual_seed(0)
    adapter = TinyWanAdapter.load(package_path(cfg.base_checkpoint) if cfg.base_checkpoint
                                  else preset.base_checkpoint_path())
    trainer = trainer_for(method, {"trainer": cfg.trainer})(adapter, preset, cfg, 0)
    trainer.adapter.model.train()
    return trainer


def per_step_over_rounds(trainer, rounds: int) -> float:
    trainer.train_step(0)  # warm-up (and the first round)
    n = rounds * trainer.config.inner_steps
    start = trainer.config.inner_steps
    t0 = time.perf_counter()
    for s in range(start, start + n):
        trainer.train_step(s)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fcrm.json")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    results: dict = {"repeats": args.repeats, "rounds": args.rounds}
    sft = build(preset, "sft")
    it = iter(range(10**6))
    results["sft_step_s"] = median_seconds(lambda: sft.train_step(next(it)), args.repeats)
    for method in ("fcrm", "fcrm-onpolicy", "fcrm-offline", "fcrm-fewstep"):
        trainer = build(preset, method)
        row = {"step_s": per_step_over_rounds(trainer, args.rounds)}
        if trainer.config.behaviour != "none":
            row["rollout_round_s"] = median_seconds(lambda t=trainer: t._rollout_round(0), args.repeats)
            row["rollouts_per_round"] = trainer.config.conditions * trainer.config.group_size
        row["vs_sft"] = row["step_s"] / results["sft_step_s"]
        results[method] = row
        print(method, json.dumps(row))
    for estimator in ("double", "naive"):  # the objective alone: a round is drawn once, outside the timing
        trainer = build(preset, "fcrm-onpolicy", estimator=estimator, inner_steps=10**6)
        trainer.train_step(0)
        it = iter(range(1, 10**6))
        step = lambda t=trainer, i=it: t.train_step(next(i))  # noqa: E731
        results[f"objective_{estimator}_s"] = median_seconds(step, args.repeats)
    results["double_sampling_cost"] = results["objective_double_s"] / results["objective_naive_s"]
    print(json.dumps({k: v for k, v in results.items() if k.startswith(("objective", "double"))}))
    write_record(args.out, "fcrm step cost", args.preset, results)


if __name__ == "__main__":
    main()
