"""Experiment trackers (--log-with): the event files hold what the store holds; bad trackers are refused at start."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_runs import fast_preset, run_cache  # noqa: F401  (run_cache: autouse fixture)
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir import RunDir
from harness.runner import RunError, RunOptions, run
from harness.store import ResultStore
from harness.tracking import GALLERY_VIDEOS, RunTrackers, TrackerError, check_trackers, gallery_video

METRICS = ["dynamic_degree", "subject_consistency", "motion_adherence"]
cli = CliRunner()


def _opts(**kw) -> RunOptions:
    return RunOptions(**{"methods": ["sft"], "steps": 2, "eval_every": 1, "metrics": METRICS,
                         "show_progress": False, **kw})


def _events(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(acc) -> dict[tuple[str, int], float]:
    return {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}


def _f32(x: float) -> float:  # TensorBoard stores scalars as float32
    return float(np.float32(x))


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="the `trackers` extra (scripts/install.sh installs it)")
    out = tmp_path_factory.mktemp("tracked") / "run"
    run(fast_preset("log_with=[tensorboard]"), out, _opts())
    return out


def test_tensorboard_holds_the_stores_losses_and_aggregates(tb_run):
    root = RunDir(tb_run).trackers("tensorboard")
    assert root == tb_run / "trackers" / "tensorboard"
    with ResultStore(tb_run / "results.sqlite") as store:
        logs, agg = store.train_logs(), store.aggregates()
    for method, seed, directory in (("sft", 0, root / "sft" / "seed0"), ("base", 0, root / "base")):
        acc = _events(directory)
        got = _scalars(acc)
        want_logs = logs[(logs["method"] == method) & (logs["seed"] == seed)]
        want = {(f"train/{r.key}", int(r.step)): _f32(r.value) for r in want_logs.itertuples()}
        mine = agg[(agg["method"] == method) & (agg["seed"] == seed) & agg["value"].notna()]
        for r in mine.itertuples():
            want[(f"eval/{r.metric}", int(r.step))] = _f32(r.value)
            if r.ci_low is not None and not np.isnan(r.ci_low):
                want[(f"eval/{r.metric}/ci95_half_width", int(r.step))] = _f32((r.ci_high - r.ci_low) / 2)
        assert got == want  # every stored number, and nothing else
        steps = sorted(mine["step"].unique())
        assert [e.step for e in acc.Images("gallery")] == steps
    sft = _scalars(_events(root / "sft" / "seed0"))
    assert {step for tag, step in sft if tag == "train/loss"} == {1, 2}
    assert any(tag.startswith("train/probe/") for tag, _ in sft)
    assert {step for tag, step in sft if tag == "train/seconds"} == {1, 2}
    dd = "eval/dynamic_degree[flow=dis]"
    assert {step for tag, step in sft if tag == dd} == {1, 2}  # a metric aggregate, at each checkpoint


def test_tensorboard_gallery_is_the_checkpoints_videos(tb_run):
    acc = _events(RunDir(tb_run).trackers("tensorboard") / "sft" / "seed0")
    event = acc.Images("gallery")[-1]
    with np.load(tb_run / "checkpoints" / "sft" / "seed0" / "step000002" / "samples.npz") as z:
        frames = z["frames"]
    want = gallery_video(frames)
    gif = Image.open(io.BytesIO(event.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == frames.shape[1]
    assert (event.height, event.width) == want.shape[1:3] == (gif.height, gif.width)
    n, _, h, w, _ = frames.shape
    assert want.shape[2] == min(n, GALLERY_VIDEOS) * w * (want.shape[1] // h) + min(n, GALLERY_VIDEOS) - 1
    gif.seek(frames.shape[1] - 1)  # the last frame, through the GIF palette: close to the video's last frame
    err = np.abs(np.asarray(gif.convert("RGB"), dtype=np.int16) - want[-1].astype(np.int16))
    assert err.mean() < 8


def test_trackers_are_not_part_of_the_run(tb_run):
    """log_with is not recorded with the run, so the run resumes with other trackers (or none)."""
    assert "log_with" not in json.loads((tb_run / "run.json").read_text())["preset"]
    run(fast_preset(), tb_run, _opts(resume=True))  # everything is there: nothing trained, nothing refused


class _Kill(BaseException):
    """A kill: not an Exception, so nothing in the harness catches it."""


def test_a_resumed_run_shows_each_step_once(tmp_path, monkeypatch):
    """Before: a resumed run logged the base model's step 0 again, and the steps trained after the last
    checkpoint twice (once before the kill, once after), so TensorBoard drew them twice. Killed while saving
    the step-2 checkpoint (its training rows were already sent to the tracker), then resumed: every tag has each
    step once, with the store's values."""
    pytest.importorskip("tensorboard", reason="the `trackers` extra (scripts/install.sh installs it)")
    import harness.rundir as rundir_mod

    out = tmp_path / "run"
    save = rundir_mod.RunDir.save_checkpoint

    def killed_at_2(self, state, path, step, logs):
        if step == 2:
            raise _Kill
        return save(self, state, path, step, logs)

    monkeypatch.setattr(rundir_mod.RunDir, "save_checkpoint", killed_at_2)
    with pytest.raises(_Kill):
        run(fast_preset("log_with=[tensorboard]"), out, _opts())
    monkeypatch.setattr(rundir_mod.RunDir, "save_checkpoint", save)
    root = RunDir(out).trackers("tensorboard")
    assert 2 in {e.step for e in _events(root / "sft" / "seed0").Scalars("train/loss")}  # logged before the kill
    run(fast_preset("log_with=[tensorboard]"), out, _opts(resume=True))
    with ResultStore(out / "results.sqlite") as store:
        logs = store.train_logs()
    for directory in (root / "base", root / "sft" / "seed0"):
        acc = _events(directory)
        for tag in acc.Tags()["scalars"]:
            steps = [e.step for e in acc.Scalars(tag)]
            assert len(steps) == len(set(steps)), (directory.name, tag, steps)
    got = _scalars(_events(root / "sft" / "seed0"))
    mine = logs[(logs["method"] == "sft") & (logs["key"] == "loss")]
    assert {step: v for (tag, step), v in got.items() if tag == "train/loss"} == {
        int(r.step): _f32(r.value) for r in mine.itertuples()}


