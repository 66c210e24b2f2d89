import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.store import SCHEMA_VERSION, TABLES, ResultStore, bootstrap_ci, open_readonly

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"preset": "tiny", "sampler": {"kind": "ode", "steps": 4}, "lr": 1e-4}
SAMPLER = {"kind": "ode", "steps": 4}
METRIC = "dynamic_degree[flow=dis]"


def _store_with_ckpt(path: Path) -> tuple[ResultStore, int]:
    store = ResultStore(path)
    store.add_run("r1", "tiny", CONFIG, [0, 1], {"git": {"commit": "abc", "dirty": False}})
    return store, store.checkpoint("r1", "dpo", 0, 100, "/ckpt/dpo-100", SAMPLER)


def _rows(ids: list[str]) -> list[dict]:
    return [{"video_id": v, "value": float(i), "extras": {"i": i}} for i, v in enumerate(ids)]


def test_create_reopen_round_trip(tmp_path):
    db = tmp_path / "sub" / "results.sqlite"
    store, cid = _store_with_ckpt(db)
    store.add_records(cid, METRIC, _rows(["a", "b"]))
    store.add_aggregate(cid, METRIC, 0.5, 2, 0.0, 1.0, extras={"ci": "bootstrap"})
    store.add_skip(cid, "c", "corrupt file")
    store.log_train("r1", "dpo", 0, [(1, "loss", 0.9), (2, "loss", 0.8)])
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with ResultStore(db) as s:
        run = s.runs().iloc[0]
        assert run["config"] == CONFIG and run["seeds"] == [0, 1]
        assert run["provenance"]["git"]["commit"] == "abc"
        assert run["created"].endswith("+00:00")
        ck = s.checkpoints("r1").iloc[0]
        assert ck["sampler"] == SAMPLER and ck["path"] == "/ckpt/dpo-100" and ck["step"] == 100
        rec = s.records(metric=METRIC, run_id="r1")
        assert list(rec["video_id"]) == ["a", "b"] and list(rec["weight"]) == [1.0, 1.0]
        assert rec.iloc[1]["extras"] == {"i": 1} and set(rec["method"]) == {"dpo"}
        assert s.records(run_id="other").empty and s.records(metric="clip").empty
        agg = s.aggregates("r1").iloc[0]
        assert (agg["value"], agg["n"], agg["ci_high"], agg["extras"]) == (0.5, 2, 1.0, {"ci": "bootstrap"})
        assert s.skips().iloc[0]["reason"] == "corrupt file"
        assert list(s.train_logs("r1")["value"]) == [0.9, 0.8]


def test_add_run_idempotent_and_config_mismatch(tmp_path):
    store, _ = _store_with_ckpt(tmp_path / "r.sqlite")
    store.add_run("r1", "tiny", dict(reversed(CONFIG.items())), [0, 1], {"other": "provenance"})
    assert len(store.runs()) == 1
    changed = {**CONFIG, "lr": 3e-4, "extra": 1}
    with pytest.raises(ValueError, match=r"different config.*extra: \(absent\) -> 1; lr: 0.0001 -> 0.0003"):
        store.add_run("r1", "tiny", changed, [0, 1], {})
    store.close()


def test_checkpoint_get_or_create(tmp_path):
    store, cid = _store_with_ckpt(tmp_path / "r.sqlite")
    assert store.checkpoint("r1", "dpo", 0, 100, "/ckpt/dpo-100", SAMPLER) == cid
    assert store.checkpoint("r1", "dpo", 1, 100, "/ckpt/x", SAMPLER) != cid
    assert len(store.checkpoints()) == 2
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        store.checkpoint("no-such-run", "dpo", 0, 0, None, SAMPLER)
    with pytest.raises(ValueError, match="stored with sampler"):  # other sampler settings: new run
        store.checkpoint("r1", "dpo", 0, 100, "/ckpt/dpo-100", {**SAMPLER, "steps": 8})
    store.close()


def test_records_upsert_no_duplicates(tmp_path):
    store, cid = _store_with_ckpt(tmp_path / "r.sqlite")
    store.add_records(cid, METRIC, _rows(["a", "b", "c"]))
    store.add_records(cid, METRIC, [{"video_id": "b", "value": 42.0, "weight": 2.0}])
    rec = store.records()
    assert len(rec) == 3
    b = rec.set_index("video_id").loc["b"]
    assert (b["value"], b["weight"], b["extras"]) == (42.0, 2.0, None)
    store.add_aggregate(cid, METRIC, 1.0, 3)
    store.add_aggregate(cid, METRIC, 2.0, 3)
    assert list(store.aggregates()["value"]) == [2.0]
    store.close()


