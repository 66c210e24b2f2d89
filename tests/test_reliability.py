"""Issue #30: no number stored under the wrong name, settings and identity of a run, clear errors.

Each test reproduces a fault that main had (the docstring says what happened before)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_runs import FAST, fast_preset, run_cache, shared_cache  # noqa: F401  (run_cache: autouse fixture)
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir import RunDir, RunDirError
from harness.runner import RunError, RunOptions, run
from harness.store import ResultStore

METRICS = ["motion_score", "subject_consistency", "distortion_rate"]
SETS = [a for s in FAST for a in ("--set", s)]


_preset = fast_preset


def _opts(**kw):
    return RunOptions(**{"methods": ["sft"], "steps": 2, "eval_every": 1, "metrics": METRICS,
                         "show_progress": False, **kw})


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _agg(db: Path, **where) -> dict:
    with ResultStore(db) as s:
        agg = s.aggregates()
    for k, v in where.items():
        agg = agg[agg[k] == v]
    return {r.metric: (r.value, r.n) for r in agg.itertuples() if not r.metric.startswith("rollup:")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of sft, checkpoints at steps 1 and 2, each evaluated by the run itself."""
    out = tmp_path_factory.mktemp("rel") / "run"
    with shared_cache(tmp_path_factory):
        run(_preset(), out, _opts())
    return out


def _ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / "sft" / "seed0" / f"step{step:06d}"


# -- 1. eval --checkpoint: samples tied to the checkpoint's weights --------------------------------------------

def test_eval_checkpoint_never_reuses_another_checkpoints_samples(trained, tmp_path):
    """Before: step 2 evaluated into the --out of step 1 reused step 1's samples.npz and stored its scores."""
    out = tmp_path / "eval"
    metrics = ",".join(METRICS)
    for step in (1, 2):
        r = _cli("eval", "--checkpoint", _ckpt(trained, step), "--out", out, "--metrics", metrics, *SETS)
        assert r.exit_code == 0, r.output
    for step in (1, 2):
        own = _agg(trained / "results.sqlite", method="sft", step=step)
        got = _agg(out / "results.sqlite", method="sft", step=step)
        assert got == {m: own[m] for m in got} and len(got) == len(METRICS)
    assert _agg(out / "results.sqlite", step=1) != _agg(out / "results.sqlite", step=2)
    # The same checkpoint path with other weights: its stored results and samples are dropped, not reused.
    moved = tmp_path / "copy"
    shutil.copytree(trained, moved)
    args = ("eval", "--checkpoint", _ckpt(moved, 1), "--out", tmp_path / "eval2", "--metrics", metrics, *SETS)
    assert _cli(*args).exit_code == 0
    assert _agg(tmp_path / "eval2" / "results.sqlite") == _agg(out / "results.sqlite", step=1)
    shutil.copy(_ckpt(moved, 2) / "lora.safetensors", _ckpt(moved, 1) / "lora.safetensors")
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    assert _agg(tmp_path / "eval2" / "results.sqlite") == _agg(out / "results.sqlite", step=2)


def test_samples_made_from_other_inputs_are_sampled_again(trained, tmp_path):
    """Before: any samples.npz at the path was used, whatever model or sampler made it."""
    out = tmp_path / "eval"
    args = ("eval", "--checkpoint", _ckpt(trained, 2), "--out", out, "--metrics", "motion_score", *SETS)
    assert _cli(*args).exit_code == 0
    first = _agg(out / "results.sqlite")
    # Plant step 1's samples (no key) under step 2's name and drop the results: they must not be used.
    with ResultStore(out / "results.sqlite") as s:
        s.conn.execute("DELETE FROM aggregates")
        s.conn.execute("DELETE FROM records")
        s.conn.commit()
    import numpy as np

    with np.load(_ckpt(trained, 1) / "samples.npz") as z:
        np.savez_compressed(out / "samples" / "sft-seed0-step2.npz", frames=z["frames"])
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    assert _agg(out / "results.sqlite") == first


# -- 2. eval --videos: results follow the folder's content --------------------------------------------------

def _clips(world, folder: Path, indices) -> None:
    from harness.data.video_io import write_video
    from harness.data.world import make_clip

    folder.mkdir(parents=True, exist_ok=True)
    for name, i in indices:
        write_video(folder / name, make_clip(world, "eval", i).frames, fps=world.fps)


