"""Fault injection at every boundary of checkpoint saving and result storing: a crash anywhere, then
``--resume``, must leave a store equal row for row to an uninterrupted run's (issue: a crash between
writing a checkpoint and logging it lost its training logs for good)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import fast_preset, run_cache, shared_cache  # noqa: F401  (run_cache: autouse fixture)

import harness.rundir as rundir_mod
from harness.probing import ProbeRunner
from harness.runner import RunOptions, run
from harness.store import ResultStore

METRICS = ["motion_score", "subject_consistency", "distortion_rate"]


class Crash(BaseException):
    """A kill at this point: not an Exception, so nothing in the harness catches it."""


def _run(out: Path, resume: bool = False) -> None:
    run(fast_preset(), out, RunOptions(methods=["sft"], steps=4, eval_every=2, metrics=METRICS, show_progress=False,
                                resume=resume))


def _rows(df) -> list[tuple]:
    """Rows as tuples, NaN as None (NaN != NaN), sorted."""
    return sorted(tuple(None if isinstance(v, float) and v != v else v for v in row)
                  for row in df.itertuples(index=False, name=None))


def _tables(out: Path) -> dict[str, list[tuple]]:
    """Every stored number, keyed by names rather than row ids (which differ after a resume)."""
    with ResultStore(out / "results.sqlite") as s:
        agg, rec, logs, ck = s.aggregates(), s.records(), s.train_logs(), s.checkpoints()
    # wall-clock seconds never repeat: only where they were logged is compared
    return {
        "aggregates": _rows(agg[["method", "seed", "step", "metric", "value", "n", "ci_low", "ci_high"]]),
        "records": _rows(rec[["method", "seed", "step", "metric", "video_id", "value", "weight"]]),
        "train_logs": _rows(logs[logs["key"] != "seconds"][["method", "seed", "step", "key", "value"]]),
        "seconds logged at": _rows(logs[logs["key"] == "seconds"][["method", "seed", "step"]]),
        "checkpoints": _rows(ck[["method", "seed", "step", "path"]]),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("faults") / "reference"
    with shared_cache(tmp_path_factory):
        _run(out)
    return _tables(out)


def _after(obj, name: str, when):
    """Wrap ``obj.name`` so that the process "dies" right after the call for which ``when`` is true."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            raise Crash(name)
        return result

    return wrapper


def _nth(n: int, predicate=lambda *a, **k: True):
    count = {"n": 0}

    def when(*args, **kwargs):
        if predicate(*args, **kwargs):
            count["n"] += 1
            return count["n"] == n
        return False

    return when


def _sft(args) -> bool:  # store calls that concern the first trained checkpoint (the base has id 1)
    return int(args[1]) >= 2


# Each boundary, in the order a checkpoint is saved and its results stored (sft step 2 unless noted).
BOUNDARIES = {
    "mid-write of trainer_state.pt": ("torch.save", None),
    "files written, before the rename": ("rename", "before"),
    "renamed (DONE visible), before the logs are stored": ("rename", "after"),
    "logs stored, before the checkpoint row": (ResultStore, "log_train", _nth(1)),
    "checkpoint row, before the probe aggregates": (ResultStore, "checkpoint",
                                                    _nth(1, lambda self, run, method, *a, **k: method == "sft")),
    "probe aggregates, before the evaluation": (
        ProbeRunner, "store_checkpoint", _nth(1)),
    "samples written, before any metric": ("savez", 2),
    "records of a metric, before its aggregate": (ResultStore, "add_records", _nth(2, lambda *a, **k: _sft(a))),
    "aggregate of a metric, before the next metric": (ResultStore, "add_aggregate",
                                                     _nth(5, lambda *a, **k: _sft(a))),
    "roll-ups, before training goes on": (ResultStore, "add_aggregate",
                                          _nth(1, lambda self, c, metric, *a, **k: int(c) >= 2
                                               and metric.startswith("rollup:"))),
    "last checkpoint evaluated, before the run ends": (ResultStore, "add_aggregate",
                                                       _nth(1, lambda self, c, metric, *a, **k: int(c) >= 3
                                                            and metric.startswith("rollup:"))),
}


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_a_crash_at_every_boundary_resumes_to_the_uninterrupted_store(boundary, tmp_path, monkeypatch, reference):
    spec = BOUNDARIES[boundary]
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        if spec[0] == "torch.save":
            original = torch.save

            def half_save(obj, f, *a, **k):
                if str(f).endswith("trainer_state.pt"):
                    original(obj, f, *a, **k)
                    data = Path(f).read_bytes()
                    Path(f).write_bytes(data[: len(data) // 2])
                    raise Crash("torch.save")
                return original(obj, f, *a, **k)

            mp.setattr(torch, "save", half_save)
        elif spec[0] == "rename":
            original_rename = Path.rename

            def rename(self, target):
                if Path(target).name.startswith("step") and spec[1] == "before":
                    raise Crash("rename")
                result = original_rename(self, target)
                if Path(target).name.startswith("step"):
                    raise Crash("rename")
                return result

            mp.setattr(Path, "rename", rename)
        elif spec[0] == "savez":
            original_savez = np.savez_compressed
            calls = {"n": 0}

            def savez(file, *a, **k):
                original_savez(file, *a, **k)
                if "samples" in str(file):
                    calls["n"] += 1
                    if calls["n"] == spec[1]:
                        raise Crash("savez")

            mp.setattr(np, "savez_compressed", savez)
        else:
            cls, name, when = spec
            mp.setattr(cls, name, _after(cls, name, when))
        with pytest.raises(Crash):
            _run(out)
    # The injection fired where it should: the run stopped before its end.
    with ResultStore(out / "results.sqlite") as s:
        assert len(s.aggregates()) < len(reference["aggregates"])
    _run(out, resume=True)
    got = _tables(out)
    for table in reference:
        assert got[table] == reference[table], f"{table} differs after a crash at: {boundary}"


def test_checkpoint_files_carry_their_logs(tmp_path):
    out = tmp_path / "run"
    _run(out)
    logs = rundir_mod.RunDir.checkpoint_logs(out / "checkpoints" / "sft" / "seed0" / "step000002")
    assert {k for _, k, _ in logs} >= {"loss", "seconds"} and {s for s, _, _ in logs} == {0, 1, 2}
