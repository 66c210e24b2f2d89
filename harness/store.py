"""Results database: one SQLite file per study, keyed so a re-run computes only what is missing.

Every write is one transaction (``with conn:``), so a process killed mid-write leaves all or none of a
batch; WAL lets readers (reports, a second evaluator) see committed data while a writer is running.
Per-video values live in ``records``, summaries in ``aggregates``; both hang off a checkpoint
(run, method, seed, step), which is what "already computed" is judged against.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
TABLES = ("runs", "checkpoints", "records", "aggregates", "skips", "train_logs", "inputs", "sessions")
EXPORT_FORMATS = ("csv", "parquet")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created TEXT NOT NULL, preset TEXT, config_json TEXT NOT NULL,
    seeds_json TEXT NOT NULL, provenance_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    checkpoint_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id), method TEXT NOT NULL, seed INTEGER NOT NULL,
    step INTEGER NOT NULL, path TEXT, sampler_json TEXT NOT NULL, created TEXT NOT NULL,
    UNIQUE (run_id, method, seed, step));
CREATE TABLE IF NOT EXISTS records (
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(checkpoint_id), metric TEXT NOT NULL,
    video_id TEXT NOT NULL, value REAL, weight REAL NOT NULL DEFAULT 1, extras_json TEXT,
    PRIMARY KEY (checkpoint_id, metric, video_id));
CREATE TABLE IF NOT EXISTS aggregates (
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(checkpoint_id), metric TEXT NOT NULL,
    value REAL, n INTEGER NOT NULL, ci_low REAL, ci_high REAL, extras_json TEXT,
    PRIMARY KEY (checkpoint_id, metric));
CREATE TABLE IF NOT EXISTS skips (
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(checkpoint_id), video_id TEXT NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY (checkpoint_id, video_id));
CREATE TABLE IF NOT EXISTS train_logs (
    run_id TEXT NOT NULL REFERENCES runs(run_id), method TEXT NOT NULL, seed INTEGER NOT NULL,
    step INTEGER NOT NULL, key TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, method, seed, step, key));
CREATE TABLE IF NOT EXISTS inputs (
    checkpoint_id INTEGER PRIMARY KEY REFERENCES checkpoints(checkpoint_id), key_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id),
    started TEXT NOT NULL, command_json TEXT, provenance_json TEXT NOT NULL);
"""
# Columns added after the first layout: (table, column, type). A writer adds them to an older file (its old
# rows hold NULL: made before sessions were recorded); readers never migrate and read what is there.
_ADDED_COLUMNS = (("aggregates", "session_id", "INTEGER"), ("train_logs", "session_id", "INTEGER"))

_CKPT_COLS = "c.run_id, c.method, c.seed, c.step"

# Upserts whose row keeps the session that computed it: rewriting the same numbers (a resumed run storing
# again what its files or dimensions give) leaves session_id alone; a changed number names the writing session.
_UPSERT_AGGREGATE = """
INSERT INTO aggregates (checkpoint_id, metric, value, n, ci_low, ci_high, extras_json, session_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (checkpoint_id, metric) DO UPDATE SET
    session_id = CASE WHEN aggregates.value IS excluded.value AND aggregates.n = excluded.n
                       AND aggregates.ci_low IS excluded.ci_low AND aggregates.ci_high IS excluded.ci_high
                       AND aggregates.extras_json IS excluded.extras_json
                  THEN aggregates.session_id ELSE excluded.session_id END,
    value = excluded.value, n = excluded.n, ci_low = excluded.ci_low, ci_high = excluded.ci_high,
    extras_json = excluded.extras_json"""