def test_eval_videos_follows_changed_added_and_removed_videos(tmp_path, world):
    """Before: after a video was replaced and one added, a re-run kept the old n and values."""
    folder, out = tmp_path / "videos", tmp_path / "out"
    args = ("eval", "--videos", folder, "--out", out, "--metrics", "motion_score")
    _clips(world, folder, [("a.mp4", 0), ("b.mp4", 1)])
    assert _cli(*args).exit_code == 0
    _clips(world, folder, [("b.mp4", 2), ("c.mp4", 3)])  # b replaced, c added
    assert _cli(*args).exit_code == 0
    fresh = tmp_path / "fresh"
    assert _cli("eval", "--videos", folder, "--out", fresh, "--metrics", "motion_score").exit_code == 0
    assert _agg(out / "results.sqlite") == _agg(fresh / "results.sqlite")
    assert next(iter(_agg(out / "results.sqlite").values()))[1] == 3
    (folder / "a.mp4").unlink()
    assert _cli(*args).exit_code == 0
    with ResultStore(out / "results.sqlite") as s:
        assert sorted(s.records()["video_id"]) == ["b.mp4", "c.mp4"]
        assert s.aggregates()["n"].tolist() == [2]


def test_eval_videos_skips_a_one_frame_video_and_names_a_missing_folder(tmp_path, world):
    """Before: a 1-frame video aborted the whole folder; a missing folder was 'no .mp4 files'."""
    import numpy as np

    from harness.data.video_io import write_video

    folder = tmp_path / "videos"
    _clips(world, folder, [("a.mp4", 0)])
    write_video(folder / "one.mp4", np.zeros((1, 32, 32, 3), np.uint8), fps=8)
    r = _cli("eval", "--videos", folder, "--out", tmp_path / "out", "--metrics", "motion_score")
    assert r.exit_code == 0, r.output
    with ResultStore(tmp_path / "out" / "results.sqlite") as s:
        skips = s.skips()
        assert list(skips["video_id"]) == ["one.mp4"] and "1 frame" in skips["reason"][0]
        assert s.aggregates()["n"].tolist() == [1]
    r = _cli("eval", "--videos", tmp_path / "nowhere", "--out", tmp_path / "o2", "--metrics", "motion_score")
    assert r.exit_code == 2 and "no such folder" in r.output


# -- 4. --smoke keeps the user's values and validates them ---------------------------------------------------

def test_smoke_validates_and_keeps_the_users_values(tmp_path):
    """Before: --smoke --set methods.sft.steps=-5 exited 0 (smoke replaced it by 2); valid values were dropped."""
    r = _cli("run", "--smoke", "--set", "methods.sft.steps=-5", "--out", tmp_path / "bad", "--no-progress")
    assert r.exit_code == 2 and "steps" in r.output and not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    r = _cli("run", "--smoke", "--methods", "sft", "--set", "methods.sft.steps=3", "--set", "eval.num_videos=2",
             "--metrics", "motion_score", "--out", out, "--no-progress", "--no-report")
    assert r.exit_code == 0, r.output
    with ResultStore(out / "results.sqlite") as s:
        ck = s.checkpoints()
        assert sorted(ck[ck["method"] == "sft"]["step"]) == [1, 2, 3]
        agg = s.aggregates()
        assert set(agg[agg["metric"].str.startswith("motion_score")]["n"]) == {2}
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["preset"]["sampler"]["num_steps"] == 4  # what the user did not set is still shrunk


# -- 5. seeds: refused, or extended and recorded ---------------------------------------------------------------

def test_other_seeds_are_refused_or_extend_the_run_on_record(tmp_path):
    """Before: --seeds 1 on a seed-0 run merged in unrecorded (runs.seeds and run.json still said [0])."""
    out = tmp_path / "run"
    run(_preset(), out, _opts(steps=1))
    with pytest.raises(RunError, match="seeds \\[0\\].*--extend-seeds"):
        run(_preset(), out, _opts(steps=1, seeds=[1]))
    run(_preset(), out, _opts(steps=1, seeds=[1], extend_seeds=True))
    with ResultStore(out / "results.sqlite") as s:
        assert s.seeds(out.name) == [0, 1]
        assert sorted(set(s.checkpoints()["seed"])) == [0, 1]
    assert json.loads((out / "run.json").read_text())["options"]["seeds"] == [0, 1]
    run(_preset(), out, _opts(steps=1, seeds=[0, 1]))  # the recorded seeds: continues, nothing to do


