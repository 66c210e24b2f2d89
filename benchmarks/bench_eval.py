"""Seconds to evaluate one checkpoint with the full metric suite on the default eval set.

    python benchmarks/bench_eval.py [--preset tiny] [--final] [--out benchmarks/results/eval_checkpoint.json]

Times the three parts of an evaluation separately: sampling the eval set, each metric
on the sampled videos (per-video records + aggregate), and the whole evaluation as
the run loop does it (fresh store, nothing cached except FVD reference statistics,
which are computed once per machine and timed separately). Goal (issue 3): <= 30 s. ``--final``: on the
final eval set (``eval.final_num_videos``: the base model and each method's last checkpoint), where a run
spends most of its evaluation time; by default on the intermediate set (``eval.num_videos``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_common import write_record

from harness.config import load_preset
from harness.evaluate import Evaluator
from harness.models.tiny_wan import TinyWanAdapter
from harness.store import ResultStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--final", action="store_true", help="the final eval set (eval.final_num_videos)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_checkpoint.json")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    adapter.model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HARNESS_CACHE"] = str(Path(tmp) / "cache")
        evaluator = Evaluator(preset)
        n_videos = evaluator.use_set(args.final)
        t0 = time.perf_counter()
        frames = evaluator.sample_videos(adapter, show_progress=False)
        sampling = time.perf_counter() - t0
        videos = evaluator.video_samples(frames)
        per_metric = {}
        with ResultStore(Path(tmp) / "a.sqlite") as store:
            store.add_run("bench", preset.name, {}, [0], {})
            ckpt = store.checkpoint("bench", "base", 0, 0, None, preset.sampler.model_dump())
            for metric in evaluator.metrics_for(args.final):
                t0 = time.perf_counter()
                evaluator._compute(store, ckpt, metric, videos, videos)
                per_metric[metric.identity] = round(time.perf_counter() - t0, 3)
        fvd_first = next((v for k, v in per_metric.items() if k.startswith("fvd")), None)
        with ResultStore(Path(tmp) / "b.sqlite") as store:  # the loop's path, FVD reference now cached
            store.add_run("bench", preset.name, {}, [0], {})
            ckpt = store.checkpoint("bench", "base", 0, 0, None, preset.sampler.model_dump())
            t0 = time.perf_counter()
            evaluator.evaluate(store, ckpt, adapter, Path(tmp) / "samples.npz", show_progress=False,
                               weights="bench", final=args.final)
            total = time.perf_counter() - t0
    results = {
        "eval_videos": n_videos, "eval_set": "final" if args.final else "intermediate",
        "sampler": preset.sampler.model_dump(),
        "sampling_s": round(sampling, 3), "metrics_s": per_metric,
        "fvd_with_reference_build_s": fvd_first,
        "checkpoint_total_s": round(total, 3), "goal_s": 30,
    }
    write_record(args.out, "evaluate one checkpoint, full metric suite", args.preset, results)


if __name__ == "__main__":
    main()
