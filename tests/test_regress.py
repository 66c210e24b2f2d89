"""`harness regress` and `harness reproduce`: the noise model by hand, a degraded trainer caught, unchanged
seeds passing, identical numbers from a re-run, and clear errors for bad leaderboards."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from harness import regress as rg
from harness.cli import app
from harness.config import load_preset, parse_override
from harness.reproduce import diff_runs, reproduce
from harness.runner import RunOptions, run
from harness.store import ResultStore

FAST = ["eval.num_videos=8", "eval.final_num_videos=null",
        "sampler.num_steps=4", "methods.sft.batch_size=4", "probes.pairs=2",
        "probes.draws=1", "probes.every=100"]
METRICS = ["motion_score", "subject_consistency", "distortion_rate", "motion_adherence"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-seed reference, two unchanged single-seed runs (other seeds) and one with the learning rate 0.05."""
    root = tmp_path_factory.mktemp("regress")
    mp = pytest.MonkeyPatch()
    mp.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))  # shared with test_runner

    def go(name, seeds, *extra):
        preset = load_preset("tiny", [parse_override(s) for s in (*FAST, *extra)])
        run(preset, root / name, RunOptions(methods=["sft"], seeds=seeds, steps=6, eval_every=6, metrics=METRICS,
                                            show_progress=False))
        return root / name

    out = {"ref": go("ref", [0, 1, 2]), "same3": go("same3", [3]), "same4": go("same4", [4]),
           "lr100": go("lr100", [3], "methods.sft.lr=0.05")}
    yield out
    mp.undo()


def _entry(values, ci=None, direction="higher"):
    ci = ci or [(None, None)] * len(values)
    return {"values": values, "boot_se": [None if lo is None else (hi - lo) / 2 / 1.96 for lo, hi in ci],
            "direction": direction}


def test_noise_band_by_hand():
    # Seed spread: reference 3 seeds (std 0.1), run 1 seed: se = 0.1 * sqrt(1/3 + 1) = 0.11547.
    ref, se = _entry([0.4, 0.5, 0.6]), 0.1 * math.sqrt(1 / 3 + 1)
    assert rg.compare_entry(ref, _entry([0.5 - 2.9 * se]))["verdict"] == "within noise"
    assert rg.compare_entry(ref, _entry([0.5 - 3.1 * se]))["verdict"] == "regression"
    assert rg.compare_entry(ref, _entry([0.5 + 3.1 * se]))["verdict"] == "improvement"
    assert rg.compare_entry({**ref, "direction": "lower"}, _entry([0.5 + 3.1 * se]))["verdict"] == "regression"
    assert rg.compare_entry({**ref, "direction": None}, _entry([0.5 + 3.1 * se]))["verdict"] == "changed"
    # One seed each: the bootstrap term. CI half-width 0.196 -> se 0.1 each -> combined 0.1414.
    one = _entry([0.5], [(0.304, 0.696)])
    band = rg.compare_entry(one, _entry([0.5], [(0.304, 0.696)]))["band"]
    assert band == pytest.approx(3 * math.sqrt(0.1 ** 2 + 0.1 ** 2))
    assert rg.compare_entry(one, _entry([0.5 - 0.43], [(0.1, 0.5)]))["verdict"] == "regression"
    # No noise estimate at all: exact up to floating-point tolerance; NaN from a finite value is a regression.
    assert rg.compare_entry(_entry([1.0]), _entry([1.0 + 1e-12]))["verdict"] == "same"
    # Another CPU's float32 sums (measured up to 2.4e-5 on the smoke run) are the same number, not a regression.
    assert rg.compare_entry(_entry([1729.2282]), _entry([1729.2282 + 0.04]))["verdict"] == "same"
    assert rg.compare_entry(_entry([0.94]), _entry([0.94 - 2.5e-5]))["verdict"] == "same"
    assert rg.compare_entry(_entry([1.0]), _entry([1.001]))["verdict"] == "improvement"
    assert rg.compare_entry(_entry([1.0]), _entry([None]))["verdict"] == "regression"
    assert rg.compare_entry(_entry([None]), _entry([None]))["verdict"] == "same"


def test_degraded_trainer_is_caught_and_unchanged_seeds_pass(runs, tmp_path):
    board = rg.build_leaderboard(runs["ref"])
    path = rg.write_leaderboard(board, tmp_path / "lb.json")
    assert rg.read_leaderboard(path)["entries"] == json.loads(json.dumps(board["entries"]))
    for name in ("same3", "same4"):  # other training seeds, same code: within noise everywhere
        cmp = rg.compare(rg.read_leaderboard(path), runs[name])
        assert cmp.ok, rg.format_comparison(cmp)
        assert cmp.missing.empty and cmp.new.empty and not cmp.config_changes
    bad = rg.compare(rg.read_leaderboard(path), runs["lr100"])
    assert not bad.ok
    assert set(bad.regressions["method"]) == {"sft"}  # the base model is untouched
    assert f"methods.sft.lr: {load_preset('tiny').methods['sft']['lr']} -> 0.05" in bad.config_changes
    result = CliRunner().invoke(app, ["regress", str(runs["lr100"]), "--leaderboard", str(path)])
    assert result.exit_code == 1 and "REGRESSION" in result.output and "methods.sft.lr" in result.output
    ok = CliRunner().invoke(app, ["regress", str(runs["same4"]), "--leaderboard", str(path)])
    assert ok.exit_code == 0 and "no regression" in ok.output