def test_methods_are_added_to_a_run_only_on_request_and_recorded(tmp_path):
    """Before: a method could not join a finished run (its config differed: "choose another --out"), so
    claims runs took some rows from other runs. Now --extend-methods adds it, on record, when every other
    setting and the recorded methods' own are unchanged; the finished method is neither retrained nor
    re-evaluated."""
    preset = fast_preset("methods.sft-b.trainer=sft", "methods.sft-b.lr=0.003")
    out = tmp_path / "run"
    run(preset, out, _opts(steps=1))
    with ResultStore(out / "results.sqlite") as s:
        before = s.aggregates().set_index(["method", "step", "metric"])["value"]
    trained = {p: p.stat().st_mtime_ns for p in (out / "checkpoints" / "sft").rglob("*") if p.is_file()}
    with pytest.raises(RunError, match=r"run of methods \['sft'\]; to add sft-b to it pass --extend-methods"):
        run(preset, out, _opts(steps=1, methods=["sft", "sft-b"]))
    run(preset, out, _opts(steps=1, methods=["sft-b"], extend_methods=True))
    with ResultStore(out / "results.sqlite") as s:
        after = s.aggregates().set_index(["method", "step", "metric"])["value"]
        config = s.run_config(out.name)
    assert sorted(config["methods"]) == ["sft", "sft-b"]
    assert json.loads((out / "run.json").read_text())["options"]["methods"] == ["sft", "sft-b"]
    assert set(after.index.get_level_values("method")) == {"base", "sft", "sft-b"}
    assert after.loc[before.index].equals(before)  # sft and the base model: the same numbers
    assert {p: p.stat().st_mtime_ns for p in trained} == trained  # sft's checkpoints and samples untouched
    run(preset, out, _opts(steps=1, methods=["sft", "sft-b"]))  # the recorded methods: continues
    # Each invocation that wrote the run is a session on record, which the results name.
    with ResultStore(out / "results.sqlite") as s:
        sessions, agg = s.sessions(), s.aggregates()
    assert [c.get("extend_methods") for c in sessions["command"]] == [False, True, False]
    assert set(agg[agg["method"] == "sft"]["session_id"]) == {sessions["session_id"].iloc[0]}
    assert set(agg[agg["method"] == "sft-b"]["session_id"]) == {sessions["session_id"].iloc[1]}
    from reports.run_info import load_run_info

    with ResultStore(out / "results.sqlite") as s:
        line = load_run_info(out, s).sessions_line()
    assert line.startswith("3 sessions, ") and "on commit " in line  # the report's provenance says so
    # A recorded method's settings changed: another run, never an extension.
    changed = fast_preset("methods.sft-b.trainer=sft", "methods.sft-b.lr=0.003", "methods.sft.lr=0.002")
    with pytest.raises(RunError, match="holds a run with other settings"):
        run(changed, out, _opts(steps=1, methods=["sft", "sft-b", "dpo"], extend_methods=True))


def test_negative_or_repeated_seeds_fail_before_any_work(tmp_path):
    """Before: --seeds -1 failed only after the base evaluation was stored."""
    r = _cli("run", "--seeds", "-1", "--out", tmp_path / "run", "--no-progress")
    assert r.exit_code == 2 and "seeds" in r.output and not (tmp_path / "run").exists()
    with pytest.raises(RunError, match="distinct"):
        _opts(seeds=[0, 0])


# -- 6. a copied or moved run directory -------------------------------------------------------------------------

