"""Experiment trackers (TensorBoard, Weights & Biases) through accelerate's tracker classes.

Researchers watch training in TensorBoard or W&B; the results database stays the record, and a tracker
gets a copy of what the run stores, as it is stored:

* ``train/<key>`` at every training step: each value a trainer returns (``loss``, ...), the training
  probes (``train/probe/...``) and ``train/seconds`` (time in training steps) at each checkpoint;
* ``eval/<metric>`` and ``eval/<metric>/ci95_half_width`` at each checkpoint's step: every aggregate the
  store holds for the checkpoint (metrics, roll-ups, probe aggregates) and half the width of its 95 %
  bootstrap interval, ``(ci_high - ci_low) / 2``;
* ``gallery``: the checkpoint's first eval videos side by side, as an animated GIF (TensorBoard's image
  tab plays it; W&B shows it as a video). It is encoded here with Pillow, so neither tracker needs
  moviepy (torch's ``add_video`` would: without it, it prints a line and logs nothing).

Each method and seed is one tracker run (``<method>/seed<k>``, and ``base`` for the base model), so
the trackers overlay methods on one chart per key and W&B's step axis stays monotonic within a run.
Files go under the run directory (``RunDir.trackers``); W&B logs offline unless the user sets
``WANDB_MODE=online``. Everything here runs on the main process only: other ranks get no tracker.
Names are checked by :func:`check_trackers` before any work, so a missing package or an unreachable
W&B server stops the run at start with one line, never after hours of training.
"""

from __future__ import annotations

import io
import logging
import math
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

import numpy as np

from harness.extras import has_module
from harness.rundir import RunDir
from harness.store import ResultStore

log = logging.getLogger(__name__)

# name -> the package it needs (the `trackers` extra installs tensorboard; wandb is installed by the user).
# Other accelerate trackers (comet_ml, mlflow, aim, ...) are refused: each logs to a server or a default
# directory outside the run unless configured, and nothing here may reach the network unasked.
SUPPORTED = {"tensorboard": "tensorboard", "wandb": "wandb"}
EXTRA = "trackers"
GALLERY_VIDEOS = 4  # videos side by side in the gallery, as in the report's filmstrips
GALLERY_PX = 96  # enlarged frame size (nearest neighbour): 16 px frames become 96 px
WANDB_OFFLINE = ("offline", "dryrun")
WANDB_ONLINE = ("online", "run")
WANDB_DEFAULT_HOST = "https://api.wandb.ai"

Rows = list[tuple[int, str, float]]


class TrackerError(ValueError):
    """A tracker cannot be used as asked; the message says why and what to do."""


def parse_names(values: Iterable[str] | None) -> list[str]:
    """Tracker names from a repeatable, comma-separated option or a preset list, in order, once each."""
    out: list[str] = []
    for value in values or []:
        for name in str(value).split(","):
            name = name.strip().lower()
            if name and name not in out:
                out.append(name)
    return out


def wandb_mode() -> str:
    """``offline`` unless the user asked otherwise through WANDB_MODE (``online``/``run``, or ``disabled``)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower() or "offline"
    if mode in WANDB_OFFLINE:
        return "offline"
    if mode in WANDB_ONLINE:
        return "online"
    if mode == "disabled":
        return mode
    raise TrackerError(f"WANDB_MODE={mode!r} is not a W&B mode; unset it to log offline under the run directory, "
                       "or set it to online")


def _reachable(url: str, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to the URL's host opens, else why not."""
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    if not host:
        return f"{url!r} names no host"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or exc})"
    return None


