"""Bad input to the readers (`regress`, `report`, `export`): a one-line error naming the file and the fix, exit 2
(never 1, which `regress` reserves for a regression), no traceback, and the bad file left exactly as it was."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import regress as rg
from harness.cli import app
from harness.store import ResultStore, StoreError, open_readonly

PRESET = {"name": "tiny", "sampler": {"kind": "ode", "num_steps": 4}}
METRICS = ["motion_score", "subject_consistency"]


def make_run(run_dir: Path) -> Path:
    """A small synthetic run: two methods, two seeds, two metrics, with run.json."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": "r", "preset": PRESET, "options": {"methods": ["sft"]},
                                                 "methods": {"sft": {}}, "metrics": METRICS}))
    with ResultStore(run_dir / "results.sqlite") as store:
        store.add_run("r", "tiny", {"preset": PRESET}, [0, 1], {})
        for method, step in (("base", 0), ("sft", 6)):
            for seed in (0, 1):
                cid = store.checkpoint("r", method, seed, step, None, PRESET["sampler"])
                for i, metric in enumerate(METRICS):
                    v = 0.5 + 0.01 * seed + 0.1 * i
                    store.add_aggregate(cid, metric, v, 8, v - 0.02, v + 0.02)
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, exit_code: int, *phrases: str) -> str:
    """Exit code, one line on the output starting with 'error:', each phrase in it, and no traceback."""
    out = result.output
    assert result.exit_code == exit_code, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# -- leaderboards ------------------------------------------------------------------------------------------
BAD_BOARDS = {
    "a JSON list": ("[1, 2]", "not a leaderboard"),
    "an empty object": ("{}", "not a leaderboard"),
    "no entries key": (json.dumps({"schema": rg.SCHEMA, "schema_version": rg.SCHEMA_VERSION}), "no entries"),
    "entries []": (json.dumps({"schema": rg.SCHEMA, "schema_version": rg.SCHEMA_VERSION, "entries": []}),
                   "no entries"),
    "entries not a list": (json.dumps({"schema": rg.SCHEMA, "schema_version": rg.SCHEMA_VERSION, "entries": {}}),
                           "no entries"),
    "an entry without values": (json.dumps({"schema": rg.SCHEMA, "schema_version": rg.SCHEMA_VERSION,
                                            "entries": [{"method": "sft", "step": 6, "metric": "m"}]}),
                                "entry 0"),
    "not JSON": ("{not json", "not valid JSON"),
}


def test_bad_leaderboards_exit_2_with_one_line_naming_the_file(run_dir: Path, tmp_path: Path) -> None:
    for what, (text, phrase) in BAD_BOARDS.items():
        path = tmp_path / "board.json"
        path.write_text(text)
        result = invoke("regress", run_dir, "--leaderboard", path)
        line = assert_one_line_error(result, 2, str(path), phrase)
        assert "--update" in line, (what, line)  # the fix
        assert path.read_text() == text
    missing = invoke("regress", run_dir, "--leaderboard", tmp_path / "nowhere.json")
    assert_one_line_error(missing, 2, str(tmp_path / "nowhere.json"), "--update")