def test_a_copied_run_is_refused_then_adopted_under_its_own_id(trained, tmp_path):
    """Before: the run id was the directory's name, so resuming a copy added a second run to its store."""
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    with pytest.raises(RunError, match="copied or moved here; pass --adopt"):
        run(_preset(), copy, _opts(resume=True))
    run(_preset(), copy, _opts(resume=True, adopt=True))
    with ResultStore(copy / "results.sqlite") as s:
        assert list(s.runs()["run_id"]) == [trained.name]
    manifest = json.loads((copy / "run.json").read_text())
    assert manifest["directory"] == str(copy.resolve()) and manifest["moves"][0]["from"] == str(trained.resolve())
    run(_preset(), copy, _opts(resume=True))  # adopted: continues without the flag


# -- 7. every path a run writes is inside it -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "..", "a/b", ""])
def test_method_names_never_leave_the_run_directory(name, tmp_path):
    with pytest.raises(RunDirError):
        RunDir(tmp_path).checkpoint(name, 0, 1)
    with pytest.raises(RunError):
        _opts(methods=[name])


def test_inside_refuses_paths_outside(tmp_path):
    rd = RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match="outside the run directory"):
        rd.inside(tmp_path / "run" / ".." / "elsewhere")
    assert rd.inside(tmp_path / "run" / "checkpoints") == tmp_path / "run" / "checkpoints"


# -- 9. unreadable checkpoint files ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lora.safetensors", "trainer_state.pt"])
def test_a_truncated_checkpoint_file_names_itself_and_the_way_back(name, trained, tmp_path):
    """Before: a traceback from safetensors or torch.load on --resume."""
    copy = tmp_path / trained.name  # the same name: the copy is adopted without --adopt noise
    shutil.copytree(trained, copy)
    f = _ckpt(copy, 2) / name
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(RunError) as e:
        run(_preset(), copy, _opts(resume=True, adopt=True))
    msg = str(e.value)
    assert str(f) in msg and "unreadable" in msg and str(_ckpt(copy, 1)) in msg and "\n" not in msg


def test_eval_of_a_truncated_or_orphan_lora_is_one_line(trained, tmp_path):
    """Before: a safetensors traceback; a LoRA outside a run got "method 'rel'"."""
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    f = _ckpt(copy, 2) / "lora.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    r = _cli("eval", "--checkpoint", _ckpt(copy, 2), "--out", tmp_path / "e", "--metrics", "motion_score", *SETS)
    assert r.exit_code == 2 and "unreadable" in r.output and "Traceback" not in r.output
    orphan = tmp_path / "rel" / "x" / "lora"
    orphan.mkdir(parents=True)
    shutil.copy(_ckpt(trained, 1) / "lora.safetensors", orphan)
    r = _cli("eval", "--checkpoint", orphan, "--out", tmp_path / "e2", "--metrics", "motion_score", *SETS)
    assert r.exit_code == 2 and "not a checkpoint inside a run directory" in r.output and "'rel'" not in r.output


# -- 10. failed starts, two writers ------------------------------------------------------------------------------

def test_a_failed_start_leaves_no_directory(tmp_path):
    """Before: a run refused at start left an empty --out behind."""
    out = tmp_path / "run"
    with pytest.raises(RunError):
        run(_preset("methods.sft.lr=-1"), out, _opts())
    r = _cli("run", "--metrics", "no_such_metric", "--out", out, "--no-progress")
    assert r.exit_code != 0
    assert not out.exists()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    """Before: two runs into one --out each did all the work."""
    import os

    out = tmp_path / "run"
    out.mkdir()
    with RunDir(out).lock():
        with pytest.raises(RunError, match=f"in use by another harness process \\(pid {os.getpid()}"):
            run(_preset(), out, _opts())
    assert not (out / "results.sqlite").exists()


def test_eval_run_waits_for_no_one_it_refuses_beside_a_writer(trained):
    """`harness eval --run` writes into the run's store: refused while another process holds the run."""
    with RunDir(trained).lock():
        r = _cli("eval", "--run", trained, "--metrics", "motion_score")
    assert r.exit_code == 2 and "in use by another harness process" in r.output


