"""Real footage: a folder of captioned videos, or DAVIS-style image sequences, cut into clips.

Two layouts (``VideoDataConfig.kind``):

* ``folder``: video files anywhere under ``root`` (mp4, mov, mkv, avi, webm, m4v, mpg) and a
  captions file (CSV or JSONL) with a ``video`` column (path relative to root, or a bare file
  name when it is unique; aliases ``path``/``file``) and a ``caption`` column (aliases
  ``text``/``prompt``). Every video needs a caption unless ``default_caption`` is set, and
  every caption row must name a file that exists: both mistakes are errors naming the files.
* ``davis``: ``root/JPEGImages/480p/<sequence>/00000.jpg ...`` (optional masks in
  ``root/Annotations/480p/<sequence>/00000.png``). Image sequences carry no timestamps: frame
  ``i`` is at ``i / source_fps`` (DAVIS is 24 fps). Without a captions file the caption is the
  sequence name with ``-`` replaced by spaces (or ``default_caption`` when set).

Time: every video is resampled to ``fps`` by source timestamps: output frame ``k`` is the
source frame nearest to ``t0 + k / fps`` (ties go to the earlier frame), for every ``k`` with
``t0 + k / fps`` before the end of the last source frame. Timestamps are exact fractions
(``pts * time_base``), so 24 fps -> 8 fps picks exactly every third frame.

Space: aspect-preserving resize so the frame covers (height, width) (``cv2.INTER_AREA`` when
shrinking, bilinear when enlarging), then a centre crop. Frames are uint8 RGB.

Clips: each resampled video is cut into clips of ``num_frames`` starting every ``clip_stride``
frames (default ``num_frames``: consecutive, non-overlapping). A video shorter than one clip is
skipped with a logged warning and listed in ``dataset.skipped`` as ``(file, reason)``.
Splits are by video (never by clip): a video's split comes from a hash of ``(seed, video id)``
against the cumulative ``splits`` fractions, so it is deterministic, stable when videos are
added, and clips of one video never cross splits. ``max_clips`` caps each split, keeping a
deterministic hash-chosen subset spread over its videos.

Caches:

* In memory, an LRU of ``memory_cache_videos`` resampled videos; a batch decodes each of its
  videos once whatever the LRU size.
* On disk, under ``cache_dir`` (default ``$HARNESS_DATA_CACHE`` or ``~/.cache/harness/clips``),
  one uncompressed ``.npz`` per video holding all its resampled, resized frames (every clip of
  the video is a slice of it), so a second epoch or a second run does not decode again. The
  file name is ``<video slug>.<hash of the absolute path>.<key>.npz``; the key hashes the
  file's size and mtime (for an image sequence: every frame file's name, size and mtime), the
  layout and the config fields that change pixels (fps, height, width, source_fps) and a
  format version. A changed file gets a new key: the stale entry is ignored and deleted when
  the new one is written. A small ``.json`` beside it records the frame count so building the
  index of a cached dataset does not read the videos. ``disk_cache: false`` turns it off;
  deleting the folder is always safe.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.data.batches import ClipBatch
from harness.data.video_io import frames_to_tensor

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when decoding, resampling or resizing changes pixels
CACHE_ENV = "HARNESS_DATA_CACHE"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_VIDEO_KEYS = ("video", "path", "file")
_CAPTION_KEYS = ("caption", "text", "prompt")
_FIX = "re-encode it with ffmpeg (ffmpeg -i {name} -c:v libx264 -pix_fmt yuv420p fixed.mp4) or remove it from {src}"


class VideoDataError(RuntimeError):
    """Real video data is missing, inconsistent or undecodable; the message names the file and the fix."""


class VideoDataConfig(BaseModel):
    """Where real footage lives and how it becomes clips."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["folder", "davis"]
    root: str
    captions: str | None = Field(None, description="CSV or JSONL captions file; a relative path may be under root")
    num_frames: int = Field(ge=1, description="frames per clip, at the target fps")
    fps: float = Field(gt=0, description="target frame rate; videos are resampled to it by source timestamps")
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    clip_stride: int | None = Field(None, ge=1, description="frames between clip starts at the target fps; "
                                    "default num_frames (non-overlapping)")
    max_clips: int | None = Field(None, ge=1, description="at most this many clips per split")
    default_caption: str | None = Field(None, description="caption for videos with none in the captions file")
    splits: dict[str, float] = Field(default_factory=lambda: {"finetune": 0.8, "eval": 0.2},
                                     description="fraction of videos (not clips) per split")
    seed: int = 0
    source_fps: float = Field(24.0, gt=0, description="frame rate of image sequences (DAVIS: 24)")
    davis_resolution: str = Field("480p", description="DAVIS resolution folder under JPEGImages/")
    cache_dir: str | None = Field(None, description=f"disk cache of decoded clips; default ${CACHE_ENV} "
                                  "or ~/.cache/harness/clips")
    disk_cache: bool = True
    memory_cache_videos: int = Field(8, ge=0, description="decoded videos kept in memory (LRU)")

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("splits must name at least one split")
        if any(f < 0 for f in value.values()):
            raise ValueError(f"split fractions must be >= 0, got {value}")
        total = sum(value.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total} ({value})")
        return value

    @property
    def stride(self) -> int:
        return self.clip_stride or self.num_frames


