"""Seconds per training step of each trainer on the tiny model, and the cost of the probes.

    python benchmarks/bench_trainers.py [--repeats 5] [--out benchmarks/results/trainers.json]

Each trainer is built as `harness run` builds it (the preset's settings, LoRA), on a
small rollout pair set (16 conditions) so that building it stays quick; a step's cost
does not depend on the pair count. Figures are medians over repeats after one warm-up
step. The probes are timed per call (likelihood displacement and Gamma, at the preset's
probe settings) and as overhead per training step at the preset's probing interval.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from bench_common import median_seconds, write_record

from harness.config import load_preset
from harness.models.tiny_wan import TinyWanAdapter
from harness.probing import ProbeRunner
from trainers.base import trainer_settings
from trainers.registry import available_methods, get_trainer

# Trainers whose steps are not alike (fcrm pays a rollout round every few steps) have their own.
OWN_BENCHMARK = {"fcrm": "bench_fcrm.py", "flow-grpo": "bench_baselines.py", "diffusionnft": "bench_baselines.py",
                 "awm": "bench_baselines.py"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trainers.json")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    results: dict = {"repeats": args.repeats, "probe_every": preset.probes.every}
    with tempfile.TemporaryDirectory() as tmp:
        for method in available_methods():
            if method in OWN_BENCHMARK:
                continue
            cls = get_trainer(method)
            raw = json.loads(json.dumps(trainer_settings(preset.methods.get(method, {}))))  # a deep copy
            for part in [raw, *raw.get("stages", [])]:  # apo's stages carry their own pair sets
                if "pairs" in part:
                    part["pairs"] = {**part["pairs"], "conditions": 16}
            cfg = cls.config_class(**raw)
            torch.manual_seed(0)
            trainer = cls(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0, workdir=Path(tmp))
            trainer.adapter.model.train()
            step = iter(range(10**6))
            row = {"batch_size": cfg.batch_size,
                   "step_s": median_seconds(lambda t=trainer, s=step: t.train_step(next(s)), args.repeats)}
            probes = ProbeRunner(preset, trainer, Path(tmp))
            for probe in probes.probes:
                row[f"probe_{probe.spec.name}_s"] = median_seconds(lambda p=probe, t=trainer: p.measure(t, 1),
                                                                   args.repeats)
            per_step = sum(v for k, v in row.items() if k.startswith("probe_")) / preset.probes.every
            row["probe_overhead_per_step"] = per_step / row["step_s"]
            results[method] = row
            print(method, json.dumps(row))
    write_record(args.out, "trainer step speed", args.preset, results)


if __name__ == "__main__":
    main()
