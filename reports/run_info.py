"""What a report needs to know about a run besides its numbers: preset, methods, metrics, provenance.

``run.json`` is the primary source; the store's ``runs`` row (config and provenance) fills in when
``run.json`` is missing, so a report can still be rendered from ``results.sqlite`` alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.rundir import RunDir
from harness.store import ResultStore, scheduled_steps

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    run_dir: Path
    run_id: str
    preset: dict[str, Any] = field(default_factory=dict)  # the full preset config (may be empty)
    methods: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    git: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    preset_label: str | None = None  # the store's preset column, when the preset dict lacks a name
    method_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # trainer settings per method
    # the judges each method trained on (TrainerConfig.training_signals), as the run recorded them
    training_signals: dict[str, list[str]] = field(default_factory=dict)
    # each invocation that wrote into the run (store's sessions): started, command, provenance
    sessions: list[dict[str, Any]] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)  # their distinct commits, in order (ResultStore.session_commits)

    @property
    def preset_name(self) -> str | None:
        return self.preset.get("name") or self.preset_label

    @property
    def num_videos(self) -> int | None:
        """Eval videos of the final checkpoints the tables compare (and of the base model):
        eval.final_num_videos when set, else eval.num_videos (every checkpoint's)."""
        ev = self.preset.get("eval") or {}
        n = ev.get("final_num_videos") or ev.get("num_videos")
        return int(n) if n is not None else None

    @property
    def intermediate_num_videos(self) -> int | None:
        """Eval videos of the checkpoints between, when fewer than the final set's (eval.num_videos); else None."""
        ev = self.preset.get("eval") or {}
        n, final = ev.get("num_videos"), self.num_videos
        return int(n) if n is not None and final is not None and int(n) < final else None

    @property
    def scheduled_steps(self) -> dict[str, int]:
        """Each method's scheduled last step (its recorded ``steps``), where the run recorded one."""
        return scheduled_steps(self.method_configs)

    @property
    def sampler(self) -> dict[str, Any]:
        return dict(self.preset.get("sampler") or {})

    @property
    def concurrent_sessions(self) -> frozenset[int]:
        """The sessions that trained several method-seed units at once (`harness run --jobs N`, recorded in their
        command): the ``seconds`` they logged include the other jobs' work beside them, so they are no costs."""
        return frozenset(int(s["session_id"]) for s in self.sessions
                         if int(((s.get("command") or {}).get("jobs")) or 1) > 1)

    def jobs_line(self) -> str | None:
        """How many method-seed units trained at once, when a session trained several (`harness run --jobs`)."""
        jobs = sorted({int((s.get("command") or {}).get("jobs") or 1) for s in self.sessions} - {1})
        if not jobs:
            return None
        return (f"{' and '.join(map(str, jobs))} method-seed units at once (worker processes; the same numbers as "
                "one at a time): their training seconds include each other's work, so no table reads them as costs")

    def sessions_line(self) -> str | None:
        """The invocations that wrote the run, when there were several: when, and on which commits (a
        resumed or extended run may have run other code; each stored result names its session)."""
        if len(self.sessions) < 2:
            return None
        when = f"{str(self.sessions[0].get('started'))[:16]} to {str(self.sessions[-1].get('started'))[:16]} UTC"
        code = (f"commit {self.commits[0]}" if len(self.commits) == 1
                else f"{len(self.commits)} commits: {', '.join(self.commits)}")
        return f"{len(self.sessions)} sessions, {when}, on {code} (each result in the store names its session)"


def timed_alone(logs: pd.DataFrame, concurrent: frozenset[int]) -> pd.DataFrame:
    """``logs`` without the ``seconds`` rows of ``concurrent`` sessions: the training times that are costs."""
    if logs.empty or not concurrent or "session_id" not in logs:
        return logs
    return logs[~((logs["key"] == "seconds") & logs["session_id"].isin(concurrent))]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s is unreadable (%s); using the results store's copy", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _as_preset(value: Any) -> dict[str, Any]:
    """The preset config; a bare preset name (as some configs store it) becomes ``{"name": ...}``."""
    if isinstance(value, dict):
        return dict(value)
    return {"name": str(value)} if value else {}


def load_run_info(run_dir: Path, store: ResultStore) -> RunInfo:
    """Merge run.json with the store's run row; the run id must be one the store knows, if it knows any."""
    meta = _read_json(RunDir(run_dir).manifest)
    runs = store.runs()
    run_id = meta.get("run_id") or run_dir.resolve().name
    if not runs.empty and run_id not in set(runs["run_id"]):
        if len(runs) > 1:
            raise ValueError(f"{run_dir}: run.json names run {run_id!r}, the store holds "
                             f"{', '.join(runs['run_id'])}; cannot tell which to report")
        run_id = runs["run_id"].iloc[0]
    row = runs[runs["run_id"] == run_id].iloc[0].to_dict() if not runs.empty else {}
    config = row.get("config") or {}
    prov = row.get("provenance") or {}
    options = meta.get("options") or {}
    methods = options.get("methods") or list(meta.get("methods") or config.get("methods") or [])
    return RunInfo(
        run_dir=run_dir, run_id=str(run_id),
        preset=_as_preset(meta.get("preset") or config.get("preset")),
        methods=[str(m) for m in methods],
        metrics=[str(m) for m in meta.get("metrics") or config.get("metrics") or []],
        git=dict(meta.get("git") or prov.get("git") or {}),
        versions=dict(meta.get("versions") or prov.get("versions") or {}),
        hardware=dict(meta.get("hardware") or prov.get("hardware") or {}),
        preset_label=row.get("preset"),
        method_configs={str(k): dict(v) for k, v in (meta.get("methods") or config.get("methods") or {}).items()
                        if isinstance(v, dict)},
        training_signals=_signals(meta.get("training_signals") or config.get("training_signals"),
                                  meta.get("methods") or config.get("methods") or {}),
        sessions=store.sessions(str(run_id)).to_dict("records"),
        commits=store.session_commits(str(run_id)),
    )


def _signals(recorded: Any, method_configs: dict[str, Any]) -> dict[str, list[str]]:
    """The recorded training signals, or (a run from before they were recorded) the ones its method
    settings declare; a method whose settings no longer load is left out, with a warning."""
    if isinstance(recorded, dict):
        return {str(m): [str(s) for s in v] for m, v in recorded.items()}
    from trainers.registry import trainer_for

    out = {}
    for method, cfg in method_configs.items():
        try:
            out[str(method)] = trainer_for(method, cfg).config_class(**cfg).training_signals()
        except Exception as exc:  # an old or foreign config: the table cannot mark this method
            log.warning("training signals of method %s unknown (%s); its table cells are not marked", method, exc)
    return out