@dataclass(frozen=True)
class ClipRef:
    """One clip: ``num_frames`` frames of ``video_id`` from ``start`` (a frame index at ``fps``).

    Also the ``specs`` entry of the batches this module builds.
    """

    video_id: str
    start: int
    split: str
    caption: str
    num_frames: int
    fps: float

    @property
    def start_time(self) -> float:
        """Seconds from the video's first frame."""
        return self.start / self.fps


@dataclass(frozen=True)
class VideoEntry:
    video_id: str  # path relative to root (folder) or sequence name (davis)
    path: Path  # the file, or the sequence's frame folder
    caption: str
    split: str
    num_frames: int  # after resampling to the target fps


@dataclass(frozen=True)
class ClipIndex:
    """Every clip of the dataset, sorted by (video id, start); deterministic for a given config and files."""

    clips: tuple[ClipRef, ...]
    split_names: tuple[str, ...]

    def split(self, name: str) -> list[ClipRef]:
        if name not in self.split_names:
            raise KeyError(f"unknown split {name!r}; this dataset has {', '.join(self.split_names)}")
        return [c for c in self.clips if c.split == name]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.split_names, 0)
        for c in self.clips:
            out[c.split] += 1
        return out

    def rows(self) -> list[tuple[str, int, str]]:
        return [(c.video_id, c.start, c.split) for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)


# --------------------------------------------------------------------------- time and space


def _as_fraction(x: float) -> Fraction:
    return Fraction(x).limit_denominator(1_000_000)  # 29.97 -> 2997/100, 23.976... -> 24000/1001


