"""`fvd`: Frechet distance between clip features of generated videos and real clips.

A set metric. ``update`` extracts one clip's features per video and keeps them by video
id; ``compute`` fits a Gaussian to them (in sorted video-id order, so any split of the
videos across processes gives the same number to the last bit) and compares it with
reference statistics of real clips.

Extractors (``features``):
- ``tiny``: the tiny world's clip classifier; the reference is ``n_ref`` clips of the
  world's eval split (label: about the tiny world only).
- ``i3d``: I3D Kinetics-400 (pytorch-i3d layout of DeepMind's checkpoint),
  ``i3d-torchscript``: StyleGAN-V's TorchScript detector (the only one that reproduces
  StyleGAN-V's numbers), ``videomae-v2``: VideoMAE-v2 ViT-g fine-tuned on SSv2 (the
  content-debiased FVD's extractor), ``videomae-v2-k710``: the K710 fine-tune. The
  reference is ``ref``: a folder of real videos, or ``split:NAME``, the first ``n_ref``
  clips of split NAME of the preset's real footage (its `data`: resolution, frame rate and
  clip length as the generated videos), both processed with the same protocol.

Named protocols (``protocol``; its name, sample counts and offsets are stored with every
value and in the reference-cache key):
- ``stylegan-v`` (default for the real extractors): StyleGAN-V's ``fvd2048_16f``
  (src/metrics/metric_main.py, frechet_video_distance.py, metric_utils.py, training/dataset.py):
  2048 generated and 2048 real clips of 16 consecutive frames; generated clips from frame 0,
  each real clip from a random offset drawn uniformly in [0, len - 16] (upstream: Python
  ``random.randint`` in the data loader, unseeded; here a Generator seeded with ``seed``, drawn
  in reference order, so the offsets are reproducible); with ``i3d-torchscript`` the raw uint8
  clip (B, 3, T, H, W) goes to the detector with ``rescale=True, resize=True,
  return_features=True`` (its own resize); biased covariance (divide by N, as upstream's
  ``FeatureStats.get_mean_cov``). The other real extractors have no such detector path: they
  take the harness resize below, recorded as a departure (``exact: false``).
- ``harness``: the earlier behaviour, options free: ``n_ref`` reference clips (512), ``clip_len``
  frames every ``stride`` from ``offset`` for real and generated clips alike, ``resize``
  (``resize``: squash to 224x224, or ``crop``: shorter side to 224, centre crop, both bilinear
  here), the extractor with its own resize and rescale off, unbiased covariance (N - 1).
- ``tiny``: the tiny features' only protocol (all frames, native size, unbiased covariance).
Fewer clips than a protocol's sample count (``n_gen``, ``n_ref``) are computed but flagged in
the value's extras (``incomplete``) with a warning. ``output``: I3D ``logits`` (400-d, the FVD
convention) or ``pooled`` (1024-d). A video shorter than the clip is skipped with its reason
and counted. Reference statistics are cached on disk under a key of the extractor identity,
the protocol and the reference set, so they are computed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.world import WorldCondition, make_clip
from harness.scorers.backends.features import TINY_WEIGHTS, get_feature_backend
from metrics.base import Metric, MetricSpec, VideoSample
from metrics.frechet import FeatureStats, frechet_from_stats
from metrics.registry import register

TINY_PROTOCOL = {"clip": "all frames, stride 1", "resize": "none (native resolution)", "features": "pooled 32-d"}
SPLIT_REF = "split:"  # ref=split:NAME: the preset's own real clips of split NAME
REAL_EXTRACTORS = ("i3d", "i3d-torchscript", "videomae-v2", "videomae-v2-k710")
# Fixed settings of each named protocol; ``harness`` fixes none (its options keep their defaults).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "stylegan-v": {"n_gen": 2048, "n_ref": 2048, "clip_len": 16, "stride": 1, "offset": 0, "real_offset": "random",
                   "ddof": 0},
    "harness": {"n_gen": None, "real_offset": "fixed", "ddof": 1},
    "tiny": {"n_gen": None, "real_offset": "fixed", "ddof": 1},
}
HARNESS_DEFAULTS = {"n_ref": 512, "clip_len": 16, "stride": 1, "offset": 0, "resize": "resize"}


def cache_dir() -> Path:
    root = os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness"
    return Path(root) / "fvd_reference"


def take_clip(frames: np.ndarray, clip_len: int, stride: int, offset: int) -> np.ndarray | None:
    """``clip_len`` frames every ``stride`` from ``offset``, or None when the video is too short."""
    idx = offset + stride * np.arange(clip_len)
    return None if idx[-1] >= len(frames) else frames[idx]


def draw_offset(rng: np.random.Generator, length: int, span: int) -> int | None:
    """A start uniform in [0, length - span] (StyleGAN-V's ``random.randint(0, L - n*s + s - 1)``), or None
    for a video shorter than ``span`` (upstream discards those before drawing, so no draw is used)."""
    return int(rng.integers(0, length - span + 1)) if length >= span else None


def random_offsets(lengths: list[int], span: int, seed: int) -> list[int | None]:
    """The offsets of videos of ``lengths`` frames, drawn in order from a Generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return [draw_offset(rng, n, span) for n in lengths]


def preprocess_clip(clip: np.ndarray, size: int, resize: str) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float in [0, 1] (bilinear, antialias off)."""
    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    if resize == "resize":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    scale = size / min(h, w)
    hh, ww = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False, antialias=False)
    top, left = (hh - size) // 2, (ww - size) // 2
    return x[..., top:top + size, left:left + size]


def _real_extractor(features: str, output: str):
    if features in ("i3d", "i3d-torchscript"):
        from harness.scorers.backends.real.i3d import I3DExtractor

        weight = "i3d_kinetics400" if features == "i3d" else "i3d_torchscript"
        return I3DExtractor(weight=weight, output=output)
    from harness.scorers.backends.real.videomae import VideoMAEv2Extractor

    # Content-debiased FVD (Ge et al. 2024, the cd-fvd package) reads the SSv2-finetuned ViT-g.
    weight = "videomae_v2_g_ssv2" if features == "videomae-v2" else "videomae_v2_g_k710"
    return VideoMAEv2Extractor(weight=weight, output=output)


@register(MetricSpec(
    name="fvd", version="2", higher_is_better=False, kind="set", aggregation="frechet", vbench_range=None,
    inputs=("frames", "condition"), weights=(f"tiny/{TINY_WEIGHTS[1]}", "i3d_kinetics400", "videomae_v2_g_k710"),
    description="Frechet distance of clip features, generated vs real clips",
    departures="features=tiny: the tiny world's clip classifier, not I3D or VideoMAE-v2 (numbers are about the "
               "tiny world only); the real extractors follow the protocol recorded with each value",
    group="distribution",
))
class FVD(Metric):
    def __init__(self, features: str = "tiny", n_ref: int | None = None, ref: str | None = None,
                 clip_len: int | None = None, stride: int | None = None, offset: int | None = None,
                 resize: str | None = None, output: str | None = None, protocol: str | None = None,
                 seed: int = 0) -> None:
        if features != "tiny" and features not in REAL_EXTRACTORS:
            raise ValueError(f"fvd: features must be tiny or one of {REAL_EXTRACTORS}, got {features!r}")
        protocol = protocol or ("tiny" if features == "tiny" else "stylegan-v")
        if protocol not in PROTOCOLS:
            raise ValueError(f"fvd: protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        if (protocol == "tiny") != (features == "tiny"):
            raise ValueError(f"fvd: protocol {protocol!r} does not apply to features={features}; the tiny features "
                             "take protocol=tiny, the real extractors stylegan-v or harness")
        given = {"n_ref": n_ref, "clip_len": clip_len, "stride": stride, "offset": offset, "resize": resize}
        fixed = PROTOCOLS[protocol]
        clash = {k: v for k, v in given.items() if v is not None and k in fixed and v != fixed[k]}
        if protocol == "stylegan-v" and resize is not None:
            clash["resize"] = resize  # the detector resizes (or, for the other extractors, the harness default)
        if clash:
            want = {k: fixed.get(k, "the detector's (or the harness default)") for k in clash}
            raise ValueError(f"fvd: protocol={protocol} fixes {sorted(clash)} ({want}); got {clash}. "
                             "Use protocol=harness to choose them freely")
        opts = {k: given[k] if given[k] is not None else fixed.get(k, HARNESS_DEFAULTS[k]) for k in given}
        n_ref, clip_len, stride, offset, resize = (opts[k] for k in ("n_ref", "clip_len", "stride", "offset",
                                                                      "resize"))
        self.protocol_name, self.seed = protocol, int(seed)
        self.n_gen, self.ddof, self.real_offset = fixed["n_gen"], fixed["ddof"], fixed["real_offset"]
        if resize not in ("resize", "crop"):
            raise ValueError(f"fvd: resize must be 'resize' or 'crop', got {resize!r}")
        if clip_len < 1 or stride < 1 or offset < 0:
            raise ValueError(f"fvd: need clip_len >= 1, stride >= 1, offset >= 0 (got {clip_len}, {stride}, {offset})")
        self.features, self.n_ref, self.ref = features, n_ref, ref
        self.clip_len, self.stride, self.offset, self.resize = clip_len, stride, offset, resize
        # StyleGAN-V's detector path: raw uint8 clips, the TorchScript detector's own rescale and resize
        self.detector_resize = protocol == "stylegan-v" and features == "i3d-torchscript"
        if features.startswith("i3d") and clip_len < 9:
            raise ValueError(f"fvd[features={features}]: I3D downsamples time by 8 and pools over 2 steps, so it "
                             f"needs clip_len >= 9 (got {clip_len}; the reference protocol uses 16)")
        if features == "tiny":
            self.backend = get_feature_backend("tiny")
            self.extractor = None
        else:
            if not ref:
                raise ValueError(f"fvd[features={features}] needs ref=<folder of real videos> or ref=split:<name> "
                                 "(the preset's real clips) for its reference statistics (e.g. --set "
                                 "eval.backends.fvd.ref=data/real)")
            if ref.startswith(SPLIT_REF):
                if not ref[len(SPLIT_REF):]:
                    raise ValueError(f"fvd: ref={ref!r} names no split; e.g. ref=split:eval")
            elif not Path(ref).is_dir():
                raise FileNotFoundError(f"fvd: reference folder {ref} does not exist")
            self.extractor = _real_extractor(features, output or ("logits" if features.startswith("i3d")
                                                                  else "fc_norm"))
        self._source: tuple[Any, list[Any]] | None = None  # ref=split:NAME: (the preset's dataset, clips)
        self.ref_offsets: list[int] = []  # the real clips' starts, set by reference()
        self.n_generated: int | None = None  # set_generated(): the generated count in the identity
        self.reset()

    @property
    def ref_split(self) -> str | None:
        return self.ref[len(SPLIT_REF):] if self.ref and self.ref.startswith(SPLIT_REF) else None

    def use_source(self, preset) -> None:
        """Bind ``ref=split:NAME`` to ``preset``'s real footage (the evaluator calls this for every
        metric that has it); a folder or tiny reference needs nothing."""
        if self.ref_split is None or self.extractor is None:
            return
        from harness.data.source import dataset_for

        data = dataset_for(preset)
        if data is None:
            raise ValueError(f"fvd: ref={self.ref} reads the preset's real clips, but preset {preset.name!r} has no "
                             "`data` (the synthetic world); use ref=<folder of real videos>, or features=tiny")
        try:
            clips = data.split(self.ref_split)
        except KeyError as exc:
            raise ValueError(f"fvd: ref={self.ref}: {exc.args[0]}") from exc
        if len(clips) < 2:
            raise ValueError(f"fvd: ref={self.ref}: split {self.ref_split!r} of {data.root} has {len(clips)} clips; "
                             "need at least 2 (check data.splits)")
        self._source = (data, clips[:self.n_ref])

    @property
    def needs_condition(self) -> bool:
        """Only the tiny extractor's reference comes from the world the videos were generated in."""
        return self.extractor is None

    # -- identity and protocol ------------------------------------------------------------------
    def set_generated(self, n: int | None) -> None:
        """The number of generated videos the next values are computed on (the evaluator sets it per eval
        set). FVD is biased by the sample count, so it is part of the identity (``gen=N``): a value on 48
        videos and one on 192 are never stored, tabled or plotted as one metric."""
        self.n_generated = None if n is None else int(n)

    def min_videos(self) -> int:
        """The fewest generated videos whose feature covariance is not singular: the feature dimension + 1.
        On fewer the value is unreliable (frechet.py warns); the evaluator then computes FVD on the final
        eval set only when a checkpoint's intermediate set is smaller (harness/evaluate.py)."""
        dim = self.extractor.dim if self.extractor is not None else self.backend.clip_classifier.features.out_features
        return int(dim) + 1

    def identity_options(self) -> dict[str, object]:
        gen = {} if self.n_generated is None else {"gen": self.n_generated}
        return {**self._identity_options(), **gen}

    def _identity_options(self) -> dict[str, object]:
        if self.extractor is None:
            return {"features": f"{self.features}-clip", "n_ref": self.n_ref}
        ref = self.ref if self.ref_split is not None else Path(self.ref).name
        if self.protocol_name == "stylegan-v":
            return {"features": self.extractor.identity, "protocol": "stylegan-v", "ref": ref, "seed": self.seed}
        return {"features": self.extractor.identity, "protocol": self.protocol_name, "ref": ref,
                **({"n_ref": self.n_ref} if self.ref_split else {}),
                "clip": f"{self.clip_len}f-s{self.stride}-o{self.offset}", "resize": self.resize}

    @property
    def span(self) -> int:
        return self.stride * (self.clip_len - 1) + 1

    def protocol(self) -> dict[str, Any]:
        if self.extractor is None:
            return {"name": "tiny", **TINY_PROTOCOL}
        if self.detector_resize:
            prep = "raw uint8 (B, 3, T, H, W) to the detector with rescale=True, resize=True, return_features=True"
        else:
            prep = f"{self.resize} to 224 (bilinear, antialias off), then the extractor with its resize off"
        out = {"name": self.protocol_name, "extractor": self.extractor.identity, "n_gen": self.n_gen,
               "n_ref": self.n_ref if (self.ref_split or self.protocol_name == "stylegan-v") else "all",
               "clip_len": self.clip_len, "stride": self.stride, "offset": self.offset,
               "real_offset": (f"random, uniform in [0, len - {self.span}], seed {self.seed}"
                               if self.real_offset == "random" else self.offset),
               "preprocess": prep, "features": f"{self.extractor.dim}-d",
               "covariance": "biased (N)" if self.ddof == 0 else "unbiased (N - 1)"}
        if self.protocol_name == "stylegan-v":
            out["exact"] = self.detector_resize
            if not self.detector_resize:
                out["departure"] = (f"{self.features} has no detector resize path: StyleGAN-V's counts, offsets "
                                    "and covariance with the harness resize; only i3d-torchscript is exact")
        else:
            out["resize"] = f"{self.resize} to 224 (bilinear, antialias off)"
        return out

    # -- per-video features --------------------------------------------------------------------
    def reset(self) -> None:
        self.feats: dict[str, np.ndarray] = {}
        self.skipped: dict[str, str] = {}
        self.world = None
        self._last: dict[str, Any] = {}

    def _clip_features(self, frames: np.ndarray, offset: int | None = None) -> np.ndarray | None:
        clip = take_clip(frames, self.clip_len, self.stride, self.offset if offset is None else offset)
        if clip is None:
            return None
        if self.detector_resize:  # StyleGAN-V: the uint8 clip as decoded, the detector resizes and rescales
            return self.extractor.detector_call(torch.from_numpy(np.ascontiguousarray(clip))[None])[0].double().numpy()
        x = preprocess_clip(clip, 224, self.resize)[None]  # (1, T, 3, 224, 224) in [0, 1]
        if self.features.startswith("i3d"):
            x = x * 2.0 - 1.0  # I3D (TF-hub and its ports) reads [-1, 1]
        return self.extractor(x)[0].double().cpu().numpy()

    def update(self, sample: VideoSample) -> dict[str, Any]:
        if sample.video_id in self.feats or sample.video_id in self.skipped:
            raise ValueError(f"{self.identity}: video {sample.video_id!r} was already scored")
        if self.extractor is None:
            if not isinstance(sample.condition, WorldCondition):
                raise ValueError(f"fvd[features=tiny] needs tiny-world videos with their condition; "
                                 f"{sample.video_id!r} has none (use features=i3d with ref=<real videos>)")
            self.world = sample.condition.world
            feat = self.backend.clip_features(sample.frames)
        else:
            feat = self._clip_features(sample.frames)
            if feat is None:
                need = self.offset + self.stride * (self.clip_len - 1) + 1
                self.skipped[sample.video_id] = f"{sample.num_frames} frames < {need} needed"
                return {"video_id": sample.video_id, "value": None, "weight": 0.0,
                        "extras": {"skipped": self.skipped[sample.video_id]}}
        self.feats[sample.video_id] = np.asarray(feat, np.float64)
        return {"video_id": sample.video_id, "value": None, "weight": 1.0, "extras": {}}

    # -- reference -----------------------------------------------------------------------------
    def _reference_key(self) -> dict[str, Any]:
        if self.extractor is None:
            return {"weights": self.backend.fingerprint(), "protocol": TINY_PROTOCOL, "n_ref": self.n_ref,
                    "world": self.world.model_dump(mode="json"), "split": "eval"}
        if self.ref_split is not None:
            data, clips = self._bound_source()
            return {"protocol": self.protocol(), "data": data.config.model_dump(mode="json"),
                    "clips": [(c.video_id, c.start, c.num_frames, data.fingerprint(c.video_id)) for c in clips]}
        files = sorted(Path(self.ref).glob("*.mp4"))
        listing = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return {"protocol": self.protocol(), "files": listing}

    def _bound_source(self) -> tuple[Any, list[Any]]:
        if self._source is None:
            raise ValueError(f"fvd: ref={self.ref} is the preset's real clips, but no preset was bound "
                             "(use_source); run it through `harness run` / `harness eval` with a real-footage preset")
        return self._source

    def _real_features(self, videos) -> tuple[list[np.ndarray], list[int]]:
        """Features of real videos (an iterable of frame arrays, in reference order) and each clip's start:
        ``offset``, or StyleGAN-V's seeded random start; short videos are skipped; stylegan-v stops at n_ref."""
        rng = np.random.default_rng(self.seed)
        feats: list[np.ndarray] = []
        offsets: list[int] = []
        for frames in videos:
            off = draw_offset(rng, len(frames), self.span) if self.real_offset == "random" else self.offset
            feat = None if off is None else self._clip_features(frames, off)
            if feat is not None:
                feats.append(feat)
                offsets.append(off)
            if self.protocol_name == "stylegan-v" and len(feats) >= self.n_ref:
                break
        return feats, offsets

    def reference(self) -> FeatureStats:
        key = hashlib.sha256(json.dumps(self._reference_key(), sort_keys=True).encode()).hexdigest()[:20]
        path = cache_dir() / f"{key}.npz"
        self.ref_offsets = []
        if path.is_file():
            with np.load(path) as z:
                self.ref_offsets = z["offsets"].tolist() if "offsets" in z.files else []
                return FeatureStats.from_state({k: z[k] for k in z.files if k != "offsets"})
        feats = []
        offsets: list[int] = []
        if self.extractor is None:
            feats = [self.backend.clip_features(make_clip(self.world, "eval", i).frames) for i in range(self.n_ref)]
        elif self.ref_split is not None:
            data, clips = self._bound_source()
            feats, offsets = self._real_features(data.clip(c) for c in clips)
            if len(feats) < 2:
                raise ValueError(f"fvd: ref={self.ref} has {len(feats)} clips of >= {self.clip_len} frames; need at "
                                 "least 2 (lower clip_len, or raise data.num_frames)")
        else:
            from harness.data.video_io import read_video

            feats, offsets = self._real_features(read_video(f) for f in sorted(Path(self.ref).glob("*.mp4")))
            if len(feats) < 2:
                raise ValueError(f"fvd: the reference folder {self.ref} has {len(feats)} usable videos "
                                 f"(of >= {self.clip_len} frames); need at least 2")
        stats = FeatureStats(len(feats[0]))
        stats.update(np.stack(feats))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial.npz")
        np.savez(tmp, **stats.state(), **({"offsets": np.asarray(offsets, np.int64)} if offsets else {}))
        os.replace(tmp, path)
        self.ref_offsets = offsets
        return stats

    def compute(self) -> float:
        if not self.feats:
            raise ValueError(f"fvd: no usable videos ({len(self.skipped)} skipped: "
                             f"{'; '.join(f'{k}: {v}' for k, v in list(self.skipped.items())[:3])})")
        stats = FeatureStats(len(next(iter(self.feats.values()))))
        stats.update(np.stack([self.feats[k] for k in sorted(self.feats)]))
        ref = self.reference()
        incomplete = {}
        if self.n_gen is not None and stats.n < self.n_gen:
            incomplete["n"] = f"{stats.n} generated clips < {self.n_gen} of protocol {self.protocol_name}"
        if (self.protocol_name == "stylegan-v" or self.ref_split is not None) and ref.n < self.n_ref:
            incomplete["n_ref"] = f"{ref.n} reference clips < {self.n_ref} of protocol {self.protocol_name}"
        if incomplete:
            warnings.warn(f"{self.identity}: fewer clips than the protocol asks; the value is flagged "
                          f"incomplete ({'; '.join(incomplete.values())})", stacklevel=2)
        self._last = {"n": stats.n, "n_ref": ref.n, "dim": stats.dim, "protocol": self.protocol(),
                      "incomplete": incomplete, "ref_offsets": list(self.ref_offsets),
                      "n_skipped": len(self.skipped), "skipped": dict(self.skipped)}
        return frechet_from_stats(stats, ref, ddof=self.ddof)

    @property
    def compute_extras(self) -> dict[str, Any]:
        return dict(self._last)

    def state(self) -> dict[str, Any]:
        return {"identity": self.identity, "features": {k: v.tolist() for k, v in self.feats.items()},
                "skipped": dict(self.skipped),
                "world": None if self.world is None else self.world.model_dump(mode="json")}

    def merge(self, states: list[dict[str, Any]]) -> None:
        for st in states:
            if st["identity"] != self.identity:
                raise ValueError(f"cannot merge state of {st['identity']} into {self.identity}")
            dup = (set(st["features"]) | set(st["skipped"])) & (set(self.feats) | set(self.skipped))
            if dup:
                raise ValueError(f"{self.identity}: videos scored twice across states: {sorted(dup)[:5]}")
            self.feats.update({k: np.asarray(v, np.float64) for k, v in st["features"].items()})
            self.skipped.update(st["skipped"])
            if self.world is None and st.get("world") is not None:
                from harness.data.world import WorldConfig

                self.world = WorldConfig(**st["world"])
