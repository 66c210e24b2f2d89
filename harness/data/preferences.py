"""Preference pairs: built from base-model rollouts and a judge, or imported from a file.

A pair set holds, per condition, the conditioning image and caption and the chosen
and rejected videos (uint8 frames, or latents when imported that way), with the
judge's scores. Rollout pairs follow the PG-DPO recipe: N videos per condition from
the reference model, the best-scored one is chosen, the worst rejected. The judge is
the caller's (the role VideoAlign's overall score plays in the paper): on the tiny
world the methods' default is the latent reward model fitted to rater labels
(trainers/preference.py), never the evaluation oracle, which judges only the held-out
probe pairs and the named ``judge: oracle`` variants.

Pair sets are cached as ``.npz`` with their provenance; the cache key covers
everything that changes the pairs (model weights, world, sampler, counts, seed, judge).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.data.oracle import judge
from harness.data.source import clip_batch
from harness.data.video_io import frames_to_tensor, tensor_to_frames
from harness.data.world import WorldConfig
from harness.models.base import ModelAdapter
from harness.sampling import SamplerConfig, sample_sharded

PAIRS_FORMAT = 1


class PairsError(ValueError):
    """A pair set cannot be built or loaded; the message names the rows or file."""


@dataclass
class PairSet:
    first_frames: np.ndarray  # (N, H, W, 3) uint8: the conditioning image of each pair
    captions: list[str]
    chosen: np.ndarray  # (N, T, H, W, 3) uint8 frames, or (N, ...) float latents
    rejected: np.ndarray
    chosen_score: np.ndarray  # (N,) judge scores (NaN when imported without scores)
    rejected_score: np.ndarray
    sources: list[str]  # where each pair came from (condition index or file:line)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.captions)
        for name in ("first_frames", "chosen", "rejected", "chosen_score", "rejected_score", "sources"):
            if len(getattr(self, name)) != n:
                raise PairsError(f"pair set fields disagree: {n} captions but {len(getattr(self, name))} {name}")
        if self.chosen.shape != self.rejected.shape:
            raise PairsError(f"chosen {self.chosen.shape} and rejected {self.rejected.shape} differ in shape")

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def latents(self) -> bool:
        """True when chosen/rejected are model latents rather than uint8 frames."""
        return self.chosen.dtype != np.uint8

    def subset(self, indices: Sequence[int]) -> PairSet:
        idx = list(indices)
        return PairSet(self.first_frames[idx], [self.captions[i] for i in idx], self.chosen[idx],
                       self.rejected[idx], self.chosen_score[idx], self.rejected_score[idx],
                       [self.sources[i] for i in idx], self.provenance)

    def tensors(self, adapter: ModelAdapter, indices: Sequence[int]):
        """(x_chosen, x_rejected, conditioning) in the model's space for pairs ``indices``."""
        idx = list(indices)

        def encode(arr: np.ndarray) -> torch.Tensor:
            if self.latents:
                return torch.as_tensor(arr[idx], dtype=torch.float32)
            return adapter.encode_video(torch.stack([frames_to_tensor(v) for v in arr[idx]]))

        return encode(self.chosen), encode(self.rejected), self.condition(adapter, idx)

    def condition(self, adapter: ModelAdapter, indices: Sequence[int]):
        """The conditioning of pairs ``indices`` alone (no video encoded)."""
        idx = list(indices)
        first = torch.stack([frames_to_tensor(f[None])[:, 0] for f in self.first_frames[idx]])
        return adapter.encode_condition(first, [self.captions[i] for i in idx])

    # -- persistence -----------------------------------------------------------------
    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(tmp, first_frames=self.first_frames, chosen=self.chosen, rejected=self.rejected,
                            chosen_score=self.chosen_score, rejected_score=self.rejected_score,
                            meta=np.asarray(json.dumps({"format": PAIRS_FORMAT, "captions": self.captions,
                                                        "sources": self.sources,
                                                        "provenance": self.provenance})))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> PairSet:
        try:
            with np.load(path) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in ("first_frames", "chosen", "rejected", "chosen_score", "rejected_score")}
        except (OSError, ValueError, KeyError) as exc:
            raise PairsError(f"cannot read pair set {path} ({exc}); delete it to rebuild it") from exc
        if meta.get("format") != PAIRS_FORMAT:
            raise PairsError(f"{path} has pair-set format {meta.get('format')}, expected {PAIRS_FORMAT}; "
                             "delete it to rebuild it")
        return cls(captions=meta["captions"], sources=meta["sources"], provenance=meta["provenance"], **arrays)