def check_trackers(names: Sequence[str]) -> None:
    """Refuse, before any work, a tracker that is unknown, not installed, or W&B online without a network."""
    unknown = [n for n in names if n not in SUPPORTED]
    if unknown:
        raise TrackerError(f"unknown tracker(s) {', '.join(unknown)} in --log-with / log_with; supported: "
                           f"{', '.join(SUPPORTED)} (e.g. --log-with tensorboard)")
    for name in names:
        if not has_module(SUPPORTED[name]):
            raise TrackerError(f"--log-with {name} needs the {SUPPORTED[name]} package, which is not installed; "
                               f"install the {EXTRA!r} extra: pip install -e '.[{EXTRA}]'"
                               + (" and wandb itself: pip install wandb" if name == "wandb" else ""))
    if "wandb" in names and wandb_mode() == "online":
        url = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_HOST)
        why = _reachable(url)
        if why:
            raise TrackerError(f"W&B online mode (WANDB_MODE=online) needs the network, but {why}; unset WANDB_MODE "
                               "to log offline under the run directory and upload later with `wandb sync`")


def gallery_video(frames: np.ndarray, k: int = GALLERY_VIDEOS) -> np.ndarray:
    """(T, H', W', 3) uint8: the first ``k`` of uint8 (N, T, H, W, 3) videos side by side, enlarged with
    nearest neighbour and separated by 1-px white lines."""
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, T, H, W, 3), got {frames.dtype} {frames.shape}")
    n, t, h, w, _ = frames.shape
    s = max(1, GALLERY_PX // max(h, w))
    big = frames[:k].repeat(s, axis=2).repeat(s, axis=3)
    n = big.shape[0]
    out = np.full((t, h * s, n * w * s + (n - 1), 3), 255, dtype=np.uint8)
    for i in range(n):
        x = i * (w * s + 1)
        out[:, :, x:x + w * s] = big[i]
    return out


def encode_gif(video: np.ndarray, fps: float) -> bytes:
    """An animated GIF of uint8 (T, H, W, 3) frames, looping, at ``fps``."""
    from PIL import Image

    images = [Image.fromarray(f) for f in video]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(1000 / fps)), optimize=False)
    return buf.getvalue()


def checkpoint_values(store: ResultStore, checkpoint_id: int) -> dict[str, float]:
    """``eval/<metric>`` and ``eval/<metric>/ci95_half_width`` of every stored aggregate of a checkpoint
    (aggregates without a value are left out, as the tables leave them blank)."""
    agg = store.aggregates()
    agg = agg[agg["checkpoint_id"] == checkpoint_id] if not agg.empty else agg
    out: dict[str, float] = {}
    for row in agg.itertuples():
        if row.value is None or not math.isfinite(row.value):
            continue
        out[f"eval/{row.metric}"] = float(row.value)
        if row.ci_low is not None and row.ci_high is not None and math.isfinite(row.ci_high - row.ci_low):
            out[f"eval/{row.metric}/ci95_half_width"] = (float(row.ci_high) - float(row.ci_low)) / 2
    return out


