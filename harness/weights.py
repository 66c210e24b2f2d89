"""The local weight cache: one root, a manifest of the files it may hold, and checks before use.

Metric backends never download. They call ``resolve(name)``, which finds the file under
the cache root (``$HARNESS_WEIGHTS``, default ``~/.cache/harness/weights``), checks its
sha256 and returns where it is and where it came from. A missing or corrupt file fails
with the file name, the expected sha256 and the command that fetches it. ``prefetch`` is
the only code in the harness that touches the network.

The manifest is the YAML files in ``harness/scorers/backends/manifest/`` (one per backend family).
Where the upstream publisher states a checksum (OpenAI CLIP's URLs carry the file's
sha256) the entry pins it; otherwise ``sha256`` is null and the checksum observed by the
first ``prefetch`` is pinned in the cache's lock file (``weights.lock.json``): trust on
first download, said as such by ``harness weights status``.

Random-initialised files in the upstream layout (``init_random``) let every code path
run without the real weights; the lock file marks them ``random-init`` and every metric
identity computed from them carries ``weights=random``, so their numbers can never pass
for real ones.

A file whose loader can run code (``format: torchscript``, read by ``torch.jit.load``) is
held to more than trust on first download: ``verified_bytes`` loads it only when its digest
is pinned by the manifest, by the user (``harness weights pin NAME --sha256 HEX``, recorded
as ``user-pinned``) or by its own ``random-init`` lock entry, and checks that digest on the
very bytes that are then loaded. Every other file is read with a loader that runs no code.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

CACHE_ENV = "HARNESS_WEIGHTS"
LOCK_NAME = "weights.lock.json"
HASHES_NAME = ".sha256-cache.json"
MANIFEST_DIR = Path(str(resources.files("harness"))) / "scorers" / "backends" / "manifest"
ORIGINS = ("upstream", "upstream-unpinned", "user-pinned", "random-init")
# formats whose loader can run code: loaded only with a pinned digest (verified_bytes)
EXECUTABLE_FORMATS = frozenset({"torchscript"})
_PINNING_ORIGINS = ("user-pinned", "random-init")  # lock entries that pin a digest (not trust on first use)
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


def weight_format(name: str) -> str:
    """The manifest's ``format`` of ``name``; ``torch`` (read without running code) for a name not in it."""
    entry = load_manifest().get(name)
    return entry.format if entry else "torch"


def _root_of(weight: ResolvedWeight, entry: WeightFile) -> Path:
    """The cache root ``weight`` was resolved in: its path minus the entry's relative path."""
    parts, path = Path(entry.path).parts, Path(weight.path)
    return Path(*path.parts[:-len(parts)]) if path.parts[-len(parts):] == parts else cache_root()


def _pin_hint(name: str) -> str:
    return f"`harness weights pin {name} --sha256 HEX`"


def _fresh_sha256(path: Path) -> str:
    """sha256 read from the file itself, never from the (size, mtime) memo."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_bytes(weight: ResolvedWeight) -> bytes:
    """The bytes of a file whose loader can run code, returned only if their sha256 is pinned.

    Pinned: the manifest's sha256, a digest the user recorded with ``pin``, or the file's own
    ``random-init`` lock entry; the digest seen at download (``upstream-unpinned``) is not
    enough. The digest is taken of the returned bytes, so what gets loaded is what was checked.
    """
    entry = manifest_entry(weight.name)
    locked = _read_json(_root_of(weight, entry) / LOCK_NAME).get(weight.name) or {}
    pins = {entry.sha256} if entry.sha256 else set()
    if locked.get("origin") in _PINNING_ORIGINS:
        pins.add(locked["sha256"])
    if not pins:
        raise WeightsError(f"{weight.path} ({weight.name}) is not loaded: it is a {entry.format} file, which can run "
                           f"code, and its sha256 is not pinned (the manifest publishes none; the lock holds only the "
                           f"digest seen at download, {locked.get('sha256', 'none')}); check the file's sha256 against "
                           f"a source you trust, then pin it with {_pin_hint(weight.name)}")
    data = Path(weight.path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha not in pins:
        raise WeightsError(f"{weight.path} ({weight.name}) is not loaded: it has sha256 {sha}, not the pinned "
                           f"{' or '.join(sorted(pins))}, and a {entry.format} file can run code; delete it and "
                           f"fetch it again with {_prefetch_hint(weight.name)}")
    return data


def pin(name: str, sha256: str, root: Path | None = None, log: Callable[[str], None] = print) -> ResolvedWeight:
    """Record the user's own verified sha256 of ``name`` in the lock (origin ``user-pinned``).

    For files the manifest cannot pin (no published checksum) but whose loader can run code:
    the file in the cache must have exactly this digest.
    """
    root = root or cache_root()
    entry = manifest_entry(name)
    want = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise WeightsError(f"--sha256 {sha256!r} is not a sha256 (64 hex digits); compute it with "
                           f"`sha256sum {Path(entry.path).name}` on a copy you trust")
    if entry.sha256 and want != entry.sha256:
        raise WeightsError(f"{name}: the manifest pins sha256 {entry.sha256}; a different digest cannot be pinned")
    path = root / entry.path
    if not path.is_file():
        raise WeightsError(f"{name}: {path} is missing; fetch it first with {_prefetch_hint(name)}, then pin it")
    got = _fresh_sha256(path)
    if got != want:
        raise WeightsError(f"{name}: {path} has sha256 {got}, not the {want} given: not pinned "
                           f"(fetch the file you checked, or check this one)")
    locked = _read_json(root / LOCK_NAME).get(name) or {}
    if locked.get("origin") == "random-init" and locked.get("sha256") == got:
        raise WeightsError(f"{name}: {path} is a random-init file; only real weights are pinned")
    if entry.sha256:
        log(f"{name}: the manifest already pins {got}")
        return resolve(name, root)
    _lock(root, name, got, "user-pinned")
    log(f"{name}: pinned sha256 {got} (user-pinned) for {path}")
    return resolve(name, root)


def status(root: Path | None = None) -> list[dict[str, str]]:
    """One row per manifest entry: present/missing/corrupt and the file's origin."""
    root = root or cache_root()
    rows = []
    for name, entry in load_manifest().items():
        row = {"name": name, "path": entry.path, "used_by": ", ".join(entry.used_by), "licence": entry.licence}
        try:
            r = resolve(name, root)
            row.update(state="ok", origin=r.origin, sha256=r.sha256[:12])
            if r.origin == "upstream-unpinned" and entry.format in EXECUTABLE_FORMATS:
                row["detail"] = (f"a {entry.format} file can run code: it is not loaded until you check its sha256 "
                                 f"{r.sha256} and pin it with {_pin_hint(name)}")
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