_UPSERT_TRAIN_LOG = """
INSERT INTO train_logs (run_id, method, seed, step, key, value, session_id) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, method, seed, step, key) DO UPDATE SET
    session_id = CASE WHEN train_logs.value IS excluded.value THEN train_logs.session_id
                      ELSE excluded.session_id END,
    value = excluded.value"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _dumps(obj: Any) -> str | None:
    # Sorted keys make equal configs compare equal as text; default=str keeps Paths etc. storable.
    return None if obj is None else json.dumps(obj, sort_keys=True, default=str)


def _decode(df: pd.DataFrame) -> pd.DataFrame:
    """JSON text columns become Python objects, named without the ``_json`` suffix."""
    for col in [c for c in df.columns if c.endswith("_json")]:
        df[col] = df[col].map(lambda s: json.loads(s) if isinstance(s, str) else None).astype(object)
        df = df.rename(columns={col: col.removesuffix("_json")})
    return df


class ResultStore:
    """One SQLite results file; safe to reopen, resume, and read while another process writes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._lock = threading.RLock()  # one connection shared by threads: keep transactions apart
        try:
            self._check_version()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            # IMMEDIATE: take the write lock before reading the layout. A deferred transaction reads first, and
            # when another process (a --jobs worker) commits meanwhile, SQLite refuses its write at once
            # ("database is locked") instead of waiting out the timeout (tests/test_store.py).
            self.conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nINSERT OR IGNORE INTO meta VALUES "
                                    f"('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;")
            with self.conn:
                for table, column, kind in _ADDED_COLUMNS:
                    if column not in {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except BaseException:
            self.conn.close()
            raise
        self.session_id: int | None = None

    def _check_version(self) -> None:
        """Refuse before touching anything: an older harness must not write into a newer layout."""
        has_meta = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema_version {row[0]} is newer than this harness supports "
                               f"({SCHEMA_VERSION}); upgrade the harness to read it")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self.conn:
            yield self.conn

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writers -------------------------------------------------------------------------------------

    def add_run(self, run_id: str, preset: str | None, config: dict, seeds: Sequence[int],
                provenance: dict) -> None:
        """Register a run; a resumed run must carry the same config or its results would be mixed."""
        with self._tx() as c:
            row = c.execute("SELECT config_json FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                c.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                          (run_id, _now(), preset, _dumps(config), _dumps([int(s) for s in seeds]),
                           _dumps(provenance)))
                return
            old, new = json.loads(row[0]), json.loads(_dumps(config))
            if old != new:
                diffs = config_differences(old, new)
                shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
                raise ValueError(f"run {run_id!r} already exists in {self.path} with a different config "
                                 f"(recorded -> now: {shown}); a resumed run must use the same config, or pick "
                                 "a new run_id")

    def begin_session(self, run_id: str, command: dict, provenance: dict) -> int:
        """Record one invocation that writes into a run (its options, commit, library versions, hardware);
        the aggregates and training logs written from here on name it, so results a resumed or extended run
        computed on other code say which code that was."""
        with self._tx() as c:
            cur = c.execute("INSERT INTO sessions (run_id, started, command_json, provenance_json) "
                            "VALUES (?, ?, ?, ?)", (run_id, _now(), _dumps(command), _dumps(provenance)))
        self.session_id = int(cur.lastrowid)
        return self.session_id

    def run_config(self, run_id: str) -> dict | None:
        """The config a run was registered with (None: no such run)."""
        with self._lock:
            row = self.conn.execute("SELECT config_json FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_config(self, run_id: str, config: dict) -> None:
        """Record the config of a run that was deliberately extended (methods added to it)."""
        with self._tx() as c:
            c.execute("UPDATE runs SET config_json=? WHERE run_id=?", (_dumps(config), run_id))

    def seeds(self, run_id: str) -> list[int] | None:
        """The seeds a run was registered with (None: no such run)."""
        with self._lock:
            row = self.conn.execute("SELECT seeds_json FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_seeds(self, run_id: str, seeds: Sequence[int]) -> None:
        """Record the seeds of a run that was deliberately extended."""
        with self._tx() as c:
            c.execute("UPDATE runs SET seeds_json=? WHERE run_id=?", (_dumps(sorted(int(s) for s in seeds)), run_id))

    def bind_inputs(self, checkpoint_id: int, key: dict) -> str | None:
        """Tie a checkpoint's results to what they are computed from (weights digest, sampler, eval set,
        video digests). With other inputs than the stored ones, every result of the checkpoint is deleted
        in one transaction, so nothing computed from the old inputs stays under its name; the old key is
        returned (None when the inputs are new or unchanged)."""
        text = _dumps(key)
        with self._tx() as c:
            row = c.execute("SELECT key_json FROM inputs WHERE checkpoint_id=?", (checkpoint_id,)).fetchone()
            if row is not None and row[0] == text:
                return None
            if row is not None:
                for table in ("records", "aggregates", "skips"):
                    c.execute(f"DELETE FROM {table} WHERE checkpoint_id=?", (checkpoint_id,))
            c.execute("INSERT OR REPLACE INTO inputs VALUES (?, ?)", (checkpoint_id, text))
        return None if row is None else row[0]

    def checkpoint(self, run_id: str, method: str, seed: int, step: int, path: str | Path | None,
                   sampler: dict) -> int:
        """Get-or-create, so evaluating the same checkpoint twice reuses its id and its results."""
        key = (run_id, method, int(seed), int(step))
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO checkpoints (run_id, method, seed, step, path, sampler_json, "
                      "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (*key, None if path is None else str(path), _dumps(sampler), _now()))
            ckpt_id, stored = c.execute("SELECT checkpoint_id, sampler_json FROM checkpoints WHERE run_id=? "
                                        "AND method=? AND seed=? AND step=?", key).fetchone()
        if stored != _dumps(sampler):
            # Numbers from different sampler settings must never share a checkpoint row.
            raise ValueError(f"checkpoint {key} is stored with sampler {stored}, not {_dumps(sampler)}; "
                             "use a new run directory to evaluate with other sampler settings")
        return ckpt_id

    def add_records(self, checkpoint_id: int, metric: str, rows: Iterable[dict]) -> None:
        """Upsert per-video values in one transaction: a failing row rolls back the whole batch."""
        # A None value is a video the metric scored but excluded (e.g. flickering of a moving video).
        params = ((checkpoint_id, metric, str(r["video_id"]), None if r["value"] is None else float(r["value"]),
                   float(r.get("weight", 1.0)), _dumps(r.get("extras"))) for r in rows)
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?)", params)

    def add_aggregate(self, checkpoint_id: int, metric: str, value: float | None, n: int,
                      ci_low: float | None = None, ci_high: float | None = None,
                      extras: dict | None = None) -> None:
        """Upsert; its presence is what marks a metric done for :meth:`has_aggregate`."""
        value, ci_low, ci_high = (None if x is None else float(x) for x in (value, ci_low, ci_high))
        with self._tx() as c:
            c.execute(_UPSERT_AGGREGATE,
                      (checkpoint_id, metric, value, int(n), ci_low, ci_high, _dumps(extras), self.session_id))

    def add_skip(self, checkpoint_id: int, video_id: str, reason: str) -> None:
        """Record why a video was not evaluated, so the gap is reported rather than silently averaged."""
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO skips VALUES (?, ?, ?)", (checkpoint_id, str(video_id), reason))

    def log_train(self, run_id: str, method: str, seed: int,
                  rows: Iterable[tuple[int, str, float]]) -> None:
        params = ((run_id, method, int(seed), int(step), key, float(value), self.session_id)
                  for step, key, value in rows)
        with self._tx() as c:
            c.executemany(_UPSERT_TRAIN_LOG, params)

    # ---- resume queries ------------------------------------------------------------------------------

    def drop_metric(self, run_id: str, name: str, keep: str) -> int:
        """Delete the run's results (aggregates and per-video records) of metric ``name`` under every identity
        but ``keep``: a metric re-scored with another backend replaces the old one instead of standing beside
        it. Returns how many aggregates were deleted."""
        where = ("checkpoint_id IN (SELECT checkpoint_id FROM checkpoints WHERE run_id=?) "
                 "AND (metric=? OR substr(metric, 1, ?)=?) AND metric<>?")
        params = (run_id, name, len(name) + 1, f"{name}[", keep)
        with self._tx() as c:
            c.execute(f"DELETE FROM records WHERE {where}", params)
            return c.execute(f"DELETE FROM aggregates WHERE {where}", params).rowcount

    def drop_rollups(self, run_id: str) -> int:
        """Delete the run's roll-up aggregates (``rollup:*``), which are derived from its stored dimensions: after
        a dimension is replaced they are computed again, and one that has no value any more must not stay."""
        with self._tx() as c:
            return c.execute("DELETE FROM aggregates WHERE checkpoint_id IN (SELECT checkpoint_id FROM checkpoints "
                             "WHERE run_id=?) AND substr(metric, 1, 7)='rollup:'", (run_id,)).rowcount

    def has_aggregate(self, checkpoint_id: int, metric: str) -> bool:
        with self._lock:
            return self.conn.execute("SELECT 1 FROM aggregates WHERE checkpoint_id=? AND metric=?",
                                     (checkpoint_id, metric)).fetchone() is not None

    def done_videos(self, checkpoint_id: int, metric: str) -> set[str]:
        """Videos already scored, so a resumed evaluation skips them."""
        with self._lock:
            cur = self.conn.execute("SELECT video_id FROM records WHERE checkpoint_id=? AND metric=?",
                                    (checkpoint_id, metric))
            return {r[0] for r in cur}

    # ---- readers -------------------------------------------------------------------------------------

    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self._lock:
            return _decode(pd.read_sql_query(sql, self.conn, params=list(params)))

    @staticmethod
    def _where(**filters: Any) -> tuple[str, list[Any]]:
        used = {k: v for k, v in filters.items() if v is not None}
        return (" WHERE " + " AND ".join(f"{k}=?" for k in used) if used else ""), list(used.values())

    def runs(self) -> pd.DataFrame:
        return self._frame("SELECT * FROM runs ORDER BY created, run_id")

    def checkpoints(self, run_id: str | None = None) -> pd.DataFrame:
        where, params = self._where(run_id=run_id)
        return self._frame(f"SELECT * FROM checkpoints{where} ORDER BY checkpoint_id", params)

    def records(self, metric: str | None = None, run_id: str | None = None) -> pd.DataFrame:
        where, params = self._where(**{"r.metric": metric, "c.run_id": run_id})
        return self._frame(f"SELECT {_CKPT_COLS}, r.* FROM records r JOIN checkpoints c USING (checkpoint_id)"
                           f"{where} ORDER BY r.checkpoint_id, r.metric, r.video_id", params)

    def aggregates(self, run_id: str | None = None) -> pd.DataFrame:
        where, params = self._where(**{"c.run_id": run_id})
        return self._frame(f"SELECT {_CKPT_COLS}, a.* FROM aggregates a JOIN checkpoints c "
                           f"USING (checkpoint_id){where} ORDER BY a.checkpoint_id, a.metric", params)

    def skips(self) -> pd.DataFrame:
        return self._frame(f"SELECT {_CKPT_COLS}, s.* FROM skips s JOIN checkpoints c USING (checkpoint_id) "
                           "ORDER BY s.checkpoint_id, s.video_id")

    def sessions(self, run_id: str | None = None) -> pd.DataFrame:
        """The invocations that wrote into the store (none in a file from before sessions were recorded)."""
        with self._lock:
            has = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='sessions'").fetchone()
        if not has:
            return pd.DataFrame(columns=["session_id", "run_id", "started", "command", "provenance"])
        where, params = self._where(run_id=run_id)
        return self._frame(f"SELECT * FROM sessions{where} ORDER BY session_id", params)

    def session_commits(self, run_id: str | None = None) -> list[str]:
        """The distinct commits of the sessions that wrote into the store (or ``run_id``), in order, each
        as a 9-character label; "(uncommitted changes)" marks a session that ran on a dirty tree."""
        out: list[str] = []
        for prov in self.sessions(run_id)["provenance"]:
            git = (prov or {}).get("git") or {}
            label = str(git.get("commit", "unknown"))[:9] + (" (uncommitted changes)" if git.get("dirty") else "")
            if label not in out:
                out.append(label)
        return out

    def train_logs(self, run_id: str | None = None) -> pd.DataFrame:
        where, params = self._where(run_id=run_id)
        order = " ORDER BY run_id, method, seed, step, key"
        return self._frame(f"SELECT * FROM train_logs{where}{order}", params)

    def export(self, directory: str | Path, fmt: str = "csv") -> list[Path]:
        """Flat files for tools without SQLite; JSON columns stay as JSON text so every format holds them."""
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        with self._lock:
            present = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in (t for t in TABLES if t in present):  # a file from before a table existed lacks it
            with self._lock:
                df = pd.read_sql_query(f"SELECT * FROM {table}", self.conn)
            path = out / f"{table}.{fmt}"
            if fmt == "csv":
                df.to_csv(path, index=False)
            else:
                df.to_parquet(path, index=False)
            paths.append(path)
        return paths


@dataclass(frozen=True)
class Unfinished:
    """A training seed whose last evaluated checkpoint comes before its method's scheduled last step."""

    method: str
    seed: int
    reached: int  # its last evaluated step
    scheduled: int  # the method's ``steps``

    def __str__(self) -> str:
        return f"{self.method} seed {self.seed} (evaluated to step {self.reached} of {self.scheduled})"


def unfinished_seeds(agg: pd.DataFrame, schedule: Mapping[str, int] | None) -> tuple[Unfinished, ...]:
    """Each (method, seed) of ``agg`` (aggregates: method, seed, step) evaluated only before the method's
    scheduled last step (``schedule``: method -> steps, ``scheduled_steps`` of the run's recorded method
    settings): an interrupted run, or one still training. Methods the schedule does not name (the base model)
    are never unfinished. Final comparisons (reports, claims) leave these seeds out; a leaderboard names them."""
    if not schedule or agg.empty:
        return ()
    last = agg.groupby(["method", "seed"])["step"].max()
    return tuple(Unfinished(str(m), int(s), int(step), int(schedule[m])) for (m, s), step in last.items()
                 if m in schedule and int(step) < int(schedule[m]))


def drop_unfinished(frame: pd.DataFrame, unfinished: Iterable[Unfinished]) -> pd.DataFrame:
    """``frame`` (method and seed columns) without the rows of the unfinished seeds."""
    keys = {(u.method, u.seed) for u in unfinished}
    if not keys or frame.empty:
        return frame
    pairs = zip(frame["method"].astype(str), frame["seed"].astype(int), strict=True)
    return frame[[p not in keys for p in pairs]]


def config_differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Each setting that differs between two recorded configs, as ``dotted.path: old -> new`` (leaves of nested
    mappings and of lists of one length; a list whose length changed is one leaf), so an error can name what to
    set back."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(old.keys() | new.keys(), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                out.append(f"{sub}: {_short(old[key])} -> (absent)")
            elif key not in old:
                out.append(f"{sub}: (absent) -> {_short(new[key])}")
            else:
                out += config_differences(old[key], new[key], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [d for n, (a, b) in pairs for d in config_differences(a, b, f"{path}[{n}]")]
    return [] if old == new else [f"{path}: {_short(old)} -> {_short(new)}"]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scheduled_steps(method_configs: Any) -> dict[str, int]:
    """Each method's scheduled last step (its recorded ``steps``), from the method settings a run recorded
    (run.json ``methods``); methods without one are left out."""
    if not isinstance(method_configs, dict):
        return {}
    return {str(m): int(cfg["steps"]) for m, cfg in method_configs.items()
            if isinstance(cfg, dict) and isinstance(cfg.get("steps"), int) and not isinstance(cfg.get("steps"), bool)}


class StoreError(ValueError):
    """A results file a reader cannot use: missing, not SQLite, damaged, or holding no results."""


_RESTORE = "restore it from a backup, or rerun into a new directory with `harness run --out NEW_DIR`"


@contextmanager
def open_readonly(path: str | Path) -> Iterator[ResultStore]:
    """A store for readers (reports, regress, export): never creates, migrates or writes the file.

    The connection is SQLite's ``mode=ro``, so a 0-byte or foreign file stays as it is and committed rows
    of a live writer (still in its ``-wal``) are seen. A WAL file with no writer attached gets SQLite's
    own ``-wal``/``-shm`` companions created next to it (empty; a later writer reuses them). Every fault,
    at open or while reading inside the ``with``, becomes a one-line :class:`StoreError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist; point at the results.sqlite a run wrote "
                         "(`harness run --out DIR` writes DIR/results.sqlite)")
    store = ResultStore.__new__(ResultStore)  # not __init__: that creates the schema
    store.path, store._lock, store.session_id = path, threading.RLock(), None
    try:
        store.conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                     check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"{path} cannot be opened (sqlite: {exc}); check its permissions") from exc
    try:
        try:
            tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "runs" not in tables:
                what = "an empty file" if path.stat().st_size == 0 else "no 'runs' table"
                raise StoreError(f"{path} holds no results ({what}): it is not a store written by `harness run` "
                                 "or `harness eval`; point at the right run directory, or move the file away "
                                 "and rerun the run")
            try:
                store._check_version()
            except RuntimeError as exc:
                raise StoreError(str(exc)) from exc
            yield store
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, I/O error, ...: the file may be fine
                raise StoreError(f"{path} could not be read (sqlite: {exc}); retry, or check the disk and "
                                 "the file's permissions") from exc
            raise StoreError(f"{path} is not a readable results database (sqlite: {exc}); {_RESTORE}") from exc
    finally:
        store.conn.close()


def bootstrap_ci(values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap of the (weighted) mean over videos; seeded so reports are reproducible."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != v.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative, sum > 0 and match values ({v.size}); got {w.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    mean = float(np.dot(w, v) / w.sum())
    if v.size == 1 or (v == v[0]).all():  # no spread: avoid float noise from resampled sums
        return float(v[0]), float(v[0]), float(v[0])
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    wb = w[idx]
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of only zero-weight videos
        boot = (wb * v[idx]).sum(axis=1) / wb.sum(axis=1)
    low, high = np.nanquantile(boot, [alpha / 2, 1 - alpha / 2])
    return mean, float(low), float(high)