@pytest.mark.parametrize("args, says", [
    (["--log-with", "tensorboard,mlflow"], "unknown tracker(s) mlflow"),
    (["--log-with", "tensorboard", "--log-with", "neptune"], "unknown tracker(s) neptune"),
    (["--set", "log_with=[tensorbored]"], "unknown tracker(s) tensorbored"),
])
def test_unknown_tracker_is_refused_before_any_work(tmp_path, args, says):
    out = tmp_path / "run"
    result = cli.invoke(app, ["run", "--methods", "sft", "--out", str(out), "--smoke", "--no-progress", *args])
    assert result.exit_code == 2
    assert says in result.output and "supported: tensorboard, wandb" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails as if not installed
    out = tmp_path / "run"
    result = cli.invoke(app, ["run", "--methods", "sft", "--out", str(out), "--log-with", "tensorboard"])
    assert result.exit_code == 2 and not out.exists()
    assert "needs the tensorboard package" in result.output and "pip install -e '.[trackers]'" in result.output
    with pytest.raises(RunError, match=r"pip install -e '\.\[trackers\]'"):  # the same check in the run loop
        run(fast_preset("log_with=[tensorboard]"), out, _opts())
    assert not out.exists()


class _FakeWandb(types.ModuleType):
    """Stands in for the wandb package (not installed here): records what the harness asks of it."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[dict, int]] = []
        self.finished = 0
        self.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: None)
        fake = self

        class Run:
            def log(self, values, step=None):
                fake.logged.append((values, step))

            def finish(self):
                fake.finished += 1

        class Video:
            def __init__(self, data, format=None):
                self.data, self.format = data.read(), format

        self.Video, self._Run = Video, Run

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self._Run()


def test_wandb_online_without_network_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", _FakeWandb())
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    out = tmp_path / "run"
    result = cli.invoke(app, ["run", "--methods", "sft", "--out", str(out), "--log-with", "wandb"])
    assert result.exit_code == 2 and not out.exists()
    assert "W&B online mode (WANDB_MODE=online) needs the network" in result.output
    assert "127.0.0.1:9 cannot be reached" in result.output and "unset WANDB_MODE" in result.output
    monkeypatch.delenv("WANDB_MODE")
    check_trackers(["wandb"])  # offline (the default) needs no network
    monkeypatch.setenv("WANDB_MODE", "offlin")
    with pytest.raises(TrackerError, match="not a W&B mode"):
        check_trackers(["wandb"])


def test_wandb_logs_offline_under_the_run_directory(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    rundir = RunDir(tmp_path / "run")
    with ResultStore(rundir.results) as store:
        store.add_run("r", "tiny", {}, [0], {})
        ckpt = store.checkpoint("r", "sft", 0, 2, "x", {})
        store.add_aggregate(ckpt, "m", 0.5, 4, 0.25, 0.95)
        store.add_aggregate(ckpt, "undefined", None, 4)
        samples = tmp_path / "samples.npz"
        frames = np.random.default_rng(0).integers(0, 255, (5, 3, 8, 8, 3), dtype=np.uint8)
        np.savez(samples, frames=frames)
        with RunTrackers(["wandb"], rundir) as trackers:
            session = trackers.open("r", "sft", 0)
            assert session.log([(1, "loss", 0.25), (1, "grad_norm", 2.0), (2, "loss", 0.125)]) == [
                (1, "loss", 0.25), (1, "grad_norm", 2.0), (2, "loss", 0.125)]
            session.checkpoint(store, ckpt, 2, samples)
    (init,) = fake.inits
    assert init["mode"] == "offline" and Path(init["dir"]) == rundir.trackers("wandb") and init["group"] == "r"
    assert fake.logged[:3] == [({"train/loss": 0.25, "train/grad_norm": 2.0}, 1), ({"train/loss": 0.125}, 2),
                               ({"eval/m": 0.5, "eval/m/ci95_half_width": pytest.approx(0.35)}, 2)]
    (video, step), = [(v["gallery"], s) for v, s in fake.logged[3:]]
    assert step == 2 and video.format == "gif" and video.data.startswith(b"GIF8")
    assert fake.finished == 1


@pytest.mark.parametrize("args, want", [
    (["--log-with", "tensorboard", "--log-with", "TensorBoard,tensorboard"], ["tensorboard"]),
    (["--set", "log_with=[tensorboard]"], ["tensorboard"]),
    (["--set", "log_with=[tensorboard]", "--log-with", ""], []),  # --log-with replaces the preset's
    ([], []),
])
def test_cli_passes_the_trackers_to_the_run(tmp_path, monkeypatch, args, want):
    pytest.importorskip("tensorboard", reason="the `trackers` extra (scripts/install.sh installs it)")
    seen = {}
    monkeypatch.setattr("harness.runner.run", lambda cfg, out, opts: seen.setdefault("log_with", cfg.log_with))
    result = cli.invoke(app, ["run", "--methods", "sft", "--out", str(tmp_path / "run"), "--smoke", "--no-report",
                              *args])
    assert result.exit_code == 0, result.output
    assert seen["log_with"] == want


def test_two_processes_log_once_from_the_main_process(tmp_path):
    """Under data parallelism only rank 0 logs: one event file per tracker run, holding rank 0's store."""
    pytest.importorskip("tensorboard", reason="the `trackers` extra (scripts/install.sh installs it)")
    import os
    import socket

    import torch
    import torch.multiprocessing as mp
    from dp_runs import _worker

    sets = {"log_with": ["tensorboard"], "eval": {"num_videos": 2, "final_num_videos": None, "batch_size": 1,
                                                  "metrics": ["dynamic_degree"]},
            "sampler": {"num_steps": 2}, "probes": {"names": []}, "methods": {"sft": {"batch_size": 2}}}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two"
    threads = torch.get_num_threads()
    try:
        mp.spawn(_worker, args=(2, port, str(out), os.environ["HARNESS_CACHE"], ["sft"], sets, 2, {}, None),
                 nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    root = RunDir(out).trackers("tensorboard")
    assert [len(list((root / d).glob("events.out.tfevents.*"))) for d in ("base", "sft/seed0")] == [1, 1]
    with ResultStore(out / "results.sqlite") as store:
        logs = store.train_logs()
    got = _scalars(_events(root / "sft" / "seed0"))
    assert {(f"train/{r.key}", int(r.step)): _f32(r.value) for r in logs.itertuples()} == {
        k: v for k, v in got.items() if k[0].startswith("train/")}
