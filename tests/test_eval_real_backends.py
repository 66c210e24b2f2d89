"""`harness eval --videos` with upstream-architecture backends: refuses an empty cache, runs end to end on
random-init weights (marked as such), handles short and mixed-size videos per video."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from harness import weights
from harness.cli import app
from harness.data.video_io import write_video
from harness.store import ResultStore


def _moving(rng, n: int, h: int, w: int) -> np.ndarray:
    base = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    return np.stack([np.roll(base, (t, 2 * t), axis=(0, 1)) for t in range(n)])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_video(root / "gen" / f"v{i}.mp4", _moving(rng, 9, 120, 136), fps=8)
        write_video(root / "real" / f"r{i}.mp4", _moving(rng, 9, 120, 136), fps=8)
    write_video(root / "gen" / "wide.mp4", _moving(rng, 9, 120, 168), fps=8)  # another size in the same set
    write_video(root / "gen" / "short.mp4", _moving(rng, 5, 120, 136), fps=8)  # shorter than FVD's clip
    return root


def test_empty_cache_is_refused_naming_every_missing_file(folders, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "empty"))
    result = CliRunner().invoke(app, ["eval", "--videos", str(folders / "gen"), "--metrics", "vbench-i2v,fvd",
                                      "--fvd-ref", str(folders / "real"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    for f in ("dino/dino_vitbase16_pretrain.pth", "clip/ViT-B-32.pt", "amt/amt-s.pth", "raft/raft-things.pth",
              "musiq/musiq_spaq_ckpt-358bb6af.pth", "fvd/rgb_imagenet.pt", "dreamsim/",
              "cotracker/cotracker2.pth"):
        assert f in result.output
    assert "harness weights prefetch amt_s" in result.output
    assert not (tmp_path / "out" / "results.sqlite").exists()  # refused before any work


def test_end_to_end_on_random_init_weights(folders, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "w"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = CliRunner()
    init = runner.invoke(app, ["weights", "init-random", "raft_things", "amt_s", "i3d_kinetics400"])
    assert init.exit_code == 0, init.output
    result = runner.invoke(app, [
        "eval", "--videos", str(folders / "gen"), "--out", str(tmp_path / "out"),
        "--metrics", "dynamic_degree,motion_smoothness,fvd", "--fvd-ref", str(folders / "real"),
        "--set", "eval.backends.dynamic_degree.flow=raft",
        "--set", "eval.backends.dynamic_degree.flow_options={iters: 4}",  # fewer RAFT iterations: a fast test
        "--set", "eval.backends.motion_smoothness.interp=amt-s", "--set", "eval.backends.fvd.clip_len=9",
        "--set", "eval.backends.fvd.protocol=harness"])  # 9-frame clips: not StyleGAN-V's fixed 16
    assert result.exit_code == 0, result.output
    with ResultStore(tmp_path / "out" / "results.sqlite") as store:
        agg = store.aggregates().set_index("metric")
        records = store.records()
    names = [m for m in agg.index if not m.startswith("rollup:")]
    assert len(names) == 3 and all("random-weights" in m for m in names), names
    assert all(m.endswith("[random-weights]") for m in agg.index if m.startswith("rollup:"))
    fvd = agg.loc[[m for m in names if m.startswith("fvd")][0]]
    assert np.isfinite(fvd["value"]) and fvd["extras"]["n"] == 4 and fvd["extras"]["n_skipped"] == 1
    assert fvd["extras"]["skipped"] == {"short.mp4": "5 frames < 9 needed"}
    assert fvd["extras"]["protocol"]["clip_len"] == 9 and "resize" in fvd["extras"]["protocol"]
    # Per-video metrics score every video, whatever its size or length.
    for name in names:
        if not name.startswith("fvd"):
            assert sorted(records[records["metric"] == name]["video_id"]) == [
                "short.mp4", "v0.mp4", "v1.mp4", "v2.mp4", "wide.mp4"]