# -- judges ------------------------------------------------------------------------------
Judge = Callable[[np.ndarray, object], float]  # (frames (T,H,W,3) uint8, condition) -> score
# (videos (N,T,H,W,3) uint8, first frames (N,H,W,3) uint8, captions) -> (N,) scores: a learned judge
BatchJudge = Callable[[np.ndarray, np.ndarray, list[str]], np.ndarray]


def oracle_score(world: WorldConfig) -> Judge:
    """The tiny world's oracle as a scalar: mean of sprite integrity and motion adherence."""

    def score(frames: np.ndarray, spec: object) -> float:
        j = judge(frames, spec, world)  # type: ignore[arg-type]
        parts = [v for v in (j.integrity, j.motion_adherence) if np.isfinite(v)]
        return float(np.mean(parts)) if parts else float("nan")

    return score


def rollout_key(weights_digest: str, world: WorldConfig, split: str, conditions: int, per_condition: int,
                sampler: SamplerConfig, seed: int, judge_name: str, start: int = 0) -> str:
    fields = {"weights": weights_digest, "world": world.model_dump(mode="json"), "split": split,
              "conditions": conditions, "per_condition": per_condition, "sampler": sampler.model_dump(mode="json"),
              "seed": seed, "judge": judge_name, "format": PAIRS_FORMAT}
    if start:  # conditions start..start+conditions-1; keyed only when set, so earlier caches stay valid
        fields["start"] = start
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_rollout_pairs(adapter: ModelAdapter, world: WorldConfig, sampler: SamplerConfig, *,
                        split: str = "prompts", conditions: int = 64, per_condition: int = 4, seed: int = 0,
                        judge_fn: Judge | None = None, batch_size: int = 32,
                        show_progress: bool = True, start: int = 0, batch_judge: BatchJudge | None = None,
                        judge_name: str = "oracle") -> PairSet:
    """Sample ``per_condition`` videos per condition; best = chosen, worst = rejected.

    The conditions are clips ``start`` .. ``start + conditions - 1`` of ``split``. The judge is
    ``batch_judge`` (a learned model scoring videos from what a model sees: frames, first frame and
    caption) when given, else ``judge_fn`` (per video, with its condition; default: the oracle).
    Conditions whose best and worst scores tie carry no preference and are dropped (counted in the
    provenance).
    """
    if per_condition < 2:
        raise PairsError(f"per_condition must be at least 2 to form a pair, got {per_condition}")
    judge_fn = judge_fn or oracle_score(world)
    batch = clip_batch(world, split, range(start, start + conditions))
    # Video k of condition i (clip start + i) gets seed (seed, start + i, k): independent of batching.
    flat = [(i, k) for i in range(conditions) for k in range(per_condition)]
    seeds = [int(np.random.SeedSequence([seed, start + i, k]).generate_state(1)[0] & 0x7FFFFFFF) for i, k in flat]
    def cond_for(rows: list[int]):
        cond_idx = [flat[r][0] for r in rows]
        return adapter.encode_condition(batch.first_frames[cond_idx], [batch.captions[i] for i in cond_idx])

    # Rollouts come from the reference model (the policy with its adapters off), split over the ranks.
    with (torch.no_grad(), adapter.reference() if adapter.has_lora else contextlib.nullcontext(),
          tqdm(total=len(flat), desc="preference rollouts", disable=not show_progress, leave=False) as bar):
        videos = sample_sharded(adapter, cond_for, seeds, sampler, decode=True, batch_size=batch_size,
                                on_batch=bar.update)
    frames = np.stack([tensor_to_frames(v) for v in videos])
    if batch_judge is not None:
        owners = [i for i, _ in flat]
        scores = np.asarray(batch_judge(frames, batch.frames[owners, 0], [batch.captions[i] for i in owners]),
                            dtype=np.float64)
    else:
        scores = np.asarray([judge_fn(frames[n], batch.specs[i]) for n, (i, _) in enumerate(flat)])
    scores = scores.reshape(conditions, per_condition)
    keep, chosen, rejected = [], [], []
    for i in range(conditions):
        s = np.where(np.isfinite(scores[i]), scores[i], np.nan)
        if np.all(np.isnan(s)) or np.nanmax(s) == np.nanmin(s):
            continue
        keep.append(i)
        chosen.append(i * per_condition + int(np.nanargmax(s)))
        rejected.append(i * per_condition + int(np.nanargmin(s)))
    if not keep:
        raise PairsError(f"no condition of {conditions} gave distinct best and worst scores")
    provenance = {"source": "rollouts", "judge": judge_name, "split": split, "start": start,
                  "conditions": conditions,
                  "per_condition": per_condition,
                  "seed": seed, "sampler": sampler.model_dump(mode="json"), "dropped_ties": conditions - len(keep),
                  "score_mean": float(np.nanmean(scores)), "pairs": len(keep)}
    return PairSet(
        first_frames=batch.frames[keep, 0], captions=[batch.captions[i] for i in keep],
        chosen=frames[chosen], rejected=frames[rejected],
        chosen_score=scores.reshape(-1)[chosen], rejected_score=scores.reshape(-1)[rejected],
        sources=[f"{split}:{start + i}" for i in keep], provenance=provenance,
    )


