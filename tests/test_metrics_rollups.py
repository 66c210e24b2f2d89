"""VBench-I2V and SHIFT roll-ups, computed by hand."""

import math

import pytest

from metrics import list_metrics
from metrics.rollups import VBENCH_I2V_RANGES, shift_rollup, vbench_i2v_rollup

VALUES = {
    "subject_consistency": 0.95, "background_consistency": 0.96, "motion_smoothness": 0.98,
    "aesthetic_quality": 0.6, "imaging_quality": 0.7, "dynamic_degree": 0.4,
    "camera_motion": 0.5, "i2v_subject": 0.97, "i2v_background": 0.98, "temporal_flickering": 0.99,
}
N_SUBJ = (0.95 - 0.1462) / (1 - 0.1462)
N_BG = (0.96 - 0.2615) / (1 - 0.2615)
N_MS = (0.98 - 0.7060) / (0.9975 - 0.7060)
N_I2V_SUBJ = (0.97 - 0.1462) / (1 - 0.1462)
N_I2V_BG = (0.98 - 0.2615) / (1 - 0.2615)


def test_vbench_i2v_weights():
    out = vbench_i2v_rollup(VALUES)
    quality = (N_SUBJ + N_BG + N_MS + 0.6 + 0.7 + 0.5 * 0.4) / 5.5
    i2v = (0.1 * 0.5 + N_I2V_SUBJ + N_I2V_BG) / 2.1
    assert out["quality"] == pytest.approx(quality, rel=1e-12)
    assert out["i2v"] == pytest.approx(i2v, rel=1e-12)
    assert out["total"] == pytest.approx((quality + i2v) / 2, rel=1e-12)
    assert out["missing"] == []


def test_vbench_missing_dimensions_are_left_out_and_reported():
    values = {k: v for k, v in VALUES.items() if k not in ("imaging_quality", "camera_motion")}
    values["aesthetic_quality[clip=l14]"] = values.pop("aesthetic_quality")  # identities are accepted
    values["dynamic_degree"] = float("nan")  # NaN counts as missing, never as 0
    out = vbench_i2v_rollup(values)
    assert out["quality"] == pytest.approx((N_SUBJ + N_BG + N_MS + 0.6) / 4.0, rel=1e-12)
    assert out["i2v"] == pytest.approx((N_I2V_SUBJ + N_I2V_BG) / 2.0, rel=1e-12)
    assert out["missing"] == ["camera_motion", "dynamic_degree", "imaging_quality"]
    empty = vbench_i2v_rollup({})
    assert math.isnan(empty["quality"]) and math.isnan(empty["total"]) and len(empty["missing"]) == 9


def test_shift_groups():
    out = shift_rollup(VALUES)
    appearance = [0.95, 0.96, 0.6, 0.7, 0.97, 0.98]
    motion = [0.99, 0.98, 0.4]
    assert out["appearance"] == pytest.approx(sum(appearance) / 6, rel=1e-12)
    assert out["motion"] == pytest.approx(sum(motion) / 3, rel=1e-12)
    assert out["overall"] == pytest.approx(sum(appearance + motion) / 9, rel=1e-12)
    partial = shift_rollup({"temporal_flickering": 0.9, "subject_consistency": 0.8})
    assert partial["overall"] == pytest.approx(0.85) and "dynamic_degree" in partial["missing"]


def test_two_identities_of_one_dimension_are_refused():
    with pytest.raises(ValueError, match="dynamic_degree"):
        vbench_i2v_rollup({"dynamic_degree[flow=dis]": 0.5, "dynamic_degree[flow=farneback]": 0.6})


def test_registered_ranges_agree_with_the_rollup_table():
    for spec in list_metrics():
        if spec.name in VBENCH_I2V_RANGES:
            assert spec.vbench_range == pytest.approx(VBENCH_I2V_RANGES[spec.name]), spec.name


def test_upstream_score_script_fills_a_missing_dimension_with_zero():
    """VBench's cal_i2v_final_score.py sets a missing dimension's raw score to 0 before normalising."""
    from metrics.rollups import vbench_i2v_upstream

    full = vbench_i2v_upstream(VALUES)
    assert full["total"] == vbench_i2v_rollup(VALUES)["total"] and vbench_i2v_rollup(VALUES)["complete"]
    values = {k: v for k, v in VALUES.items() if k not in ("subject_consistency", "camera_motion")}
    out = vbench_i2v_upstream(values)
    n_subj0 = (0.0 - 0.1462) / (1 - 0.1462)  # negative: upstream's own arithmetic
    quality = (n_subj0 + N_BG + N_MS + 0.6 + 0.7 + 0.5 * 0.4) / 5.5
    i2v = (0.1 * 0.0 + N_I2V_SUBJ + N_I2V_BG) / 2.1
    assert out["quality"] == pytest.approx(quality, rel=1e-12)
    assert out["total"] == pytest.approx((quality + i2v) / 2, rel=1e-12)
    assert out["missing"] == ["camera_motion", "subject_consistency"]
    assert not vbench_i2v_rollup(values)["complete"]


def _store_with(tmp_path, metrics: dict):
    from harness.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    store.add_run("r", "tiny", {}, [0], {})
    ckpt = store.checkpoint("r", "base", 0, 0, None, {})
    for name, value in metrics.items():
        store.add_aggregate(ckpt, name, value, 1)
    return store, ckpt


def _rollups(store, ckpt):
    from harness.evaluate import Evaluator

    Evaluator._rollups(None, store, ckpt)
    agg = store.aggregates()
    return {m: v for m, v in zip(agg["metric"], agg["value"], strict=True) if m.startswith("rollup:")}


def test_a_partial_rollup_is_stored_under_another_name(tmp_path):
    """Before: a roll-up of whatever dimensions were present was stored as rollup:vbench_i2v_total."""
    some = {"subject_consistency[tiny]": 0.9, "motion_smoothness[tiny]": 0.95}
    store, ckpt = _store_with(tmp_path, some)
    names = _rollups(store, ckpt)
    assert "rollup:vbench_i2v_partial_total[tiny]" in names
    assert not any(n.startswith("rollup:vbench_i2v_total") for n in names)
    full = {f"{k}[dino-vitb16]": v for k, v in VALUES.items()}
    store2, ckpt2 = _store_with(tmp_path / "full", full)
    names = _rollups(store2, ckpt2)
    assert names["rollup:vbench_i2v_total[upstream]"] == pytest.approx(vbench_i2v_rollup(VALUES)["total"])


def test_two_stored_identities_of_a_dimension_give_no_rollup_and_sea_raft_is_no_upstream_raft(tmp_path):
    """Before: the last identity silently won, and 'sea-raft' was labelled upstream because it contains 'raft'."""
    from harness.evaluate import _rollup_label

    store, ckpt = _store_with(tmp_path, {"dynamic_degree[flow=dis]": 0.5, "dynamic_degree[flow=raft]": 0.6})
    assert _rollups(store, ckpt) == {}
    assert _rollup_label(["dynamic_degree[flow=sea-raft]"]) == "tiny"
    assert _rollup_label(["dynamic_degree[flow=raft]"]) == "upstream"