def _missing_dirs(folder: Path) -> list[Path]:
    """The folders that creating ``folder`` would make, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _download(name: str, entry: WeightFile, target: Path) -> None:
    """``entry.source`` into ``target``; a network failure is one WeightsError naming the file, host and fix."""
    host = urllib.parse.urlsplit(entry.source).hostname or entry.source
    fix = (f"fetch {Path(entry.path).name} on a machine with network access and install it with "
           f"`harness weights prefetch {name} --from DIR`")
    try:
        with urllib.request.urlopen(entry.source, timeout=60) as response, target.open("wb") as f:  # noqa: S310
            shutil.copyfileobj(response, f, length=1 << 22)
    except urllib.error.HTTPError as exc:
        raise WeightsError(f"{name}: cannot download {entry.path}: {host} answered HTTP {exc.code} {exc.reason}; "
                           f"{fix}") from exc
    except urllib.error.URLError as exc:
        raise WeightsError(f"{name}: cannot download {entry.path}: {host} is unreachable ({exc.reason}); "
                           f"{fix}") from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise WeightsError(f"{name}: the download of {entry.path} from {host} broke off "
                           f"({type(exc).__name__}: {exc}); {fix}") from exc


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
        if source_dir is not None:
            src = Path(source_dir) / Path(entry.path).name
            if not src.is_file():
                raise WeightsError(f"{name}: {src} not found (--from looks for the upstream file name)")
        made = _missing_dirs(path.parent)
        tmp = path.with_name(path.name + ".partial")
        try:  # into a temp file next to the target; on any failure remove it and the folders made for it
            path.parent.mkdir(parents=True, exist_ok=True)
            if source_dir is not None:
                log(f"{name}: copying {src}")
                shutil.copyfile(src, tmp)
            else:
                log(f"{name}: downloading {entry.source}")
                _download(name, entry, tmp)
            sha = _fresh_sha256(tmp)
            if entry.sha256 and sha != entry.sha256:
                raise WeightsError(f"{name}: the fetched file has sha256 {sha}, the manifest pins {entry.sha256}; "
                                   "not installed (the source changed or the transfer was corrupted)")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            for folder in reversed(made):  # innermost first; rmdir leaves a folder that is not empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        locked = _read_json(root / LOCK_NAME).get(name) or {}
        kept_pin = locked.get("origin") == "user-pinned" and locked.get("sha256") == sha  # the same file again
        _lock(root, name, sha, "upstream" if entry.sha256 else "user-pinned" if kept_pin else "upstream-unpinned")
        done.append(resolve(name, root))
    return done


def init_random(names: Iterable[str] | None = None, root: Path | None = None, force: bool = False,
                log: Callable[[str], None] = print) -> list[ResolvedWeight]:
    """Write random-initialised files in the upstream layouts (marked ``random-init`` in the lock).

    For tests and dry runs on machines without the real weights; never overwrites a
    real file unless ``force``.
    """
    import harness.scorers.backends.real  # noqa: F401  (registers the random initialisers)

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