def footage_key(weights_digest: str, data: dict, split: str, conditions: int, sampler: SamplerConfig,
                seed: int, start: int = 0) -> str:
    fields = {"weights": weights_digest, "data": data, "split": split, "conditions": conditions,
              "sampler": sampler.model_dump(mode="json"), "seed": seed, "source": "footage", "format": PAIRS_FORMAT}
    if start:  # keyed only when set, so earlier caches stay valid
        fields["start"] = start
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_footage_pairs(adapter: ModelAdapter, preset, sampler: SamplerConfig, *, split: str, conditions: int,
                        seed: int = 0, batch_size: int = 8, show_progress: bool = True, start: int = 0) -> PairSet:
    """Pairs without a judge, for real footage (which has no oracle): the real clip is chosen and
    one sample of the reference model from its first frame and caption is rejected (real data
    preferred to the model's own, as in SHIFT's discriminators). Scores are NaN. The clips are
    ``start`` .. ``start + conditions - 1`` of ``split`` (wrapping around the split, as every index does)."""
    batch = clip_batch(preset, split, range(start, start + conditions))
    seeds = [int(np.random.SeedSequence([seed, start + i]).generate_state(1)[0] & 0x7FFFFFFF)
             for i in range(conditions)]

    def cond_for(rows: list[int]):
        return adapter.encode_condition(batch.first_frames[rows], [batch.captions[i] for i in rows])

    with (torch.no_grad(), adapter.reference() if adapter.has_lora else contextlib.nullcontext(),
          tqdm(total=conditions, desc="footage pairs", disable=not show_progress, leave=False) as bar):
        videos = sample_sharded(adapter, cond_for, seeds, sampler, decode=True, batch_size=batch_size,
                                on_batch=bar.update)
    nan = np.full(conditions, np.nan)
    return PairSet(
        first_frames=batch.frames[:, 0], captions=list(batch.captions), chosen=batch.frames,
        rejected=np.stack([tensor_to_frames(v) for v in videos]), chosen_score=nan, rejected_score=nan.copy(),
        sources=[f"{split}:{start + i}" for i in range(conditions)],
        provenance={"source": "footage", "split": split, "start": start, "conditions": conditions, "seed": seed,
                    "sampler": sampler.model_dump(mode="json"), "pairs": conditions,
                    "chosen": "the real clip", "rejected": "a reference-model sample from its first frame"},
    )