def test_update_writes_a_leaderboard_and_bad_files_are_named(runs, tmp_path):
    path = tmp_path / "board.json"
    missing = CliRunner().invoke(app, ["regress", str(runs["same3"]), "--leaderboard", str(path)])
    assert missing.exit_code == 2 and "--update" in missing.output
    upd = CliRunner().invoke(app, ["regress", str(runs["same3"]), "--leaderboard", str(path), "--update"])
    assert upd.exit_code == 0 and path.exists()
    board = json.loads(path.read_text())
    assert board["schema_version"] == rg.SCHEMA_VERSION and board["provenance"]["git"]["commit"]
    (session,) = board["provenance"]["sessions"]  # one invocation wrote the run: its command, commit, versions
    assert session["command"]["command"] == "run" and session["command"]["seeds"] == [3]
    assert session["git"] == board["provenance"]["git"] and session["versions"]["torch"]
    assert board["unfinished"] == [] and "unfinished" not in upd.output
    with ResultStore(runs["same3"] / "results.sqlite") as store:
        assert len(board["entries"]) == store.aggregates()[["method", "step", "metric"]].drop_duplicates().shape[0]
    path.write_text("{not json")
    broken = CliRunner().invoke(app, ["regress", str(runs["same3"]), "--leaderboard", str(path)])
    assert broken.exit_code == 2 and "not valid JSON" in broken.output
    path.write_text(json.dumps({"schema": "other", "schema_version": 9, "entries": []}))
    other = CliRunner().invoke(app, ["regress", str(runs["same3"]), "--leaderboard", str(path)])
    assert other.exit_code == 2 and "rebuild it with --update" in other.output


def test_a_run_with_unfinished_seeds_is_recorded_and_compared_with_a_warning(runs, tmp_path):
    """A run whose seed stopped before its scheduled last step (here: run.json schedules 12 steps, the store
    holds 6) is named when it is recorded as a leaderboard and when it is compared."""
    run_dir = tmp_path / "cut"
    shutil.copytree(runs["same3"], run_dir)
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["methods"]["sft"]["steps"] == 6
    manifest["methods"]["sft"]["steps"] = 12
    (run_dir / "run.json").write_text(json.dumps(manifest))
    path = tmp_path / "board.json"
    upd = CliRunner().invoke(app, ["regress", str(run_dir), "--leaderboard", str(path), "--update"])
    assert upd.exit_code == 0
    line = "unfinished seeds: sft seed 3 (evaluated to step 6 of 12)"
    assert f"warning: recording the run has {line}" in upd.output
    assert json.loads(path.read_text())["unfinished"] == [{"method": "sft", "seed": 3, "reached": 6, "scheduled": 12}]
    cmp = CliRunner().invoke(app, ["regress", str(run_dir), "--leaderboard", str(path)])
    assert cmp.exit_code == 0 and f"note: the run has {line}" in cmp.output


def test_same_seed_and_config_store_identical_numbers(runs, tmp_path):
    diff = reproduce(runs["same3"], tmp_path / "again")
    assert diff.identical and diff.compared["records"] > 0 and diff.compared["train_logs"] > 0
    assert not diff.provenance  # same code, same machine
    copy = shutil.copytree(runs["same3"], tmp_path / "copy")
    with ResultStore(copy / "results.sqlite") as store:  # a changed number is found and named
        store.conn.execute("UPDATE aggregates SET value = value + 1e-6 WHERE rowid = (SELECT MIN(rowid) "
                           "FROM aggregates)")
        store.conn.commit()
    changed = diff_runs(copy, tmp_path / "again")
    assert not changed.identical and len(changed.aggregates) == 1
    assert changed.aggregates["delta"].abs().iloc[0] == pytest.approx(1e-6)
    with ResultStore(copy / "results.sqlite") as store:  # the copy was resumed on other code: the diff says so
        store.begin_session(store.runs()["run_id"].iloc[0], {"command": "run", "resume": True},
                            {"git": {"commit": "0123456789abc"}})
    assert any(line.startswith("original: written by sessions on 2 commits") and "012345678" in line
               for line in diff_runs(copy, tmp_path / "again").provenance)


def test_reproduce_cli_refuses_a_directory_without_manifest(tmp_path):
    result = CliRunner().invoke(app, ["reproduce", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "run.json" in result.output
