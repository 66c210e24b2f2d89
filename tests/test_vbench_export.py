"""`harness export --format vbench`: VBench-I2V's eval_results.json per checkpoint, scored as upstream does.

The reader below follows scripts/cal_i2v_final_score.py and scripts/constant.py of Vchitect/VBench
(commit 45e79ec14e69a2187202c675d2dbce1a71843d53): every key of a dict-valued *.json file is mapped through
I2VKEY (an unknown key is a KeyError), value[0] is kept, a missing dimension counts 0, each dimension is
normalised by its (Min, Max) and weighted, quality and i2v are weighted means and the total is their mean.
Its tables are written out here, not imported from metrics/rollups.py, so the comparison is between two
independent readings of upstream.
"""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.store import ResultStore
from metrics.rollups import vbench_i2v_rollup

runner = CliRunner()

I2VKEY = {
    "camera_motion": "Video-Text Camera Motion",
    "i2v_subject": "Video-Image Subject Consistency",
    "i2v_background": "Video-Image Background Consistency",
    "subject_consistency": "Subject Consistency",
    "background_consistency": "Background Consistency",
    "motion_smoothness": "Motion Smoothness",
    "dynamic_degree": "Dynamic Degree",
    "aesthetic_quality": "Aesthetic Quality",
    "imaging_quality": "Imaging Quality",
}
UPSTREAM = {  # name: (weight, min, max)
    "Video-Text Camera Motion": (0.1, 0.0, 1.0),
    "Video-Image Subject Consistency": (1, 0.1462, 1.0),
    "Video-Image Background Consistency": (1, 0.2615, 1.0),
    "Subject Consistency": (1, 0.1462, 1.0),
    "Background Consistency": (1, 0.2615, 1.0),
    "Motion Smoothness": (1, 0.7060, 0.9975),
    "Dynamic Degree": (0.5, 0.0, 1.0),
    "Aesthetic Quality": (1, 0.0, 1.0),
    "Imaging Quality": (1, 0.0, 1.0),
}
I2V_LIST = list(UPSTREAM)[:3]
QUALITY_LIST = list(UPSTREAM)[3:]

SAMPLER = {"kind": "ode", "steps": 4}
BACKEND = {  # stored identities, as the vbench-i2v group writes them
    "subject_consistency": "subject_consistency[features=dino-vitb16]",
    "background_consistency": "background_consistency[features=clip-vitb32]",
    "motion_smoothness": "motion_smoothness[interp=amt-s]",
    "dynamic_degree": "dynamic_degree[flow=raft]",
    "aesthetic_quality": "aesthetic_quality",
    "imaging_quality": "imaging_quality",
    "i2v_subject": "i2v_subject[features=dino-vitb16-i2v]",
    "i2v_background": "i2v_background[features=dreamsim]",
    "camera_motion": "camera_motion[tracker=cotracker2]",
    "temporal_flickering": "temporal_flickering[flow=raft]",
}
PER_VIDEO = {  # three videos per dimension; the aggregate is their mean
    "subject_consistency": [0.95, 0.91, 0.97],
    "background_consistency": [0.93, 0.94, 0.92],
    "motion_smoothness": [0.985, 0.99, 0.975],
    "dynamic_degree": [1.0, 0.0, 1.0],
    "aesthetic_quality": [0.52, 0.58, 0.55],
    "imaging_quality": [0.61, 0.66, 0.64],
    "i2v_subject": [0.96, 0.94, 0.97],
    "i2v_background": [0.95, 0.97, 0.96],
    "camera_motion": [1.0, 0.0, None],  # the third video has no camera label: excluded
    "temporal_flickering": [0.97, None, 0.98],
}


