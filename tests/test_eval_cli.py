"""`harness eval` on a folder of videos, a checkpoint and a run; missing weights; export."""

import pytest
from typer.testing import CliRunner

from harness.data.video_io import write_video
from harness.data.world import make_clip
from harness.scorers.backends.features import TinyFeatures
from harness.store import ResultStore

runner = CliRunner()


def test_corrupt_video_is_reported_skipped_and_recorded(tmp_path, world):
    folder = tmp_path / "videos"
    for i in range(3):
        write_video(folder / f"ok{i}.mp4", make_clip(world, "eval", i).frames)
    good = (folder / "ok0.mp4").read_bytes()
    (folder / "broken.mp4").write_bytes(good[: len(good) // 2])
    out = tmp_path / "res"
    res = runner.invoke(app_cli(), ["eval", "--videos", str(folder), "--out", str(out),
                                    "--metrics", "dynamic_degree,motion_score,subject_consistency"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 unreadable video(s): broken.mp4" in res.output
    with ResultStore(out / "results.sqlite") as store:
        skips = store.skips()
        assert list(skips["video_id"]) == ["broken.mp4"] and "truncated" in skips["reason"][0]
        recs = store.records()
        assert set(recs["video_id"]) == {"ok0.mp4", "ok1.mp4", "ok2.mp4"}
        assert len(store.aggregates()[~store.aggregates()["metric"].str.startswith("rollup:")]) == 3


def test_videos_need_condition_free_metrics(tmp_path, world):
    write_video(tmp_path / "a.mp4", make_clip(world, "eval", 0).frames)
    res = runner.invoke(app_cli(), ["eval", "--videos", str(tmp_path), "--metrics", "motion_adherence",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "need tiny-world conditions" in res.output


def test_eval_a_model_directory(tmp_path):
    from harness.config import load_preset

    base = load_preset("tiny").base_checkpoint_path()
    # A checkpoint is scored on the final eval set (eval.final_num_videos), so both sizes are set here.
    res = runner.invoke(app_cli(), ["eval", "--checkpoint", str(base), "--out", str(tmp_path),
                                    "--metrics", "motion_adherence,distortion_rate", "--set", "eval.num_videos=3",
                                    "--set", "eval.final_num_videos=3"])
    assert res.exit_code == 0, res.output
    with ResultStore(tmp_path / "results.sqlite") as store:
        agg = store.aggregates()
        assert {"motion_adherence[judge=oracle]", "distortion_rate[judge=oracle]"} <= set(agg["metric"])
        assert set(agg["n"]) == {3}


def test_missing_feature_weights_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"frame_encoder.safetensors.*harness build features"):
        TinyFeatures(tmp_path)


def test_export_csv_and_parquet(tmp_path, world):
    write_video(tmp_path / "v" / "a.mp4", make_clip(world, "eval", 0).frames)
    out = tmp_path / "res"
    assert runner.invoke(app_cli(), ["eval", "--videos", str(tmp_path / "v"), "--out", str(out),
                                     "--metrics", "motion_score"]).exit_code == 0
    for fmt in ("csv", "parquet"):
        res = runner.invoke(app_cli(), ["export", "--results", str(out), "--format", fmt])
        assert res.exit_code == 0, res.output
        assert (out / "export" / f"aggregates.{fmt}").is_file()
    res = runner.invoke(app_cli(), ["export", "--results", str(out), "--format", "xlsx"])
    assert res.exit_code == 2 and "csv, parquet" in res.output


def app_cli():
    from harness.cli import app

    return app