def test_resume_computes_only_missing(tmp_path):
    db, videos = tmp_path / "r.sqlite", [f"v{i:03d}" for i in range(40)]
    computed: list[str] = []

    def evaluate(store: ResultStore, cid: int, limit: int | None = None) -> None:
        if store.has_aggregate(cid, METRIC):
            return
        todo = sorted(set(videos) - store.done_videos(cid, METRIC))[:limit]
        for start in range(0, len(todo), 7):
            chunk = todo[start:start + 7]
            computed.extend(chunk)
            store.add_records(cid, METRIC, [{"video_id": v, "value": int(v[1:])} for v in chunk])
        if limit is None:
            vals = store.records(metric=METRIC)["value"].to_numpy()
            store.add_aggregate(cid, METRIC, *bootstrap_ci(vals)[:1], n=len(vals))

    store, cid = _store_with_ckpt(db)
    evaluate(store, cid, limit=20)  # "crash" halfway
    store.close()
    with ResultStore(db) as store:
        cid2 = store.checkpoint("r1", "dpo", 0, 100, "/ckpt/dpo-100", SAMPLER)
        assert cid2 == cid and len(store.done_videos(cid, METRIC)) == 20
        evaluate(store, cid)
        evaluate(store, cid)  # already aggregated: nothing recomputed
        rec = store.records()
        assert len(rec) == 40 and not rec.duplicated(["checkpoint_id", "metric", "video_id"]).any()
        assert sorted(computed) == videos  # each video computed exactly once
        assert store.aggregates().iloc[0]["value"] == pytest.approx(19.5)


def test_failing_batch_leaves_no_partial_rows(tmp_path):
    store, cid = _store_with_ckpt(tmp_path / "r.sqlite")
    store.add_records(cid, METRIC, _rows(["a"]))
    bad = _rows(["b", "c", "d"]) + [{"value": 1.0}] + _rows(["e"])
    with pytest.raises(KeyError, match="video_id"):
        store.add_records(cid, METRIC, bad)
    with pytest.raises(ValueError):
        store.log_train("r1", "dpo", 0, [(1, "loss", 0.5), (2, "loss", "not a number")])
    assert store.done_videos(cid, METRIC) == {"a"} and store.train_logs().empty
    store.add_records(cid, METRIC, _rows(["b"]))  # the connection is still usable afterwards
    assert store.done_videos(cid, METRIC) == {"a", "b"}
    store.close()