def upstream_score(files: list[Path]) -> dict[str, float]:
    upload: dict[str, float] = {}
    for f in files:
        data = json.loads(f.read_text())
        if isinstance(data, dict):
            for key in data:
                upload[I2VKEY[key]] = data[key][0]
    for key in UPSTREAM:
        upload.setdefault(key, 0)
    norm = {k: (upload[k] - lo) / (hi - lo) * w for k, (w, lo, hi) in UPSTREAM.items()}
    quality = sum(norm[k] for k in QUALITY_LIST) / sum(UPSTREAM[k][0] for k in QUALITY_LIST)
    i2v = sum(norm[k] for k in I2V_LIST) / sum(UPSTREAM[k][0] for k in I2V_LIST)
    return {"quality": quality, "i2v": i2v, "total": (quality * 1.0 + i2v * 1.0) / 2.0}


def _mean(values):
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept)


def _fill(store: ResultStore, cid: int, shift: float = 0.0, skip: tuple[str, ...] = ()) -> dict[str, float]:
    means = {}
    for dim, values in PER_VIDEO.items():
        if dim in skip:
            continue
        values = [None if v is None else min(v + shift, 1.0) for v in values]
        rows = [{"video_id": f"v{i}", "value": v,
                 "extras": {"label": "pan_left", "predicted": ["pan_left"] if v else ["static"]}
                 if dim == "camera_motion" else None} for i, v in enumerate(values)]
        store.add_records(cid, BACKEND[dim], rows)
        means[dim] = _mean(values)
        extras = {"per_label": {"pan_left": means[dim]}} if dim == "camera_motion" else None
        store.add_aggregate(cid, BACKEND[dim], means[dim], sum(v is not None for v in values), extras=extras)
    return means


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    store = ResultStore(d / "results.sqlite")
    store.add_run("r1", "tiny", {"preset": "tiny"}, [0], {})
    c1 = store.checkpoint("r1", "dpo", 0, 100, None, SAMPLER)
    c2 = store.checkpoint("r1", "dpo", 0, 200, None, SAMPLER)
    means = {100: _fill(store, c1), 200: _fill(store, c2, shift=0.01)}
    for cid in (c1, c2):  # not VBench dimensions
        store.add_records(cid, "motion_score[flow=dis]", [{"video_id": "v0", "value": 2.0}])
        store.add_aggregate(cid, "motion_score[flow=dis]", 2.0, 1)
        store.add_aggregate(cid, "rollup:vbench_i2v_total", 0.8, 1)
    store.close()
    return d, means


def test_export_is_scored_by_upstream_formula_as_by_our_rollup(run_dir):
    d, means = run_dir
    res = runner.invoke(app, ["export", "--results", str(d), "--format", "vbench"])
    assert res.exit_code == 0, res.output
    out = d / "export" / "vbench"
    for step in (100, 200):
        main = out / f"dpo-seed0-step{step}_eval_results.json"
        data = json.loads(main.read_text())
        assert set(data) == set(I2VKEY)  # nothing the score script would fail on
        ours = vbench_i2v_rollup({BACKEND[k]: means[step][k] for k in I2VKEY})
        theirs = upstream_score([main])
        for key in ("quality", "i2v", "total"):
            assert math.isclose(theirs[key], ours[key], rel_tol=1e-12), (step, key)
        # per-video records as VBench writes them; excluded videos are not listed
        if step == 100:
            assert data["subject_consistency"][1] == [
                {"video_path": f"v{i}", "video_results": v} for i, v in enumerate(PER_VIDEO["subject_consistency"])]
        cam = data["camera_motion"]
        assert len(cam) == 3 and cam[1] == {"pan_left": cam[0]}
        assert [r["video_path"] for r in cam[2]] == ["v0", "v1"]
        assert cam[2][0]["prompt_type"] == "pan_left" and cam[2][0]["predict_type"] == ["pan_left"]
        # temporal_flickering is a VBench dimension the I2V score script does not key: its own file
        extra = json.loads((out / f"dpo-seed0-step{step}_unscored_eval_results.json").read_text())
        assert list(extra) == ["temporal_flickering"]
        assert math.isclose(extra["temporal_flickering"][0], means[step]["temporal_flickering"])
        assert len(extra["temporal_flickering"][1]) == 2
        with pytest.raises(KeyError):
            upstream_score([main, out / f"dpo-seed0-step{step}_unscored_eval_results.json"])
        side = [json.loads(line) for line in (out / f"dpo-seed0-step{step}_identity.jsonl").read_text().splitlines()]
        assert {s["dimension"]: s["identity"] for s in side} == BACKEND
        assert {s["dimension"]: s["videos_left_out"] for s in side if s["videos_left_out"]} == {
            "camera_motion": 1, "temporal_flickering": 1}
    assert "dpo-seed0-step100: motion_score[flow=dis] (not a VBench dimension)" in res.output
    assert "rollup:vbench_i2v_total (not a VBench dimension)" in res.output
    assert not list(out.glob("*motion_score*"))


