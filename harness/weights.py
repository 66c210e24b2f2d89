"""The local weight cache: one root, a manifest of the files it may hold, and checks before use.

Metric backends never download. They call ``resolve(name)``, which finds the file under
the cache root (``$HARNESS_WEIGHTS``, default ``~/.cache/harness/weights``), checks its
sha256 and returns where it is and where it came from. A missing or corrupt file fails
with the file name, the expected sha256 and the command that fetches it. ``prefetch`` is
the only code in the harness that touches the network.

The manifest is the YAML files in ``metrics/backends/manifest/`` (one per backend family).
Where the upstream publisher states a checksum (OpenAI CLIP's URLs carry the file's
sha256) the entry pins it; otherwise ``sha256`` is null and the checksum observed by the
first ``prefetch`` is pinned in the cache's lock file (``weights.lock.json``): trust on
first download, said as such by ``harness weights status``.

Random-initialised files in the upstream layout (``init_random``) let every code path
run without the real weights; the lock file marks them ``random-init`` and every metric
identity computed from them carries ``weights=random``, so their numbers can never pass
for real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

CACHE_ENV = "HARNESS_WEIGHTS"
LOCK_NAME = "weights.lock.json"
HASHES_NAME = ".sha256-cache.json"
MANIFEST_DIR = Path(str(resources.files("metrics"))) / "backends" / "manifest"
ORIGINS = ("upstream", "upstream-unpinned", "random-init")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "DIFFUSERS_OFFLINE": "1"}


class WeightsError(FileNotFoundError):
    """A weight file that is unknown, missing or not the expected file."""


@dataclass(frozen=True)
class WeightFile:
    name: str
    path: str  # relative to the cache root
    source: str  # upstream URL
    sha256: str | None  # None: not published upstream; pinned by the first prefetch
    licence: str
    used_by: tuple[str, ...] = ()
    format: str = "torch"  # torch (pickle state dict), torchscript, safetensors
    note: str = ""


@dataclass(frozen=True)
class ResolvedWeight:
    name: str
    path: Path
    sha256: str
    origin: str  # one of ORIGINS

    @property
    def is_random(self) -> bool:
        return self.origin == "random-init"


_RANDOM_WRITERS: dict[str, Callable[[Path], None]] = {}


def random_initialiser(name: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    """Decorator for ``fn(path)`` writing a random-init file in manifest entry ``name``'s layout."""

    def wrap(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        _RANDOM_WRITERS[name] = fn
        return fn

    return wrap


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "harness" / "weights").expanduser()


def force_offline() -> None:
    """Make hub libraries (huggingface_hub, transformers, diffusers) refuse network access."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


def load_manifest(directory: Path = MANIFEST_DIR) -> dict[str, WeightFile]:
    entries: dict[str, WeightFile] = {}
    for path in sorted(directory.glob("*.yaml")):
        for raw in yaml.safe_load(path.read_text()) or []:
            entry = WeightFile(**{**raw, "used_by": tuple(raw.get("used_by", ()))})
            if entry.name in entries:
                raise ValueError(f"{path.name}: weight {entry.name!r} is already in the manifest")
            entries[entry.name] = entry
    return entries


def manifest_entry(name: str) -> WeightFile:
    entries = load_manifest()
    if name not in entries:
        raise WeightsError(f"no weight file named {name!r} in the manifest ({MANIFEST_DIR}); "
                           f"known: {', '.join(sorted(entries))}")
    return entries[name]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def file_sha256(path: Path, root: Path | None = None) -> str:
    """sha256 of a file, remembered by (size, mtime) so multi-GB files are hashed once."""
    root = root or cache_root()
    memo_path = root / HASHES_NAME
    memo = _read_json(memo_path)
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns]
    if key in memo and memo[key]["stamp"] == stamp:
        return memo[key]["sha256"]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    memo[key] = {"stamp": stamp, "sha256": h.hexdigest()}
    try:
        _write_json(memo_path, memo)
    except OSError:  # a read-only cache still works, it just hashes again next time
        pass
    return h.hexdigest()


def _prefetch_hint(name: str) -> str:
    return f"`harness weights prefetch {name}` (or copy the upstream file there and run it with --from DIR)"


def resolve(name: str, root: Path | None = None) -> ResolvedWeight:
    """The checked local file of manifest entry ``name``; raises WeightsError naming the fix."""
    root = root or cache_root()
    entry = manifest_entry(name)
    path = root / entry.path
    expected = entry.sha256 or "not published upstream (pinned by the first prefetch)"
    if not path.is_file():
        raise WeightsError(f"weight file {entry.path} ({name}, used by {', '.join(entry.used_by) or '?'}) is "
                           f"missing from the cache {root}; expected sha256 {expected}; "
                           f"fetch it with {_prefetch_hint(name)}")
    sha = file_sha256(path, root)
    locked = _read_json(root / LOCK_NAME).get(name)
    if entry.sha256 and sha == entry.sha256:
        return ResolvedWeight(name, path, sha, "upstream")
    if locked and locked["sha256"] == sha and (locked["origin"] != "upstream" or not entry.sha256):
        return ResolvedWeight(name, path, sha, locked["origin"])
    want = entry.sha256 or (locked or {}).get("sha256") or expected
    raise WeightsError(f"weight file {path} ({name}) has sha256 {sha}, expected {want}: the file is corrupt, "
                       f"truncated or a different release; delete it and fetch it again with "
                       f"{_prefetch_hint(name)}")


def resolve_all(names: Iterable[str], root: Path | None = None) -> tuple[ResolvedWeight, ...]:
    """Every file of a multi-file backend, or one WeightsError naming all that are missing or wrong."""
    found, errors = [], []
    for name in names:
        try:
            found.append(resolve(name, root))
        except WeightsError as exc:
            errors.append(str(exc))
    if errors:
        raise WeightsError("\n  ".join(errors))
    return tuple(found)


def status(root: Path | None = None) -> list[dict[str, str]]:
    """One row per manifest entry: present/missing/corrupt and the file's origin."""
    root = root or cache_root()
    rows = []
    for name, entry in load_manifest().items():
        row = {"name": name, "path": entry.path, "used_by": ", ".join(entry.used_by), "licence": entry.licence}
        try:
            r = resolve(name, root)
            row.update(state="ok", origin=r.origin, sha256=r.sha256[:12])
        except WeightsError as exc:
            missing = not (root / entry.path).is_file()
            row.update(state="missing" if missing else "corrupt", origin="", sha256="",
                       detail="" if missing else str(exc))
        rows.append(row)
    return rows


