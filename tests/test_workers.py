"""`harness run --jobs N`: units in worker processes store the same numbers, fail with one line, share caches."""

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny_runs import fast_preset, run_cache  # noqa: F401  (run_cache: autouse fixture)

from harness.config import load_preset
from harness.rundir import cache_lock
from harness.runner import JOBS_ENV, RunError, RunOptions, run, run_jobs
from harness.store import ResultStore
from reports.claims import HOLDS, UNSURE, RunData, _time_ratio
from reports.run_info import RunInfo, timed_alone

METRICS = ["dynamic_degree", "motion_score", "distortion_rate"]


def _opts(**kw):
    return RunOptions(**{"methods": ["sft", "dpo"], "steps": 2, "eval_every": 1, "metrics": METRICS,
                         "show_progress": False, **kw})


def _numbers(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    with ResultStore(out / "results.sqlite") as store:
        agg = store.aggregates()[["method", "seed", "step", "metric", "value", "ci_low", "ci_high"]]
        logs = store.train_logs()
        sessions = store.sessions()
    key = ["method", "seed", "step", "metric"]
    logs = logs[logs["key"] != "seconds"][["method", "seed", "step", "key", "value"]]
    return (agg.sort_values(key).reset_index(drop=True),
            logs.sort_values(["method", "seed", "step", "key"]).reset_index(drop=True), sessions)


def test_two_jobs_store_the_numbers_of_one_job_bit_for_bit(tmp_path):
    preset = fast_preset("methods.dpo.pairs.conditions=4")
    run(preset, tmp_path / "one", _opts(seeds=[0, 1], jobs=1))
    run(preset, tmp_path / "two", _opts(seeds=[0, 1], jobs=2))
    agg1, logs1, s1 = _numbers(tmp_path / "one")
    agg2, logs2, s2 = _numbers(tmp_path / "two")
    assert len(agg1) > 40 and set(agg1["method"]) == {"base", "sft", "dpo"}
    pd.testing.assert_frame_equal(agg1, agg2, check_exact=True)
    pd.testing.assert_frame_equal(logs1, logs2, check_exact=True)
    # each session records the jobs it trained with (its seconds are no costs when > 1)
    assert [c["jobs"] for c in s1["command"]] == [1] and [c["jobs"] for c in s2["command"]] == [2]
    # every unit wrote under the parent's session
    with ResultStore(tmp_path / "two" / "results.sqlite") as store:
        assert set(store.train_logs()["session_id"]) == {int(s2["session_id"].iloc[0])}


def test_a_failing_unit_stops_the_run_with_its_message_and_the_other_units_are_kept(tmp_path):
    preset = fast_preset("methods.dpo.pairs.source=file", "methods.dpo.pairs.path=/nonexistent/pairs.jsonl")
    with pytest.raises(RunError, match=r"^dpo seed 0: .*pairs\.jsonl") as err:
        run(preset, tmp_path / "run", _opts(methods=["sft", "dpo"], jobs=2))
    assert "\n" not in str(err.value)
    with ResultStore(tmp_path / "run" / "results.sqlite") as store:  # sft trained beside it, and is stored
        ckpts = store.checkpoints()
    assert sorted(ckpts[ckpts["method"] == "sft"]["step"]) == [1, 2]


def test_jobs_come_from_the_option_then_the_environment_then_the_preset(monkeypatch):
    preset = load_preset("tiny")
    assert preset.jobs == 2 and "jobs" not in preset.record()  # a run resumes at any jobs
    monkeypatch.delenv(JOBS_ENV, raising=False)
    assert run_jobs(preset, RunOptions(methods=["sft"])) == 2
    monkeypatch.setenv(JOBS_ENV, "1")
    assert run_jobs(preset, RunOptions(methods=["sft"])) == 1
    assert run_jobs(preset, RunOptions(methods=["sft"], jobs=3)) == 3
    monkeypatch.setenv(JOBS_ENV, "two")
    with pytest.raises(RunError, match="HARNESS_JOBS='two'"):
        run_jobs(preset, RunOptions(methods=["sft"]))
    with pytest.raises(RunError, match="jobs 0"):
        RunOptions(methods=["sft"], jobs=0)


def _hold(path: str, seconds: float, out: str) -> None:
    with cache_lock(Path(path)):
        Path(out).write_text(f"{time.time()}")
        time.sleep(seconds)
        Path(out).with_suffix(".end").write_text(f"{time.time()}")


def test_cache_lock_lets_one_process_in_at_a_time(tmp_path):
    ctx = mp.get_context("spawn")
    entry = str(tmp_path / "pairs" / "rollouts-x.npz")
    a = ctx.Process(target=_hold, args=(entry, 1.0, str(tmp_path / "a.start")))
    a.start()
    while not (tmp_path / "a.start").exists():
        time.sleep(0.02)
    b = ctx.Process(target=_hold, args=(entry, 0.0, str(tmp_path / "b.start")))
    b.start()
    a.join(30)
    b.join(30)
    assert a.exitcode == 0 and b.exitcode == 0
    assert float((tmp_path / "b.start").read_text()) >= float((tmp_path / "a.end").read_text())


def test_seconds_timed_beside_another_job_are_no_costs():
    logs = pd.DataFrame([
        {"method": "shift", "seed": 0, "step": 10, "key": "seconds", "value": 12.0, "session_id": 1},
        {"method": "sft", "seed": 0, "step": 10, "key": "seconds", "value": 10.0, "session_id": 1},
        {"method": "sft", "seed": 0, "step": 10, "key": "loss", "value": 0.5, "session_id": 1}])

    class Claim:
        a, b, ratio = "shift", "sft", 1.2

    alone = _time_ratio(RunData(pd.DataFrame(), logs), Claim())
    assert alone.verdict == HOLDS and "1.20" in alone.evidence
    beside = _time_ratio(RunData(pd.DataFrame(), logs, frozenset({1})), Claim())
    assert beside.verdict == UNSURE and "--jobs 1" in beside.evidence
    assert list(timed_alone(logs, frozenset({1}))["key"]) == ["loss"]
    assert timed_alone(logs, frozenset({2})).equals(logs)


def test_the_report_names_sessions_that_trained_units_at_once():
    info = RunInfo(Path("run"), "r", sessions=[{"session_id": 1, "command": {"jobs": 2}},
                                               {"session_id": 2, "command": {"jobs": 1}},
                                               {"session_id": 3, "command": {"methods": ["sft"]}}])
    assert info.concurrent_sessions == frozenset({1})
    assert info.jobs_line().startswith("2 method-seed units at once")
    assert RunInfo(Path("run"), "r", sessions=[{"session_id": 3, "command": {}}]).jobs_line() is None


ORPHAN_SCRIPT = '''
import contextlib, os, sys, time
from pathlib import Path
from harness.workers import Pool, run_units

@contextlib.contextmanager
def state(payload):
    yield payload

def work(folder, unit):
    Path(folder, f"worker-{unit}").write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    run_units(Pool(state, work, sys.argv[1]), [0, 1], 2)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_when_their_parent_is_killed(tmp_path):
    """A killed `harness run` (SIGKILL: no cleanup runs) leaves no worker writing into the run directory."""
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("worker-*"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
        pids = [int(p.read_text()) for p in tmp_path.glob("worker-*")]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 20
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