def test_a_metric_rescored_with_another_backend_replaces_the_old_one(trained, tmp_path):
    """`harness eval --run --set eval.backends... --replace`: a run re-scored with another form of a metric holds
    it under the new identity only (two identities of one dimension would leave no roll-up), its roll-ups are
    computed again (one that lost its inputs does not stay), every other number is untouched, and run.json
    records the new backend."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    def numbers() -> dict:
        with ResultStore(run_dir / "results.sqlite") as s:
            return {(r.step, r.metric): r.value for r in s.aggregates().itertuples()}

    assert _cli("eval", "--run", run_dir, "--metrics", "temporal_flickering").exit_code == 0
    before = numbers()
    unfiltered = "temporal_flickering[static_filter=off]"  # the tiny preset's form (VBench-I2V's)
    steps = sorted({step for step, _ in before})
    assert all(before[s, "rollup:shift_motion[tiny]"] == before[s, unfiltered] for s in steps)
    bad = _cli("eval", "--run", run_dir, "--set", "pretrain.steps=1", "--metrics", "temporal_flickering")
    assert bad.exit_code == 2 and "only a metric's backend can be set" in bad.output
    assert _cli("eval", "--run", run_dir, "--replace").exit_code == 2  # which metrics: --metrics
    r = _cli("eval", "--run", run_dir, "--metrics", "temporal_flickering", "--replace",
             "--set", "eval.backends.temporal_flickering.static_filter=true")
    assert r.exit_code == 0, r.output
    after = numbers()
    filtered = "temporal_flickering[flow=dis]"  # VBench's text-to-video form: no 16-px video passes its filter
    assert {m for _, m in after if m.startswith("temporal")} == {filtered} and len(steps) == 3
    assert all((s, filtered) in after and (s, "rollup:shift_motion[tiny]") not in after for s in steps)
    same = {k: v for k, v in before.items() if not k[1].startswith(("temporal_flickering", "rollup:shift"))}
    assert {k: after[k] for k in same} == same and len(same) > 10
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["preset"]["eval"]["backends"]["temporal_flickering"] == {"static_filter": True}
    assert filtered in manifest["metrics"] and unfiltered not in manifest["metrics"]
    with ResultStore(run_dir / "results.sqlite") as store:
        session = store.sessions()["command"].iloc[-1]
    assert session["replace"] and session["backends"] == {"temporal_flickering": {"static_filter": True}}


# -- eval --videos: the conditioning image, never the video's own first frame ---------------------------------

def test_i2v_dimensions_need_the_conditioning_images(tmp_path, world):
    """Before: i2v_subject and i2v_background compared each video with its own first frame."""
    import csv

    from PIL import Image

    from harness.data.world import make_clip

    folder = tmp_path / "videos"
    _clips(world, folder, [("a.mp4", 0), ("b.mp4", 1), ("c.mp4", 2), ("d.mp4", 3)])
    r = _cli("eval", "--videos", folder, "--out", tmp_path / "o1", "--metrics", "i2v_subject")
    assert r.exit_code == 2 and "--conditions" in r.output and not (tmp_path / "o1").exists()
    images = tmp_path / "images"
    images.mkdir()
    for name, i in (("a", 0), ("b", 1)):
        Image.fromarray(make_clip(world, "eval", i).frames[0]).save(images / f"{name}.png")
    Image.fromarray(make_clip(world, "eval", 2).frames[0][:, :10]).save(images / "c.png")  # another aspect ratio
    table = tmp_path / "conditions.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "image", "prompt"])
        w.writerows([["a.mp4", "images/a.png", "a red square"], ["b.mp4", "images/b.png", ""],
                     ["c.mp4", "images/c.png", ""],  # d.mp4 has no row
                     ["e.mp4", "images/e.png", ""], ["gone.mp4", "images/a.png", ""]])  # no such image; no such video
    _clips(world, folder, [("e.mp4", 4)])
    r = _cli("eval", "--videos", folder, "--conditions", table, "--out", tmp_path / "o2", "--metrics", "i2v_subject")
    assert r.exit_code == 0, r.output
    with ResultStore(tmp_path / "o2" / "results.sqlite") as s:
        assert sorted(s.records()["video_id"]) == ["a.mp4", "b.mp4"]
        reasons = dict(zip(s.skips()["video_id"], s.skips()["reason"], strict=True))
    assert "aspect ratio" in reasons["c.mp4"] and "no row" in reasons["d.mp4"]
    assert "e.png does not exist" in reasons["e.mp4"] and "is not in" in reasons["gone.mp4"]
    assert set(reasons) == {"c.mp4", "d.mp4", "e.mp4", "gone.mp4"}