def _lock(root: Path, name: str, sha: str, origin: str) -> None:
    lock = _read_json(root / LOCK_NAME)
    lock[name] = {"sha256": sha, "origin": origin}
    _write_json(root / LOCK_NAME, lock)


def prefetch(names: Iterable[str] | None = None, root: Path | None = None, source_dir: Path | None = None,
             log: Callable[[str], None] = print) -> list[ResolvedWeight]:
    """Download (or copy from ``source_dir``, by file name) and check each named file.

    A file already present and valid is left alone; one with a published sha256 that does
    not match is refused and removed; one without a published sha256 is pinned in the lock.
    """
    root = root or cache_root()
    entries = load_manifest()
    chosen = list(names) if names else list(entries)
    done = []
    for name in chosen:
        entry = manifest_entry(name)
        path = root / entry.path
        if path.is_file():
            try:
                done.append(resolve(name, root))
                log(f"{name}: present ({path})")
                continue
            except WeightsError:
                pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        if source_dir is not None:
            src = Path(source_dir) / Path(entry.path).name
            if not src.is_file():
                raise WeightsError(f"{name}: {src} not found (--from looks for the upstream file name)")
            log(f"{name}: copying {src}")
            shutil.copyfile(src, tmp)
        else:
            log(f"{name}: downloading {entry.source}")
            with urllib.request.urlopen(entry.source) as response, tmp.open("wb") as f:  # noqa: S310
                shutil.copyfileobj(response, f, length=1 << 22)
        sha = file_sha256(tmp, root)
        if entry.sha256 and sha != entry.sha256:
            tmp.unlink()
            raise WeightsError(f"{name}: the fetched file has sha256 {sha}, the manifest pins {entry.sha256}; "
                               "not installed (the source changed or the transfer was corrupted)")
        os.replace(tmp, path)
        _lock(root, name, sha, "upstream" if entry.sha256 else "upstream-unpinned")
        done.append(resolve(name, root))
    return done


def init_random(names: Iterable[str] | None = None, root: Path | None = None, force: bool = False,
                log: Callable[[str], None] = print) -> list[ResolvedWeight]:
    """Write random-initialised files in the upstream layouts (marked ``random-init`` in the lock).

    For tests and dry runs on machines without the real weights; never overwrites a
    real file unless ``force``.
    """
    import metrics.backends.real  # noqa: F401  (registers the random initialisers)

    root = root or cache_root()
    chosen = list(names) if names else sorted(_RANDOM_WRITERS)
    out = []
    for name in chosen:
        entry = manifest_entry(name)
        if name not in _RANDOM_WRITERS:
            raise WeightsError(f"{name}: no random initialiser is registered (the backend is not implemented)")
        path = root / entry.path
        if path.is_file() and not force:
            origin = _read_json(root / LOCK_NAME).get(name, {}).get("origin")
            if origin != "random-init":
                raise WeightsError(f"{path} exists and is not random-init; refusing to overwrite it "
                                   "(pass force to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        _RANDOM_WRITERS[name](tmp)
        os.replace(tmp, path)
        _lock(root, name, file_sha256(path, root), "random-init")
        log(f"{name}: wrote random-init weights to {path}")
        out.append(resolve(name, root))
    return out
