"""Bad input to the readers (`regress`, `report`, `export`): a one-line error naming the file and the fix, exit 2
(never 1, which `regress` reserves for a regression), no traceback, and the bad file left exactly as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from harness.store import ResultStore, StoreError, open_readonly


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