def test_sigkill_mid_write_leaves_whole_batches(tmp_path):
    db, batch = tmp_path / "r.sqlite", 50
    store, cid = _store_with_ckpt(db)
    store.close()
    script = textwrap.dedent(f"""
        from harness.store import ResultStore
        s = ResultStore({str(db)!r})
        i = 0
        while True:
            s.add_records({cid}, "m", [{{"video_id": f"b{{i}}_{{j}}", "value": j}} for j in range({batch})])
            i += 1
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        reader = sqlite3.connect(db, timeout=30)
        deadline = time.monotonic() + 60
        while reader.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "writer produced no batch in 60 s"
            time.sleep(0.01)
        reader.close()
        time.sleep(0.2)  # let it get well into later batches
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with ResultStore(db) as s:
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rec = s.records(metric="m")
        sizes = rec["video_id"].str.split("_").str[0].value_counts()
        assert len(rec) >= batch and (sizes == batch).all()
        assert sorted(int(b[1:]) for b in sizes.index) == list(range(len(sizes)))


def test_export_csv_and_parquet(tmp_path):
    store, cid = _store_with_ckpt(tmp_path / "r.sqlite")
    store.add_records(cid, METRIC, _rows(["a", "b", "c"]))
    store.add_aggregate(cid, METRIC, 1.0, 3)
    store.log_train("r1", "dpo", 0, [(s, "loss", 1.0 / s) for s in range(1, 6)])
    expected = {"runs": 1, "checkpoints": 1, "records": 3, "aggregates": 1, "skips": 0, "train_logs": 5,
                "inputs": 0, "sessions": 0}
    for fmt, read in (("csv", pd.read_csv), ("parquet", pd.read_parquet)):
        paths = store.export(tmp_path / fmt, fmt=fmt)
        assert {p.stem: len(read(p)) for p in paths} == expected
        assert all(p.suffix == f".{fmt}" for p in paths)
    with pytest.raises(ValueError, match="unknown export format 'xlsx'; allowed: csv, parquet"):
        store.export(tmp_path / "x", fmt="xlsx")
    store.close()


def test_bootstrap_ci():
    assert bootstrap_ci([0.1] * 7) == (0.1, 0.1, 0.1)
    assert bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    data = np.arange(1.0, 21.0)
    mean, low, high = bootstrap_ci(data)
    assert mean == 10.5 and low <= mean <= high and high - low < 8
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)
    assert bootstrap_ci(data, seed=3) != bootstrap_ci(data, seed=4)
    wmean, wlow, whigh = bootstrap_ci([1.0, 2.0, 10.0], weights=[3.0, 1.0, 0.0])
    assert wmean == pytest.approx(1.25) and wlow <= wmean <= whigh and whigh <= 2.0


def test_newer_schema_refused(tmp_path):
    db = tmp_path / "r.sqlite"
    ResultStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.close()
    message = rf"r\.sqlite: schema_version {SCHEMA_VERSION + 1} is newer .*supports \({SCHEMA_VERSION}\)"
    with pytest.raises(RuntimeError, match=message):
        ResultStore(db)


def test_each_session_is_recorded_and_names_what_it_wrote(tmp_path):
    """Results that a resumed run computed on other code say which code that was: every invocation that writes
    is a session (options, commit, versions), and each aggregate and training log names its session."""
    path = tmp_path / "r.sqlite"
    store, cid = _store_with_ckpt(path)
    store.add_aggregate(cid, "before", 1.0, 3)  # written outside any session (e.g. a test's store)
    first = store.begin_session("r1", {"command": "run"}, {"git": {"commit": "abc", "dirty": False}})
    store.add_aggregate(cid, METRIC, 1.0, 3)
    store.log_train("r1", "dpo", 0, [(1, "loss", 0.5)])
    store.close()
    with ResultStore(path) as store:  # resumed on other code
        second = store.begin_session("r1", {"command": "run", "resume": True}, {"git": {"commit": "def"}})
        ckpt = store.checkpoint("r1", "dpo", 0, 200, "/ckpt/dpo-200", SAMPLER)
        store.add_aggregate(ckpt, METRIC, 2.0, 3)
        store.log_train("r1", "dpo", 0, [(2, "loss", 0.4)])
        store.add_aggregate(cid, METRIC, 1.0, 3)  # stored again, unchanged: still the first session's number
        store.log_train("r1", "dpo", 0, [(1, "loss", 0.5)])
        store.add_aggregate(cid, "before", 1.5, 3)  # changed: now the second session's
    with open_readonly(path) as store:
        sessions = store.sessions("r1")
        agg = store.aggregates().set_index(["step", "metric"])["session_id"]
        logs = store.train_logs().set_index("step")["session_id"]
    assert list(sessions["session_id"]) == [first, second] and first != second
    assert [p["git"]["commit"] for p in sessions["provenance"]] == ["abc", "def"]
    assert sessions["command"].iloc[1] == {"command": "run", "resume": True}
    assert agg[(100, "before")] == second and agg[(100, METRIC)] == first and agg[(200, METRIC)] == second
    assert logs[1] == first and logs[2] == second


def test_a_store_from_before_sessions_gains_them_when_written(tmp_path):
    """An older file (no sessions table, no session columns): readers read it as it is; a writer adds the
    table and columns, its old rows naming no session."""
    path = tmp_path / "old.sqlite"
    store, cid = _store_with_ckpt(path)
    store.add_aggregate(cid, METRIC, 1.0, 3)
    store.close()
    con = sqlite3.connect(path)  # back to the layout before sessions
    con.executescript("DROP TABLE sessions; ALTER TABLE aggregates DROP COLUMN session_id; "
                      "ALTER TABLE train_logs DROP COLUMN session_id;")
    con.close()
    with open_readonly(path) as store:
        assert store.sessions().empty and "session_id" not in store.aggregates()
        assert {p.stem for p in store.export(tmp_path / "csv")} == set(TABLES) - {"sessions"}
    with ResultStore(path) as store:
        store.begin_session("r1", {"command": "run"}, {})
        store.add_aggregate(cid, "new", 2.0, 3)
        agg = store.aggregates().set_index("metric")["session_id"]
    assert pd.isna(agg[METRIC]) and agg["new"] == 1


def test_a_rerun_with_other_settings_names_each_one_that_differs(tmp_path):
    """A resumed run with other settings is refused naming every differing leaf (recorded -> now), not only
    its top-level section, so the user can see what to set back."""
    from harness.store import config_differences

    old = {"preset": {"eval": {"backends": {}, "num_videos": 16}}, "metrics": ["a[x=1]", "b"], "methods": {"sft": 1}}
    new = {"preset": {"eval": {"backends": {"a": {"x": 2}}, "num_videos": 16}}, "metrics": ["a[x=2]", "b"],
           "methods": {"sft": 1, "dpo": 2}}
    assert config_differences(old, new) == [
        'methods.dpo: (absent) -> 2', 'metrics[0]: "a[x=1]" -> "a[x=2]"',
        'preset.eval.backends.a: (absent) -> {"x": 2}']
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_run("r", "tiny", old, [0], {})
        with pytest.raises(ValueError, match=r"recorded -> now: methods.dpo: \(absent\) -> 2; metrics\[0\]"):
            store.add_run("r", "tiny", new, [0], {})


def test_opening_waits_for_another_process_that_is_writing(tmp_path):
    """Two workers of `harness run --jobs 2` open the run's store at once. Opening writes (the schema's meta
    row), so it must take the write lock before it reads: a read snapshot taken first goes stale when the
    other writer commits, and SQLite then refuses the write at once ("database is locked") instead of
    waiting. Here another connection holds the write lock and commits while the store is being opened."""
    import threading

    path = tmp_path / "results.sqlite"
    ResultStore(path).close()
    other = sqlite3.connect(path, check_same_thread=False)
    other.isolation_level = None
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO runs (run_id, preset, config_json, seeds_json, provenance_json, created) "
                  "VALUES ('other', 'tiny', '{}', '[]', '{}', 'now')")
    commit = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    commit.start()
    try:
        with ResultStore(path) as store:  # waits for the commit (timeout 30 s), then opens
            assert store.conn.execute("SELECT run_id FROM runs").fetchone() == ("other",)
    finally:
        commit.join()
        other.close()