class Session:
    """One tracker run (a method and seed, or the base model). Without trackers every call is a no-op
    that passes its rows through, so the run loop calls it unconditionally."""

    def __init__(self, trackers: list, fps: float = 8.0) -> None:
        self.trackers, self.fps = trackers, fps

    def log(self, rows: Iterable[tuple[int, str, float]]) -> Rows:
        """Send training rows (step, key, value) as ``train/<key>``; returns the rows for the store."""
        rows = list(rows)
        if self.trackers:
            by_step: dict[int, dict[str, float]] = {}
            for step, key, value in rows:
                by_step.setdefault(int(step), {})[f"train/{key}"] = float(value)
            for step, values in sorted(by_step.items()):
                self._log(values, step)
        return rows

    def checkpoint(self, store: ResultStore, checkpoint_id: int, step: int, samples: Path) -> None:
        """Send a checkpoint's stored aggregates and its gallery video at ``step``."""
        if not self.trackers:
            return
        self._log(checkpoint_values(store, checkpoint_id), step)
        if not samples.is_file():  # its results were all stored before: nothing was sampled this time
            log.warning("trackers: no gallery for step %d (%s is missing)", step, samples)
            return
        with np.load(samples) as z:
            gif = encode_gif(gallery_video(z["frames"]), self.fps)
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                _tensorboard_gif(tracker.writer, "gallery", gif, step)
            elif tracker.name == "wandb":
                import wandb

                tracker.log({"gallery": wandb.Video(io.BytesIO(gif), format="gif")}, step=step)

    def _log(self, values: dict[str, float], step: int) -> None:
        if values:
            for tracker in self.trackers:
                tracker.log(values, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _tensorboard_gif(writer, tag: str, gif: bytes, step: int) -> None:
    """An animated GIF as an image summary: what torch's ``add_video`` writes, without moviepy."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    w, h = Image.open(io.BytesIO(gif)).size
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=gif)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


def _plain_accelerate_logger() -> None:
    """Let accelerate's tracker classes log (debug lines only) without an accelerate state.

    Their module logger is accelerate's multi-process adapter, which raises unless a ``PartialState``
    exists; creating one would set up accelerate's own distributed state next to the harness's
    (harness/distributed.py) and, on multi-CPU runs, reset torch's thread count. The tracker runs on
    the main process only, so a plain logger loses nothing."""
    import accelerate.tracking
    from accelerate.state import PartialState

    if not PartialState._shared_state:
        accelerate.tracking.logger = logging.getLogger(accelerate.tracking.__name__)


class RunTrackers:
    """The trackers of one run: a context manager that opens one session at a time and closes the last.
    ``names`` empty (the default, and on every rank but the main one): no tracker, no files."""

    def __init__(self, names: Sequence[str], rundir: RunDir, fps: float = 8.0) -> None:
        self.names, self.rundir, self.fps = parse_names(names), rundir, fps
        self._session = Session([], fps)
        if self.names:
            check_trackers(self.names)
            log.info("experiment trackers: %s", describe(self.names, rundir))

    def open(self, run_id: str, method: str, seed: int | None, first_step: int = 0) -> Session:
        """Finish the previous session and start ``<method>/seed<k>`` (``method`` alone for seed None).

        ``first_step``: the first step this session logs. A resumed run logs again from there (the base
        model's step 0, the steps trained after the last checkpoint), so TensorBoard is told to hide what
        an earlier session logged at that step and later (``purge_step``): each step is shown once."""
        self._session.close()
        if not self.names:
            return self._session
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        _plain_accelerate_logger()
        name = method if seed is None else f"{method}/seed{seed}"
        trackers = []
        for kind in self.names:
            directory = self.rundir.trackers(kind)
            directory.mkdir(parents=True, exist_ok=True)
            if kind == "tensorboard":
                tracker = LOGGER_TYPE_TO_CLASS[kind](name, directory, purge_step=first_step)
            else:  # wandb: offline files under the run directory, one W&B run per method and seed
                project = os.environ.get("WANDB_PROJECT", "video-alignment-harness")
                tracker = LOGGER_TYPE_TO_CLASS[kind](project, name=f"{run_id}-{name.replace('/', '-')}",
                                                     group=run_id, dir=str(directory), mode=wandb_mode())
            tracker.main_process_only = False  # the harness's own rank decides (harness/distributed.py)
            tracker.start()
            if kind == "wandb":
                tracker.store_init_configuration({"run_id": run_id, "method": method, "seed": seed})
            trackers.append(tracker)
        self._session = Session(trackers, self.fps)
        return self._session

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RunTrackers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.close()
        except Exception as err:  # a failing tracker must not hide the run's own error
            if exc is None:
                raise
            log.warning("trackers: closing failed (%s)", err)


def describe(names: Sequence[str], rundir: RunDir) -> str:
    """Where each tracker writes (logged at start)."""
    return "; ".join(f"{n}: {rundir.trackers(n)}" + (f" (W&B {wandb_mode()})" if n == "wandb" else "")
                     for n in names)