# -- importing pairs from a file ---------------------------------------------------------
PAIRS_FILE_EXTENSIONS = (".jsonl", ".json-lines", ".csv")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
LATENT_EXTENSIONS = (".npy",)


class _BadRow(Exception):
    """One row of a pairs file is unusable; the message is the reason."""


def _cell(row: dict, key: str) -> object:
    """The row's value for ``key``; None when absent, null or blank."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _score(row: dict, key: str) -> float:
    value = _cell(row, key)
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        raise _BadRow(f"{key} {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _BadRow(f"{key} {value!r} is not a number") from None


def _path_of(row: dict, key: str, base: Path) -> Path:
    value = row[key]
    if not isinstance(value, str):
        raise _BadRow(f"{key} must be a file path, got {value!r}")
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else base / path


def _video_kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    return "frames" if ext in VIDEO_EXTENSIONS else "latents" if ext in LATENT_EXTENSIONS else None


def _parse_row(row: object, base: Path) -> dict:
    """Validate a row's columns (no file is read): caption, chosen/rejected paths, image, scores."""
    if not isinstance(row, dict):
        raise _BadRow(f"expected an object with named columns, got {type(row).__name__}")
    paired = _cell(row, "chosen") is not None or _cell(row, "rejected") is not None
    labelled = any(_cell(row, k) is not None for k in ("video_a", "video_b", "label"))
    if paired and labelled:
        raise _BadRow("has both chosen/rejected and video_a/video_b/label columns; use one row format")
    required = ["caption", *(("video_a", "video_b", "label") if labelled else ("chosen", "rejected"))]
    missing = [k for k in required if _cell(row, k) is None]
    if missing:
        raise _BadRow(f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if labelled:
        label = str(row["label"]).strip().lower()
        if label not in ("a", "b"):
            raise _BadRow(f"label {row['label']!r} is not 'a' or 'b'")
        first, second = ("a", "b") if label == "a" else ("b", "a")
        chosen, rejected = _path_of(row, f"video_{first}", base), _path_of(row, f"video_{second}", base)
        chosen_score, rejected_score = _score(row, f"score_{first}"), _score(row, f"score_{second}")
    else:
        chosen, rejected = _path_of(row, "chosen", base), _path_of(row, "rejected", base)
        chosen_score, rejected_score = _score(row, "chosen_score"), _score(row, "rejected_score")
    kinds = {_video_kind(chosen), _video_kind(rejected)}
    for path in (chosen, rejected):
        if _video_kind(path) is None:
            raise _BadRow(f"{path}: unsupported video extension {path.suffix!r} (videos: "
                          f"{', '.join(VIDEO_EXTENSIONS)}; latents: {', '.join(LATENT_EXTENSIONS)})")
    image = _path_of(row, "image", base) if _cell(row, "image") is not None else None
    return {"caption": str(row["caption"]), "chosen": chosen, "rejected": rejected, "image": image,
            "chosen_score": chosen_score, "rejected_score": rejected_score,
            "kind": kinds.pop() if len(kinds) == 1 else "mixed"}


def _read_pairs_rows(path: Path, text: str) -> list[tuple[int, object]]:
    """(line number, row) for every non-blank data row; a malformed row is a _BadRow instance."""
    rows: list[tuple[int, object]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None:
            return rows
        header = [h.strip() for h in header]
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated:
            raise PairsError(f"{path}: the header repeats column(s) {', '.join(duplicated)}")
        line = reader.line_num + 1  # a record may span lines; it is reported by its first line
        for record in reader:
            if record and any(cell.strip() for cell in record):
                if len(record) > len(header):
                    rows.append((line, _BadRow(f"{len(record)} fields but the header has {len(header)}")))
                else:
                    rows.append((line, dict(zip(header, record, strict=False))))
            line = reader.line_num + 1
        return rows
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            try:
                rows.append((number, json.loads(raw)))
            except json.JSONDecodeError as exc:
                rows.append((number, _BadRow(f"malformed JSON ({exc.msg} at column {exc.colno})")))
    return rows


def import_pairs(path, *, resolution: int | tuple[int, int] | None = None,
                 num_frames: int | None = None) -> PairSet:
    """Load preference pairs from a JSONL or CSV file, skipping (with one warning) the rows that are unusable.

    Each row is either a pair row (``caption``, ``chosen``, ``rejected``, optional ``image``,
    ``chosen_score``, ``rejected_score``) or a labelled row (``caption``, ``video_a``, ``video_b``,
    ``label`` in {a, b} naming the preferred video, optional ``image``, ``score_a``, ``score_b``).
    Paths are relative to the file's directory unless absolute; videos are video files (frames)
    or ``.npy`` latents, never both in one file. Without ``image`` the chosen video's first frame
    conditions the pair (latent rows need an image). A row is skipped when a column is missing,
    a file is missing or corrupt, chosen and rejected are the same video, or the shapes disagree
    (with each other, with the image, with ``resolution``/``num_frames`` when given, or with the
    file's other pairs). When no row is usable a PairsError lists every bad row.
    """
    import cv2

    from harness.data.video_io import VideoReadError, read_video

    path = Path(path)
    if path.suffix.lower() not in PAIRS_FILE_EXTENSIONS:
        raise PairsError(f"{path}: unsupported pairs file extension {path.suffix!r}; "
                         f"expected one of {', '.join(PAIRS_FILE_EXTENSIONS)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PairsError(f"cannot read pairs file {path} ({exc})") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PairsError(f"{path} is not UTF-8 text ({exc})") from exc
    base = path.parent
    rows = _read_pairs_rows(path, text)
    if not rows:
        raise PairsError(f"{path} holds no pairs (empty file); the run refuses to start")

    bad: dict[int, str] = {}
    parsed: dict[int, dict] = {}
    for line, row in rows:
        try:
            if isinstance(row, _BadRow):
                raise row
            parsed[line] = _parse_row(row, base)
        except _BadRow as exc:
            bad[line] = str(exc)
    by_kind: dict[str, list[int]] = {}
    for line, p in parsed.items():
        by_kind.setdefault(p["kind"], []).append(line)
    if len(by_kind) > 1 or "mixed" in by_kind:
        names = {"frames": "video files", "latents": "latent .npy files", "mixed": "a video and a latent file"}
        parts = [f"{names[k]} (line{'s' if len(v) > 1 else ''} {', '.join(map(str, v))})"
                 for k, v in by_kind.items()]
        raise PairsError(f"{path} mixes {' and '.join(parts)}; a pair set holds video frames or latents, "
                         "not both; the run refuses to start")
    latents = "latents" in by_kind

    cache: dict[Path, np.ndarray | str] = {}

    def load(file: Path, image: bool = False) -> np.ndarray:
        key = file.resolve()
        if key not in cache:
            try:
                if image:
                    if not file.is_file():
                        raise _BadRow(f"{file}: no such image file")
                    bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
                    if bgr is None:
                        raise _BadRow(f"{file}: cannot read the image (not an image, or corrupt)")
                    cache[key] = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                elif latents:
                    if not file.is_file():
                        raise _BadRow(f"{file}: no such latent file")
                    try:
                        arr = np.load(file, allow_pickle=False)
                    except (OSError, ValueError, EOFError) as exc:
                        raise _BadRow(f"{file}: cannot read the latent file ({exc}); it is corrupt or truncated") \
                            from None
                    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim == 0:
                        raise _BadRow(f"{file}: expected a numeric latent array, got {getattr(arr, 'dtype', arr)} "
                                      f"{getattr(arr, 'shape', '')}")
                    arr = arr.astype(np.float32)
                    if not np.all(np.isfinite(arr)):
                        raise _BadRow(f"{file}: the latents hold NaN or infinite values")
                    cache[key] = arr
                else:
                    try:
                        cache[key] = read_video(file)
                    except VideoReadError as exc:
                        raise _BadRow(str(exc)) from None
            except _BadRow as exc:
                cache[key] = str(exc)
        value = cache[key]
        if isinstance(value, str):
            raise _BadRow(value)
        return value

    good: dict[int, tuple[dict, np.ndarray, np.ndarray, np.ndarray]] = {}
    for line, p in parsed.items():
        try:
            if p["chosen"].resolve() == p["rejected"].resolve():
                raise _BadRow(f"identical chosen and rejected (both are {p['chosen']})")
            chosen, rejected = load(p["chosen"]), load(p["rejected"])
            if chosen.shape != rejected.shape:
                raise _BadRow(f"mismatched conditions: chosen {p['chosen'].name} has shape {chosen.shape} but "
                              f"rejected {p['rejected'].name} has {rejected.shape}")
            if p["image"] is not None:
                image = load(p["image"], image=True)
            elif latents:
                raise _BadRow("missing required column image (latent pairs need the conditioning image)")
            else:
                image = chosen[0]
            if not latents:
                t, h, w = chosen.shape[:3]
                if image.shape != chosen.shape[1:]:
                    raise _BadRow(f"mismatched conditions: image {p['image'].name} is {image.shape} but the "
                                  f"videos' frames are {chosen.shape[1:]}")
                if num_frames is not None and t != num_frames:
                    raise _BadRow(f"mismatched conditions: the videos have {t} frames, expected {num_frames}")
            else:
                h, w = image.shape[:2]
            want = (resolution, resolution) if isinstance(resolution, int) else resolution
            if want is not None and (h, w) != tuple(want):
                what = "the image" if latents else "the videos"
                raise _BadRow(f"mismatched conditions: {what} {h}x{w}, expected {want[0]}x{want[1]}")
            if np.array_equal(chosen, rejected):
                raise _BadRow(f"identical chosen and rejected ({p['chosen'].name} and {p['rejected'].name} "
                              "have the same content)")
            good[line] = (p, image, chosen, rejected)
        except _BadRow as exc:
            bad[line] = str(exc)

    # Pairs are stacked into one array: rows whose shapes differ from the file's commonest are skipped.
    shapes = Counter((g[2].shape, g[1].shape) for g in good.values())
    if len(shapes) > 1:
        (common_video, common_image), _ = shapes.most_common(1)[0]
        for line, (_, image, chosen, _) in list(good.items()):
            if (chosen.shape, image.shape) != (common_video, common_image):
                bad[line] = (f"mismatched conditions: shape {chosen.shape} (image {image.shape}) differs from the "
                             f"file's other pairs, {common_video} (image {common_image})")
                del good[line]

    skipped = [{"line": line, "reason": bad[line]} for line in sorted(bad)]
    listing = "; ".join(f"line {s['line']}: {s['reason']}" for s in skipped)
    if not good:
        raise PairsError(f"{path}: none of its {len(rows)} rows is a usable pair, so the run refuses to start: "
                         f"{listing}")
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} of {len(rows)} rows: {listing}", stacklevel=2)
    lines = sorted(good)
    kept = [good[line] for line in lines]
    provenance = {"source": "file", "path": str(path), "sha256": hashlib.sha256(data).hexdigest(),
                  "rows": len(rows), "skipped": skipped, "pairs": len(kept)}
    return PairSet(
        first_frames=np.stack([k[1] for k in kept]).astype(np.uint8), captions=[k[0]["caption"] for k in kept],
        chosen=np.stack([k[2] for k in kept]), rejected=np.stack([k[3] for k in kept]),
        chosen_score=np.asarray([k[0]["chosen_score"] for k in kept], dtype=np.float64),
        rejected_score=np.asarray([k[0]["rejected_score"] for k in kept], dtype=np.float64),
        sources=[f"{path.name}:{line}" for line in lines], provenance=provenance,
    )