def _frame_duration(times: Sequence[Fraction], fallback: Fraction) -> Fraction:
    steps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    return steps[(len(steps) - 1) // 2] if steps else fallback


def resample_positions(times: Sequence[Fraction], fps: Fraction, frame_duration: Fraction) -> list[int]:
    """Positions in ``times`` (sorted, distinct) of the frames nearest to ``t0 + k / fps``.

    One output frame per ``k >= 0`` with ``t0 + k / fps`` before ``times[-1] + frame_duration``;
    ties go to the earlier frame.
    """
    if not times:
        return []
    t0 = times[0]
    n = math.ceil((times[-1] + frame_duration - t0) * fps)
    out: list[int] = []
    j = 0
    for k in range(n):
        t = t0 + k / fps
        while j + 1 < len(times) and times[j + 1] <= t:
            j += 1
        nearer_next = j + 1 < len(times) and times[j + 1] - t < t - times[j]
        out.append(j + 1 if nearer_next else j)
    return out


def resize_center_crop(image: np.ndarray, height: int, width: int, interpolation: int | None = None) -> np.ndarray:
    """Aspect-preserving resize to cover (height, width), then a centre crop."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
        if (nh, nw) != (h, w):
            interp = interpolation if interpolation is not None else (
                cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            image = cv2.resize(image, (nw, nh), interpolation=interp)
        top, left = (nh - height) // 2, (nw - width) // 2
        image = image[top:top + height, left:left + width]
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------- video files


@dataclass(frozen=True)
class _Timeline:
    keys: tuple[int, ...]  # pts of each distinct frame, or its decode position when the stream has no pts
    times: tuple[Fraction, ...]  # seconds, sorted
    by_pts: bool
    frame_duration: Fraction


def _decode_error(path: Path, exc: BaseException, src: str) -> VideoDataError:
    return VideoDataError(
        f"{path}: cannot decode video ({exc.__class__.__name__}: {exc}); fix: "
        + _FIX.format(name=path.name, src=src)
    )


def _probe_video(path: Path, src: str) -> _Timeline:
    """Frame timestamps from the container's packets (demux only, no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDataError(f"{path}: no video stream; fix: " + _FIX.format(name=path.name, src=src))
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            time_base = stream.time_base
            declared = stream.frames
            packets = [p for p in container.demux(stream) if p.size]
            pts = [p.pts for p in packets if not p.is_discard]
    except VideoDataError:
        raise
    except (av.FFmpegError, ValueError, EOFError, OSError) as exc:
        raise _decode_error(path, exc, src) from exc
    if not pts:
        raise VideoDataError(f"{path}: no video frames in the file; fix: " + _FIX.format(name=path.name, src=src))
    if declared and len(packets) < declared:
        raise VideoDataError(f"{path}: truncated: the container declares {declared} frames but holds "
                             f"{len(packets)}; fix: " + _FIX.format(name=path.name, src=src))
    fallback = Fraction(1) / Fraction(rate) if rate else Fraction(1, 24)
    if time_base is None or any(p is None for p in pts):
        if not rate:
            raise VideoDataError(f"{path}: frames have no timestamps and the stream no frame rate; fix: "
                                 + _FIX.format(name=path.name, src=src))
        keys = tuple(range(len(pts)))
        times = tuple(Fraction(i) / Fraction(rate) for i in keys)
        return _Timeline(keys, times, False, fallback)
    keys = tuple(sorted(set(pts)))
    times = tuple(Fraction(p) * Fraction(time_base) for p in keys)
    return _Timeline(keys, times, True, _frame_duration(times, fallback))


def _decode_video(path: Path, timeline: _Timeline, positions: Sequence[int], height: int, width: int,
                  src: str) -> np.ndarray:
    """Decode sequentially, converting and resizing only the frames at ``positions``."""
    import av

    wanted = {timeline.keys[i] for i in positions}
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                key = frame.pts if timeline.by_pts else i
                if key in wanted and key not in got:
                    got[key] = resize_center_crop(frame.to_ndarray(format="rgb24"), height, width)
                    if len(got) == len(wanted):
                        break
    except (av.FFmpegError, ValueError, EOFError, OSError) as exc:
        raise _decode_error(path, exc, src) from exc
    if len(got) < len(wanted):
        raise VideoDataError(
            f"{path}: truncated or corrupt: the container lists {len(timeline.keys)} frames but "
            f"{len(wanted) - len(got)} of the needed ones do not decode; fix: " + _FIX.format(name=path.name, src=src)
        )
    return np.stack([got[timeline.keys[i]] for i in positions])


# --------------------------------------------------------------------------- image sequences


def _sequence_frames(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_image(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoDataError(f"{path}: unreadable image; fix: re-export it (e.g. ffmpeg -i {path.name} "
                             f"fixed{path.suffix}) or remove its sequence folder {path.parent}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- captions


def _resolve_captions_path(root: Path, captions: str) -> Path:
    given = Path(captions).expanduser()
    candidates = [given] if given.is_absolute() else [root / given, given]
    for c in candidates:
        if c.is_file():
            return c
    raise VideoDataError(f"captions file {captions!r} not found (looked at {', '.join(map(str, candidates))})")


def _pick(keys: Iterable[str], aliases: Sequence[str]) -> str | None:
    lowered = {k.strip().lower(): k for k in keys if k is not None}
    for a in aliases:
        if a in lowered:
            return lowered[a]
    return None


def load_captions(path: Path) -> list[tuple[int, str, str]]:
    """``(line, video, caption)`` rows of a CSV/TSV or JSONL captions file."""
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict[str, Any]]] = []
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            columns = list(reader.fieldnames or [])
            rows = [(n, row) for n, row in enumerate(reader, start=2)]
    elif suffix in (".jsonl", ".ndjson", ".json"):
        text = path.read_text(encoding="utf-8-sig")
        if suffix == ".json" and text.lstrip().startswith("["):
            rows = [(n, obj) for n, obj in enumerate(json.loads(text), start=1)]
        else:
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise VideoDataError(f"{path} line {n}: not valid JSON ({exc})") from exc
        columns = sorted({k for _, obj in rows if isinstance(obj, dict) for k in obj})
    else:
        raise VideoDataError(f"{path}: captions must be .csv, .tsv or .jsonl (one JSON object per line)")
    vkey, ckey = _pick(columns, _VIDEO_KEYS), _pick(columns, _CAPTION_KEYS)
    if vkey is None or ckey is None:
        raise VideoDataError(f"{path}: needs a video column (one of {'/'.join(_VIDEO_KEYS)}) and a caption "
                             f"column (one of {'/'.join(_CAPTION_KEYS)}); found {columns}")
    out = []
    for n, row in rows:
        if not isinstance(row, dict):
            raise VideoDataError(f"{path} line {n}: expected an object with {vkey!r} and {ckey!r}")
        video, caption = str(row.get(vkey) or "").strip(), str(row.get(ckey) or "").strip()
        if not video:
            raise VideoDataError(f"{path} line {n}: empty {vkey!r}")
        if not caption:
            raise VideoDataError(f"{path} line {n}: empty caption for {video!r}")
        out.append((n, video, caption))
    return out


# --------------------------------------------------------------------------- helpers


def _hash01(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(video_id: str, splits: dict[str, float], seed: int) -> str:
    """Deterministic split of a video: hash of (seed, id) against the cumulative fractions."""
    u = _hash01("split", seed, video_id)
    total = 0.0
    for name, fraction in splits.items():
        total += fraction
        if u < total:
            return name
    return [n for n, f in splits.items() if f > 0][-1]


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "harness" / "clips").expanduser()


# --------------------------------------------------------------------------- dataset


class RealVideoDataset:
    """Clips of real footage per ``VideoDataConfig``; see the module docstring."""

    def __init__(self, config: VideoDataConfig | dict[str, Any]):
        self.config = config if isinstance(config, VideoDataConfig) else VideoDataConfig(**config)
        cfg = self.config
        self.root = Path(cfg.root).expanduser()
        if not self.root.is_dir():
            raise VideoDataError(f"data root {self.root} is not a folder")
        self.fps = _as_fraction(cfg.fps)
        self.cache_dir: Path | None = (Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()) \
            if cfg.disk_cache else None
        self.captions_path = _resolve_captions_path(self.root, cfg.captions) if cfg.captions else None
        self._src = f"the captions file {self.captions_path}" if self.captions_path else f"the folder {self.root}"
        self.skipped: list[tuple[str, str]] = []
        self.videos: dict[str, VideoEntry] = {}
        self.stats = {"decoded": 0, "disk_hits": 0, "memory_hits": 0}
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._sources = self._find_folder() if cfg.kind == "folder" else self._find_davis()
        self.index = self._build_index()

    # ----------------------------------------------------------------- discovery

    def _find_folder(self) -> list[tuple[str, Path, str]]:
        cfg = self.config
        cache = self.cache_dir.resolve() if self.cache_dir else None
        found: dict[str, Path] = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root)
            if (p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                    and not any(part.startswith(".") for part in rel.parts)
                    and not (cache is not None and p.resolve().is_relative_to(cache))):
                found[rel.as_posix()] = p
        captions: dict[str, str] = {}
        if self.captions_path is not None:
            by_name: dict[str, list[str]] = {}
            for vid in found:
                by_name.setdefault(Path(vid).name, []).append(vid)
            for line, video, caption in load_captions(self.captions_path):
                vid = self._resolve_row(video, found, by_name, line)
                if vid in captions:
                    raise VideoDataError(f"{self.captions_path} line {line}: second caption for {vid}")
                captions[vid] = caption
                found.setdefault(vid, self.root / vid)
        if not found:
            raise VideoDataError(f"no videos under {self.root} (extensions {', '.join(VIDEO_EXTENSIONS)})")
        missing = [vid for vid in sorted(found) if vid not in captions]
        if missing and cfg.default_caption is None:
            listed = ", ".join(str(found[v]) for v in missing[:5]) + (f" and {len(missing) - 5} more"
                                                                        if len(missing) > 5 else "")
            where = (f"the captions file {self.captions_path} has no row for it" if self.captions_path
                     else "no captions file is configured")
            raise VideoDataError(f"{listed}: no caption ({where}); fix: add a row (video,caption) to the captions "
                                 "file, remove the video, or set default_caption")
        return [(vid, found[vid], captions.get(vid) or cfg.default_caption or "") for vid in sorted(found)]

    def _resolve_row(self, video: str, found: dict[str, Path], by_name: dict[str, list[str]], line: int) -> str:
        p = Path(video).expanduser()
        if p.is_absolute():
            try:
                rel = p.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                rel = None
            if rel is not None and p.is_file():
                return rel
        else:
            rel = p.as_posix()
            if rel in found or (self.root / rel).is_file():
                return rel
            if len(p.parts) == 1 and len(by_name.get(p.name, [])) == 1:
                return by_name[p.name][0]
            if len(by_name.get(p.name, [])) > 1:
                raise VideoDataError(f"{self.captions_path} line {line}: {video!r} matches several files "
                                     f"({', '.join(by_name[p.name])}); give its path relative to {self.root}")
        raise VideoDataError(f"{self.captions_path} line {line}: video file {video!r} not found under {self.root}; "
                             "fix: correct the path or remove the row")

    def _find_davis(self) -> list[tuple[str, Path, str]]:
        cfg = self.config
        frames_root = self.root / "JPEGImages" / cfg.davis_resolution
        if not frames_root.is_dir():
            raise VideoDataError(f"{frames_root} not found: a DAVIS root holds JPEGImages/{cfg.davis_resolution}/"
                                 "<sequence>/00000.jpg ...")
        seqs = {d.name: d for d in sorted(frames_root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
        if not seqs:
            raise VideoDataError(f"no sequence folders in {frames_root}")
        captions: dict[str, str] = {}
        if self.captions_path is not None:
            for line, video, caption in load_captions(self.captions_path):
                name = Path(video).name
                if name not in seqs:
                    raise VideoDataError(f"{self.captions_path} line {line}: sequence {video!r} not found in "
                                         f"{frames_root}; fix: correct the name or remove the row")
                captions[name] = caption
            missing = [n for n in seqs if n not in captions]
            if missing and cfg.default_caption is None:
                raise VideoDataError(f"{', '.join(str(seqs[n]) for n in missing[:5])}: no caption in the captions "
                                     f"file {self.captions_path}; fix: add rows or set default_caption")
        return [(name, d, captions.get(name) or cfg.default_caption or name.replace("-", " "))
                for name, d in seqs.items()]

    # ----------------------------------------------------------------- index

    def _build_index(self) -> ClipIndex:
        cfg = self.config
        clips: list[ClipRef] = []
        for vid, path, caption in self._sources:
            n = self._num_frames(vid, path)
            if n < cfg.num_frames:
                reason = (f"{n} frames at {cfg.fps:g} fps, shorter than one clip of {cfg.num_frames}")
                logger.warning("skipping %s: %s", path, reason)
                self.skipped.append((str(path), reason))
                continue
            split = assign_split(vid, cfg.splits, cfg.seed)
            self.videos[vid] = VideoEntry(vid, path, caption, split, n)
            for start in range(0, n - cfg.num_frames + 1, cfg.stride):
                clips.append(ClipRef(vid, start, split, caption, cfg.num_frames, cfg.fps))
        if cfg.max_clips is not None:
            keep: set[ClipRef] = set()
            for name in cfg.splits:
                members = [c for c in clips if c.split == name]
                members.sort(key=lambda c: _hash01("clip", cfg.seed, c.video_id, c.start))
                keep.update(members[: cfg.max_clips])
            clips = [c for c in clips if c in keep]
        return ClipIndex(tuple(clips), tuple(cfg.splits))

    def _num_frames(self, vid: str, path: Path) -> int:
        meta = self._cache_file(vid, path, ".json")
        if meta is not None and meta.is_file():
            try:
                return int(json.loads(meta.read_text())["num_frames"])
            except (ValueError, KeyError, OSError):
                pass
        n = len(self._positions(path)[1])
        if meta is not None:
            self._write_cache(vid, path, meta, json.dumps({"video": vid, "num_frames": n}).encode())
        return n

    def _positions(self, path: Path) -> tuple[_Timeline | list[Path], list[int]]:
        if self.config.kind == "davis":
            frames = _sequence_frames(path)
            if not frames:
                return frames, []
            rate = _as_fraction(self.config.source_fps)
            times = [Fraction(i) / rate for i in range(len(frames))]
            return frames, resample_positions(times, self.fps, 1 / rate)
        timeline = _probe_video(path, self._src)
        return timeline, resample_positions(timeline.times, self.fps, timeline.frame_duration)

    # ----------------------------------------------------------------- disk cache

    def _fingerprint(self, path: Path) -> list[Any]:
        if self.config.kind == "davis":
            return [(p.name, st.st_size, st.st_mtime_ns) for p in _sequence_frames(path) for st in [p.stat()]]
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]

    def _cache_prefix(self, vid: str, path: Path) -> str:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", vid)[-60:]
        return f"{slug}.{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]}."

    def _cache_file(self, vid: str, path: Path, suffix: str) -> Path | None:
        if self.cache_dir is None:
            return None
        cfg = self.config
        pixels = {"kind": cfg.kind, "fps": str(self.fps), "height": cfg.height, "width": cfg.width}
        if cfg.kind == "davis":
            pixels["source_fps"] = str(_as_fraction(cfg.source_fps))
        try:
            fingerprint = self._fingerprint(path)
        except OSError as exc:
            raise VideoDataError(f"{path}: cannot read ({exc}); fix: restore it or remove it from {self._src}") from exc
        key = hashlib.sha256(json.dumps([CACHE_VERSION, str(path.resolve()), fingerprint, pixels],
                                        sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"{self._cache_prefix(vid, path)}{key}{suffix}"

    def _write_cache(self, vid: str, path: Path, target: Path, data: bytes) -> None:
        """Write atomically, deleting this video's entries under other keys (the file changed)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix, key = self._cache_prefix(vid, path), target.name.split(".")[-2]
        for old in target.parent.iterdir():
            rest = old.name[len(prefix):] if old.name.startswith(prefix) else None
            if rest is not None and "." in rest and rest.split(".")[0] != key and not rest.endswith(".partial"):
                old.unlink(missing_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def cache_path(self, video_id: str) -> Path | None:
        """The disk-cache file of a video's resampled frames (whether or not it exists yet)."""
        entry = self.videos[video_id]
        return self._cache_file(video_id, entry.path, ".npz")

    # ----------------------------------------------------------------- frames

    def video_frames(self, video_id: str) -> np.ndarray:
        """All resampled, resized frames of a video (N, H, W, 3) uint8, via the memory and disk caches."""
        if video_id in self._memory:
            self._memory.move_to_end(video_id)
            self.stats["memory_hits"] += 1
            return self._memory[video_id]
        entry = self.videos[video_id]
        cfg = self.config
        target = self._cache_file(video_id, entry.path, ".npz")
        frames = None
        if target is not None and target.is_file():
            try:
                with np.load(target) as z:
                    frames = z["frames"]
                if frames.shape != (entry.num_frames, cfg.height, cfg.width, 3) or frames.dtype != np.uint8:
                    frames = None
                else:
                    self.stats["disk_hits"] += 1
            except (OSError, ValueError, KeyError):
                logger.warning("ignoring unreadable cache file %s", target)
                frames = None
        if frames is None:
            frames = self._decode(entry)
            self.stats["decoded"] += 1
            if target is not None:
                buf = io.BytesIO()
                np.savez(buf, frames=frames)
                self._write_cache(video_id, entry.path, target, buf.getvalue())
        if cfg.memory_cache_videos > 0:
            self._memory[video_id] = frames
            while len(self._memory) > cfg.memory_cache_videos:
                self._memory.popitem(last=False)
        return frames

    def _decode(self, entry: VideoEntry) -> np.ndarray:
        cfg = self.config
        source, positions = self._positions(entry.path)
        if not positions:
            raise VideoDataError(f"{entry.path}: no frames; fix: " + _FIX.format(name=entry.path.name, src=self._src))
        if isinstance(source, _Timeline):
            return _decode_video(entry.path, source, positions, cfg.height, cfg.width, self._src)
        cache: dict[int, np.ndarray] = {}
        for i in positions:
            if i not in cache:
                cache[i] = resize_center_crop(_read_image(source[i]), cfg.height, cfg.width)
        return np.stack([cache[i] for i in positions])

    def clip(self, ref: ClipRef) -> np.ndarray:
        return self._slice(ref, self.video_frames(ref.video_id))

    def _slice(self, ref: ClipRef, frames: np.ndarray) -> np.ndarray:
        out = frames[ref.start: ref.start + ref.num_frames]
        if len(out) != ref.num_frames:
            path = self.videos[ref.video_id].path
            raise VideoDataError(f"{path}: decoded {len(frames)} frames at {self.config.fps:g} fps but the index "
                                 f"expects {self.videos[ref.video_id].num_frames}; the file changed or is corrupt; "
                                 "fix: " + _FIX.format(name=path.name, src=self._src))
        return out

    def masks(self, ref: ClipRef) -> np.ndarray | None:
        """DAVIS object masks of a clip, (T, H, W) uint8 object ids (0 = background), resampled and cropped
        like the frames (nearest-neighbour); None when the sequence has no annotation for every clip frame."""
        if self.config.kind != "davis":
            return None
        import cv2
        from PIL import Image

        entry = self.videos[ref.video_id]
        source, positions = self._positions(entry.path)
        ann = self.root / "Annotations" / self.config.davis_resolution / ref.video_id
        out = []
        for i in positions[ref.start: ref.start + ref.num_frames]:
            png = ann / (source[i].stem + ".png")
            if not png.is_file():
                return None
            with Image.open(png) as im:
                m = np.asarray(im if im.mode in ("P", "L") else im.convert("L"))
            out.append(resize_center_crop(m, self.config.height, self.config.width, cv2.INTER_NEAREST))
        return np.stack(out).astype(np.uint8)

    # ----------------------------------------------------------------- public API

    @property
    def split_names(self) -> tuple[str, ...]:
        return self.index.split_names

    def split(self, name: str) -> list[ClipRef]:
        return self.index.split(name)

    def fingerprint(self, video_id: str) -> list[Any]:
        """What identifies a video's source file(s) as read (sizes and modification times), for caches
        of what is computed from its clips."""
        return self._fingerprint(self.videos[video_id].path)

    def batch(self, split: str, indices: Sequence[int]) -> ClipBatch:
        """Clips ``indices`` of ``split`` as a ClipBatch (specs are ClipRefs); each video decodes at most once."""
        refs = self.split(split)
        chosen = [refs[int(i)] for i in indices]
        if not chosen:
            raise ValueError("batch needs at least one index")
        videos = {vid: self.video_frames(vid) for vid in dict.fromkeys(r.video_id for r in chosen)}
        frames = np.stack([self._slice(r, videos[r.video_id]) for r in chosen])
        return ClipBatch(
            videos=torch.stack([frames_to_tensor(f) for f in frames]),
            captions=[r.caption for r in chosen],
            specs=chosen,  # type: ignore[arg-type]  # ClipRefs stand in for world ClipSpecs
            frames=frames,
        )

    def check(self, decode: bool = False) -> dict[str, Any]:
        """Summary for ``harness data check``; with ``decode`` every video is decoded (filling the disk
        cache) and decode failures are listed under ``errors`` instead of raised."""
        cfg = self.config
        per_split = dict.fromkeys(cfg.splits, 0)
        for e in self.videos.values():
            per_split[e.split] += 1
        summary: dict[str, Any] = {
            "kind": cfg.kind,
            "root": str(self.root),
            "captions": str(self.captions_path) if self.captions_path else None,
            "videos": len(self.videos),
            "videos_per_split": per_split,
            "clips": self.index.counts(),
            "total_clips": len(self.index),
            "clip": {"num_frames": cfg.num_frames, "fps": cfg.fps, "stride": cfg.stride,
                     "height": cfg.height, "width": cfg.width},
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
        }
        if decode:
            errors = []
            for vid in self.videos:
                try:
                    frames = self.video_frames(vid)
                    if len(frames) != self.videos[vid].num_frames:
                        errors.append({"file": str(self.videos[vid].path),
                                       "error": f"decoded {len(frames)} frames, index expects "
                                                f"{self.videos[vid].num_frames}"})
                except VideoDataError as exc:
                    errors.append({"file": str(self.videos[vid].path), "error": str(exc)})
            summary["errors"] = errors
        return summary
