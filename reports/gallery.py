"""Filmstrips of the sampled eval videos, one PNG per checkpoint: what the numbers are about.

Each of the first K videos is one row of its T frames, enlarged with nearest-neighbour (no smoothing,
so 16x16 pixels stay visible) and separated by 1-px lines. Reads the ``samples.npz`` files the
evaluator keeps next to each checkpoint (layout in :mod:`harness.runner`).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.rundir import RunDir
from reports.identity import slug
from reports.tables import BASE, method_order

log = logging.getLogger(__name__)
TARGET_PX = 96  # enlarged frame size: 16 px frames get x6


@dataclass
class GalleryItem:
    method: str
    seed: int
    step: int
    image: Path
    shown: int  # rows in the filmstrip
    total: int  # videos in samples.npz
    sample_seeds: list[int] | None = None  # sampling seed of each shown row, if stored
    captions: list[str] | None = None  # eval-condition caption of each shown row, if known


def default_scale(height: int, width: int) -> int:
    return max(1, TARGET_PX // max(height, width))


def filmstrip(frames: np.ndarray, k: int = 4, scale: int | None = None, sep: int = 1,
              sep_value: int = 255) -> np.ndarray:
    """(rows, cols, 3) uint8 image: the first ``k`` videos of uint8 (N, T, H, W, 3) as rows of frames."""
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, T, H, W, 3), got {frames.dtype} {frames.shape}")
    n, t, h, w, _ = frames.shape
    n = min(n, k)
    if n < 1:
        raise ValueError("no videos to show")
    s = scale or default_scale(h, w)
    big = frames[:n].repeat(s, axis=2).repeat(s, axis=3)
    fh, fw = h * s, w * s
    canvas = np.full((n * fh + (n - 1) * sep, t * fw + (t - 1) * sep, 3), sep_value, dtype=np.uint8)
    for i in range(n):
        for j in range(t):
            y, x = i * (fh + sep), j * (fw + sep)
            canvas[y:y + fh, x:x + fw] = big[i, j]
    return canvas


def eval_captions(preset: Mapping[str, Any], n: int) -> list[str] | None:
    """Captions of eval conditions 0..n-1, regenerated from the preset's tiny-world config; None if not."""
    if "world" not in preset:
        return None
    try:
        from harness.data.world import WorldConfig, sample_spec

        cfg = WorldConfig(**preset["world"])
        return [sample_spec(cfg, "eval", i).caption for i in range(n)]
    except Exception as exc:  # captions are a nicety: never fail the report for them
        log.info("eval captions unavailable: %s", exc)
        return None


def build_gallery(run_dir: Path, out_dir: Path, k: int = 4, scale: int | None = None,
                  methods: Sequence[str] | None = None,
                  captions: Sequence[str] | None = None) -> list[GalleryItem]:
    """Write one filmstrip PNG per checkpoint (base first); unreadable sample files are logged and skipped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    found = RunDir(run_dir).checkpoint_samples()
    rank = {m: i for i, m in enumerate(method_order((f[0] for f in found), methods))}
    items = []
    for method, seed, step, path in sorted(found, key=lambda f: (rank[f[0]], f[1], f[2])):
        try:
            with np.load(path) as z:
                frames = z["frames"]
                seeds = [int(s) for s in z["seeds"][:k]] if "seeds" in z.files else None
                caps = [str(c) for c in z["captions"][:k]] if "captions" in z.files else None
            image = filmstrip(frames, k, scale)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("gallery: skipping %s (%s)", path, exc)
            continue
        stem = f"{BASE}_step{step:06d}" if method == BASE else f"{slug(method)}_seed{seed}_step{step:06d}"
        target = out_dir / f"{stem}.png"
        Image.fromarray(image).save(target)
        shown = min(k, len(frames))
        if caps is None and captions is not None and len(captions) >= shown:
            caps = [str(c) for c in captions[:shown]]
        items.append(GalleryItem(method, seed, step, target, shown, len(frames), seeds, caps))
    return items