def test_update_replaces_a_broken_leaderboard_but_not_a_foreign_file(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "board.json"
    for text in ("[]", '{"results": [1, 2]}', "{oops"):  # not a leaderboard (a wrong path?): left as it is
        path.write_text(text)
        result = invoke("regress", run_dir, "--leaderboard", path, "--update")
        assert_one_line_error(result, 2, str(path), "delete it and rebuild it with --update")
        assert path.read_text() == text
    for board in ({"entries": []}, {"entries": [{"method": "sft"}]}, {"schema_version": 0}):  # ours, unusable
        path.write_text(json.dumps({"schema": rg.SCHEMA, "schema_version": rg.SCHEMA_VERSION, **board}))
        result = invoke("regress", run_dir, "--leaderboard", path, "--update")
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output and "replacing it" in result.output
        assert len(rg.read_leaderboard(path)["entries"]) == 4  # 2 methods x 2 metrics (one step each)
        assert invoke("regress", run_dir, "--leaderboard", path).exit_code == 0


def test_regress_with_an_unreadable_run_json(run_dir: Path, tmp_path: Path) -> None:
    board = rg.write_leaderboard(rg.build_leaderboard(run_dir), tmp_path / "board.json")
    for text, phrase in (("{oops", "not valid JSON"), ("[]", "not a run manifest")):
        (run_dir / "run.json").write_text(text)
        for args in ((), ("--leaderboard", board)):  # the preset's leaderboard is looked up; settings compared
            assert_one_line_error(invoke("regress", run_dir, *args), 2, str(run_dir / "run.json"), phrase)


def test_regress_on_a_directory_that_is_not_a_run(run_dir: Path, tmp_path: Path) -> None:
    board = rg.write_leaderboard(rg.build_leaderboard(run_dir), tmp_path / "board.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("regress", empty, "--leaderboard", board)
    assert_one_line_error(result, 2, str(empty), "no results.sqlite", "harness run")
    assert list(empty.iterdir()) == []
    (empty / "results.sqlite").touch()  # a 0-byte file: refused, not given a schema
    for args in (("--leaderboard", board), ("--leaderboard", tmp_path / "new.json", "--update")):
        result = invoke("regress", empty, *args)
        assert_one_line_error(result, 2, str(empty / "results.sqlite"), "holds no results")
        assert _files(empty) == {"results.sqlite": b""}
    assert not (tmp_path / "new.json").exists()


# -- damaged results.sqlite ----------------------------------------------------------------------------------
def _damage(run_dir: Path, kind: str) -> None:
    db = run_dir / "results.sqlite"
    if kind == "random bytes":
        db.write_bytes(os.urandom(16384))
    else:  # a copy cut short, e.g. by a full disk
        db.write_bytes(db.read_bytes()[:8192])


@pytest.mark.parametrize("kind", ["random bytes", "truncated"])
def test_report_regress_export_refuse_a_damaged_store(run_dir: Path, tmp_path: Path, kind: str) -> None:
    board = rg.write_leaderboard(rg.build_leaderboard(run_dir), tmp_path / "board.json")
    _damage(run_dir, kind)
    db = run_dir / "results.sqlite"
    before = db.read_bytes()
    for args in (("report", "--run", run_dir), ("regress", run_dir, "--leaderboard", board),
                 ("export", "--results", run_dir)):
        result = invoke(*args)
        assert_one_line_error(result, 2, str(db), "not a readable results database", "rerun")
        assert db.read_bytes() == before, args
    assert not (run_dir / "report").exists() and not (run_dir / "export").exists()


def test_report_and_export_refuse_an_empty_store_without_creating_tables(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    db = run_dir / "results.sqlite"
    db.touch()
    for args in (("report", "--run", run_dir), ("export", "--results", run_dir)):
        result = invoke(*args)
        assert_one_line_error(result, 2, str(db), "holds no results")
        assert _files(run_dir) == {"results.sqlite": b""}, args  # still 0 bytes, no -wal/-shm/journal
    with sqlite3.connect(db) as conn:  # a database without a runs table (some other SQLite file)
        conn.execute("CREATE TABLE other (x)")
    conn.close()
    before = db.read_bytes()
    result = invoke("report", "--run", run_dir)
    assert_one_line_error(result, 2, str(db), "holds no results", "no 'runs' table")
    assert db.read_bytes() == before
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["other"]
    conn.close()


def test_reproduce_refuses_a_damaged_store_before_rerunning(run_dir: Path, tmp_path: Path) -> None:
    _damage(run_dir, "random bytes")
    before = _files(run_dir)
    result = invoke("reproduce", run_dir, "--out", tmp_path / "again")
    assert_one_line_error(result, 2, str(run_dir / "results.sqlite"), "not a readable results database")
    assert _files(run_dir) == before and not (tmp_path / "again").exists()


# -- the read-only store ---------------------------------------------------------------------------------------
def test_open_readonly_names_each_fault(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"nowhere\.sqlite does not exist"):
        with open_readonly(tmp_path / "nowhere.sqlite"):
            pass
    assert not (tmp_path / "nowhere.sqlite").exists()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match=r"junk\.sqlite is not a readable results database \(sqlite: file is not "
                                         r"a database\)"):
        with open_readonly(junk):
            pass
    db = tmp_path / "r.sqlite"
    ResultStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    with pytest.raises(StoreError, match="schema_version 99 is newer"):
        with open_readonly(db):
            pass


def test_readonly_reader_sees_a_live_wal_writer_and_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    writer = ResultStore(db)
    writer.add_run("r", None, {}, [0], {})
    cid = writer.checkpoint("r", "base", 0, 0, None, {})
    writer.add_aggregate(cid, "m", 1.0, 1)
    assert (tmp_path / "results.sqlite-wal").stat().st_size > 0  # committed rows still only in the WAL
    with open_readonly(db) as reader:
        assert list(reader.aggregates()["value"]) == [1.0]
        writer.add_aggregate(cid, "n", 2.0, 1)  # a commit while the reader is open is seen by its next read
        assert list(reader.aggregates()["value"]) == [1.0, 2.0]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.conn.execute("INSERT INTO meta VALUES ('x', 'y')")
    writer.close()
    with open_readonly(db) as reader:  # and after the writer has gone (WAL checkpointed and removed)
        assert len(reader.aggregates()) == 2
