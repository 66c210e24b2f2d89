"""Sample the fixed eval conditions from a checkpoint and judge them with the oracle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.config import PresetConfig
from harness.data.batches import split_batch
from harness.data.oracle import judge, summarise
from harness.data.video_io import tensor_to_frames, write_video
from harness.models.tiny_wan import TinyWanAdapter
from harness.provenance import provenance
from harness.sampling import sample, sigma_schedule


def sample_and_judge(
    preset: PresetConfig, out: Path, checkpoint: Path | None = None, num: int | None = None, batch_size: int = 16
) -> dict:
    if preset.threads:
        torch.set_num_threads(preset.threads)
    ckpt = checkpoint or preset.base_checkpoint_path()
    adapter = TinyWanAdapter.load(ckpt)
    adapter.model.eval()
    n = num or preset.eval.num_videos
    out.mkdir(parents=True, exist_ok=True)
    steps = len(sigma_schedule(preset.sampler)) - 1
    rows, judgements = [], []
    start = time.time()
    with tqdm(total=n * steps, desc="sampling (model calls x videos)", unit="call") as bar:
        for lo in range(0, n, batch_size):
            idx = list(range(lo, min(n, lo + batch_size)))
            batch = split_batch(preset.world, "eval", idx)
            cond = adapter.encode_condition(batch.first_frames, batch.captions)
            seeds = [preset.eval.seed + i for i in idx]
            m = len(idx)
            videos = sample(adapter, cond, seeds, preset.sampler, progress=lambda k, m=m: bar.update(k * m))
            for i, seed, video, spec in zip(idx, seeds, videos, batch.specs, strict=True):
                frames = tensor_to_frames(video)
                name = f"eval_{i:05d}_seed{seed}.mp4"
                write_video(out / name, frames, fps=preset.world.fps)
                j = judge(frames, spec, preset.world)
                judgements.append(j)
                rows.append({"video": name, "index": i, "seed": seed, "caption": spec.caption,
                             "integrity": j.integrity, "motion_adherence": j.motion_adherence,
                             "distorted": j.distorted})
    summary = {
        "checkpoint": str(ckpt),
        "videos": n,
        **summarise(judgements),
        "sampler": preset.sampler.model_dump(),
        "seconds": round(time.time() - start, 2),
        "note": "oracle scores of the tiny world, not VBench or FVD of a real model",
    }
    with open(out / "judgements.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out / "summary.json").write_text(json.dumps({**summary, "preset": preset.record(),
                                                  **provenance()}, indent=2))
    return summary