def test_upstream_scores_differ_between_checkpoints(run_dir):
    d, _ = run_dir
    assert runner.invoke(app, ["export", "--results", str(d), "--format", "vbench"]).exit_code == 0
    out = d / "export" / "vbench"
    s100, s200 = (upstream_score([out / f"dpo-seed0-step{s}_eval_results.json"])["total"] for s in (100, 200))
    assert s200 > s100


def test_two_identities_of_one_dimension_need_a_choice(tmp_path):
    d = tmp_path / "run"
    store = ResultStore(d / "results.sqlite")
    store.add_run("r1", "tiny", {"preset": "tiny"}, [0], {})
    cid = store.checkpoint("r1", "grpo", 1, 5, None, SAMPLER)
    store.add_records(cid, "dynamic_degree[flow=raft]", [{"video_id": "a", "value": 1.0}])
    store.add_aggregate(cid, "dynamic_degree[flow=raft]", 1.0, 1)
    store.add_records(cid, "dynamic_degree[flow=dis]", [{"video_id": "a", "value": 0.0}])
    store.add_aggregate(cid, "dynamic_degree[flow=dis]", 0.0, 1)
    store.close()
    res = runner.invoke(app, ["export", "--results", str(d), "--format", "vbench"])
    assert res.exit_code == 2
    assert "dynamic_degree[flow=dis], dynamic_degree[flow=raft]" in res.output and "--identity" in res.output
    res = runner.invoke(app, ["export", "--results", str(d), "--format", "vbench",
                              "--identity", "dynamic_degree[flow=dis]"])
    assert res.exit_code == 0, res.output
    data = json.loads((d / "export" / "vbench" / "grpo-seed1-step5_eval_results.json").read_text())
    assert data == {"dynamic_degree": [0.0, [{"video_path": "a", "video_results": 0.0}]]}
    assert "dynamic_degree[flow=raft] (another identity of dynamic_degree was chosen)" in res.output
    for bad, said in (("dynamic_degree[flow=farneback]", "is not in"), ("motion_score", "not a VBench dimension")):
        res = runner.invoke(app, ["export", "--results", str(d), "--format", "vbench", "--identity", bad])
        assert res.exit_code == 2 and said in res.output, res.output
    res = runner.invoke(app, ["export", "--results", str(d), "--format", "csv", "--identity", "dynamic_degree"])
    assert res.exit_code == 2 and "drop --identity" in res.output


def test_store_without_vbench_dimensions_and_bad_format(tmp_path):
    d = tmp_path / "run"
    store = ResultStore(d / "results.sqlite")
    store.add_run("r1", "tiny", {"preset": "tiny"}, [0], {})
    cid = store.checkpoint("r1", "dpo", 0, 1, None, SAMPLER)
    store.add_aggregate(cid, "motion_score[flow=dis]", 2.0, 1)
    store.close()
    res = runner.invoke(app, ["export", "--results", str(d), "--format", "vbench"])
    assert res.exit_code == 2 and "holds no VBench dimension" in res.output and "vbench-i2v" in res.output
    assert not (d / "export" / "vbench").exists()
    res = runner.invoke(app, ["export", "--results", str(d), "--format", "json"])
    assert res.exit_code == 2 and "allowed: csv, parquet, vbench" in res.output
