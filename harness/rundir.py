"""The run directory: its layout, its identity, its lock, and checkpoint saving and loading.

Layout (every path below is built here and nowhere else)::

    run.json                      manifest: run id, where the run was created, options, preset, provenance
    results.sqlite                the ResultStore
    .harness.lock                 held (flock) by the one process writing the run
    cache/                        pair sets and other per-run caches
    trackers/<tracker>/           experiment trackers' files (--log-with): tensorboard/<method>/seed<k>/, wandb/
    checkpoints/base/step000000/  samples.npz
    checkpoints/<method>/seed<k>/step<NNNNNN>/
        lora.safetensors  trainer_state.pt  logs.json  samples.npz  DONE

A checkpoint is written under ``step<NNNNNN>.partial`` and renamed when complete; ``DONE`` marks it.
It carries the training logs of the steps since the previous checkpoint (``logs.json``), so a crash
between the rename and the store's write loses nothing: a resumed run stores them from the file.

Every path the harness writes or deletes in a run is built by :class:`RunDir` from safe name parts and
checked to lie inside the run directory (:meth:`RunDir.inside`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.names import UnsafeNameError, check_name

if TYPE_CHECKING:
    from trainers.base import Trainer

MANIFEST = "run.json"
RESULTS = "results.sqlite"
LOCK = ".harness.lock"
LOGS = "logs.json"
DONE = "DONE"
LORA = "lora.safetensors"
STATE = "trainer_state.pt"
SAMPLES = "samples.npz"
_CKPT = re.compile(r"^step(\d{6,})$")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


class CheckpointError(RunDirError):
    """A checkpoint file is unreadable; the message names the file and the previous good checkpoint."""


def safe_part(kind: str, value: str) -> str:
    """``value`` if it can be one directory name inside a run (harness/names.py), else a RunDirError."""
    try:
        return check_name(kind, value)
    except UnsafeNameError as exc:
        raise RunDirError(str(exc)) from exc


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_digest(path: Path, pattern: str = "*") -> str:
    """sha256 over the names and bytes of the files matching ``pattern`` in ``path`` (sorted by name)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).glob(pattern) if p.is_file()):
        h.update(f.name.encode() + b"\0" + file_digest(f).encode() + b"\0")
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` (an exclusive flock, waiting for it) while a run-cache entry is checked and built:
    the workers of `harness run --jobs N` that need the same entry (a pair set two methods share) build it once,
    the others wait and read it. The lock file stays; flock locks are released when the process ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class RunDir:
    """One run directory. ``root`` need not exist yet."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def trackers(self, tracker: str) -> Path:
        """Where an experiment tracker (harness/tracking.py) writes its files: TensorBoard's event files
        (one directory per method and seed below it), W&B's offline runs."""
        return self.inside(self.root / "trackers" / safe_part("tracker", tracker))

    def inside(self, path: Path) -> Path:
        """``path`` if it resolves inside the run directory, else a RunDirError (never write outside)."""
        root, target = self.root.resolve(), Path(path).resolve()
        if target != root and root not in target.parents:
            raise RunDirError(f"refusing to write {path}: it is outside the run directory {self.root}")
        return Path(path)

    def checkpoint(self, method: str, seed: int, step: int) -> Path:
        if method == "base":
            return self.inside(self.root / "checkpoints" / "base" / f"step{int(step):06d}")
        if int(seed) < 0:
            raise RunDirError(f"seed {seed} is negative; seeds are integers >= 0")
        parts = (safe_part("method", method), f"seed{int(seed)}", f"step{int(step):06d}")
        return self.inside(self.root.joinpath("checkpoints", *parts))

    def relative(self, path: Path) -> str:
        """How the store records a path of this run: relative to the run directory, so a moved run
        still finds its files."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def resolve(self, stored: str | Path) -> Path:
        """A path as the store recorded it (relative to the run, or absolute from older runs)."""
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    @staticmethod
    def locate(checkpoint: Path) -> tuple[RunDir, str, int, int] | None:
        """(run, method, seed, step) of ``<run>/checkpoints/<method>/seed<k>/step<n>``, else None."""
        p = Path(checkpoint)
        step, seed = _CKPT.match(p.name), re.match(r"^seed(\d+)$", p.parent.name)
        if not (step and seed and len(p.parents) >= 4 and p.parents[2].name == "checkpoints"):
            return None
        run = RunDir(p.parents[3])
        return (run, p.parent.parent.name, int(seed.group(1)), int(step.group(1))) if run.manifest.is_file() \
            else None

    def complete_steps(self, method: str, seed: int, max_step: int) -> list[int]:
        root = self.checkpoint(method, seed, 0).parent
        steps = [int(m.group(1)) for p in root.glob("step*")
                 if (m := _CKPT.match(p.name)) and (p / DONE).exists()]
        return sorted(s for s in steps if s <= max_step)

    def checkpoint_samples(self) -> list[tuple[str, int, int, Path]]:
        """(method, seed, step, samples file) of every checkpoint directory that holds its eval samples,
        the base model's first (seed 0), then the methods by name, seeds and steps in order; leftovers of
        interrupted writes (``.partial``) are ignored."""
        def numbered(directory: Path, prefix: str) -> list[tuple[int, Path]]:
            if not directory.is_dir():
                return []
            return sorted((int(p.name[len(prefix):]), p) for p in directory.iterdir()
                          if p.is_dir() and p.name.startswith(prefix) and p.name[len(prefix):].isdigit())

        root = self.root / "checkpoints"
        out = [("base", 0, step, p / SAMPLES) for step, p in numbered(root / "base", "step")]
        methods = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "base") if root.is_dir() else []
        for method in methods:
            for seed, seed_dir in numbered(root / method, "seed"):
                out.extend((method, seed, step, p / SAMPLES) for step, p in numbered(seed_dir, "step"))
        return [item for item in out if item[3].is_file()]

    # -- manifest and identity ---------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest.is_file():
            return None
        try:
            return json.loads(self.manifest.read_text())
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{self.manifest} is not valid JSON ({exc}); restore it, or start the run in "
                              "another --out") from exc

    def write_manifest(self, data: dict[str, Any]) -> None:
        _atomic_write(self.inside(self.manifest), json.dumps(data, indent=2))

    def identity(self, adopt: bool = False) -> tuple[str, dict[str, Any] | None]:
        """The run id of this directory: the one its manifest records (stable across moves), or, for a
        new run, the directory's name. A run created elsewhere (copied or moved) is continued only with
        ``adopt``, which records the new location in the manifest."""
        manifest = self.read_manifest()
        if manifest is None:
            return self.root.resolve().name, None
        run_id = manifest.get("run_id") or self.root.resolve().name
        # Runs written before the location was recorded: the id was the directory's name.
        created = manifest.get("directory") or str(self.root.resolve().parent / run_id)
        here = str(self.root.resolve())
        if created != here:
            if not adopt:
                raise RunDirError(
                    f"{self.root} holds run {run_id!r} created in {created}: it was copied or moved here; pass "
                    f"--adopt to continue it in this directory (same run id, its results travel with it), or "
                    f"start a new run in another --out")
            manifest["directory"] = here
            manifest.setdefault("moves", []).append({"from": created, "to": here,
                                                     "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            self.write_manifest(manifest)
        return run_id, manifest

    # -- lock ------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock (one writer per directory); a second process is refused, naming the holder."""
        path = self.inside(self.root / LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
                raise RunDirError(f"{self.root} is in use by another harness process ({holder}); wait for it "
                                  "to finish, or choose another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], path: Path, step: int,
                        logs: list[tuple[int, str, float]]) -> None:
        """Write a trainer's state and the logs since the previous checkpoint, then mark it complete."""
        import torch
        from safetensors.torch import save_file

        self.inside(path)
        tmp = self.inside(path.with_name(path.name + ".partial"))
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in state.pop("lora").items()}, tmp / LORA)
        torch.save({"step": step, **state}, tmp / STATE)
        (tmp / LOGS).write_text(json.dumps([[int(s), k, float(v)] for s, k, v in logs]))
        (tmp / DONE).write_text(json.dumps({"step": step, "logs_since_last": len(logs)}))
        if path.exists():  # an incomplete directory of the same step (no DONE): replaced
            shutil.rmtree(self.inside(path))
        tmp.rename(path)

    def load_checkpoint(self, trainer: Trainer, path: Path, previous: Path | None = None) -> None:
        """Load a checkpoint into ``trainer``; an unreadable file fails naming it and the way back."""
        import torch
        from safetensors.torch import load_file

        state = None
        for name in (STATE, LORA):
            try:
                if name == STATE:
                    state = torch.load(path / name, weights_only=True)
                else:
                    state["lora"] = load_file(path / name)
            except Exception as exc:  # truncated or corrupt file: torch, safetensors and OS errors alike
                back = f"continue from {previous}" if previous else "start this method again from the base model"
                raise CheckpointError(
                    f"checkpoint file {path / name} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
                    f"move {path} away and rerun with --resume to {back}") from exc
        try:
            trainer.load_state_dict(state)
        except ValueError as exc:  # a state the trainer cannot continue from (e.g. written before compute counts)
            raise CheckpointError(f"checkpoint {path}: {exc}") from exc

    @staticmethod
    def checkpoint_logs(path: Path) -> list[tuple[int, str, float]]:
        """The training logs a checkpoint carries (empty for checkpoints written before they did)."""
        f = path / LOGS
        if not f.is_file():
            return []
        return [(int(s), str(k), float(v)) for s, k, v in json.loads(f.read_text())]
