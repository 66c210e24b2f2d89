"""SHIFT's report tables and the reward-hacking diagnostics on synthetic stored numbers."""

import numpy as np
import pandas as pd

from reports.hacking import hacking_markdown, hacking_signals, hacking_table
from reports.shift import ablation_rows, paired, shift_checks, shift_markdown, shift_table

DIMS = ["subject_consistency", "background_consistency", "i2v_subject", "i2v_background",
        "temporal_flickering", "motion_smoothness", "dynamic_degree", "motion_score"]


def _records(method, step, motion_shift, n=20, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(n):
        for d in DIMS:
            base = 0.9 if d != "motion_score" else 0.2
            value = base + 0.01 * rng.standard_normal() + (motion_shift if d == "motion_score" else 0.0)
            rows.append({"method": method, "seed": 0, "step": step, "video_id": f"v{v}", "metric": f"{d}[x]",
                         "value": value})
    return rows


def _agg(method, step, values):
    return [{"method": method, "seed": 0, "step": step, "metric": m, "value": v} for m, v in values.items()]


def test_table_and_claims_from_paired_records():
    recs = pd.DataFrame(_records("base", 0, 0.0) + _records("sft", 300, -0.05, seed=1)
                        + _records("shift", 300, 0.0, seed=2))
    agg_rows = []
    for method, step, ms in (("base", 0, 0.2), ("sft", 100, 0.17), ("sft", 300, 0.15), ("shift", 300, 0.2)):
        agg_rows += _agg(method, step, {"rollup:shift_appearance[tiny]": 0.9, "rollup:shift_motion[tiny]": 0.8,
                                        "rollup:shift_overall[tiny]": 0.85, "motion_score[x]": ms,
                                        "fvd[x]": 100.0, "rollup:shift_motion_minus_appearance[tiny]": -0.1})
    agg = pd.DataFrame(agg_rows)
    logs = pd.DataFrame([{"method": "sft", "seed": 0, "step": 300, "key": "seconds", "value": 10.0},
                         {"method": "shift", "seed": 0, "step": 300, "key": "seconds", "value": 25.0}])
    table = shift_table(agg, recs, {"sft": {}, "shift": {}}, logs)
    row = table.set_index("method")
    assert row.loc["shift", "time vs SFT"] == 2.5 and row.loc["sft", "Motion score"] == 0.15
    assert row.loc["sft", "Δ Motion score"] < -0.04 and row.loc["sft", "ci Motion score"] > 0
    checks = {c: v for c, v, _ in shift_checks(recs, ["shift"])}
    assert checks["SFT loses motion (motion score)"] == "holds"
    assert checks["SHIFT keeps motion (motion score not below the base model)"].startswith("holds")
    assert checks["SHIFT has more motion than SFT (motion score)"] == "holds"
    assert checks["SFT improves appearance"].startswith("inconclusive")  # no appearance change was made
    text = shift_markdown(table, shift_checks(recs, ["shift"]))
    assert "Table 1" in text and "2.50×" in text and "SFT loses motion" in text


def test_paired_interval_by_hand():
    a = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=["a", "b", "c"])
    b = pd.DataFrame({"x": [0.0, 0.0, 0.0]}, index=["a", "b", "c"])
    mean, half = paired(a, b, "x")
    assert mean == 2.0 and np.isclose(half, 1.96 * 1.0 / np.sqrt(3))


def test_hacking_diagnostics_flag_drift_and_a_collapsing_gap():
    rows = []
    gaps, fvds = [0.0, 0.05, 0.06, -0.02], [100.0, 110.0, 125.0, 140.0]
    for step, g, f in zip([0, 100, 200, 300], gaps, fvds, strict=True):
        method = "base" if step == 0 else "shift"
        rows += _agg(method, step, {"rollup:shift_motion_minus_appearance[tiny]": g, "fvd[x]": f,
                                    "motion_score[x]": 0.2 - step / 3000})
    logs = pd.DataFrame([{"method": "shift", "seed": 0, "step": s, "key": "reward/fake_mean", "value": s / 100}
                         for s in (1, 100, 200, 300)])
    table = hacking_table(pd.DataFrame(rows), logs, ["shift"])
    assert list(table["step"]) == [100, 200, 300]
    assert np.isclose(table["FVD drift"].iloc[-1], 0.4)  # relative to the base model's FVD
    signs = hacking_signals(table)["shift"]
    assert any("FVD drift +40%" in s for s in signs) and any("turned negative" in s for s in signs)
    assert any("held-out motion_score got worse" in s for s in signs)
    assert "no hacking pattern" not in hacking_markdown(table)


def test_table3_rows_come_from_the_labels_and_settings_a_run_recorded():
    """The ablation's rows are the shift methods labelled A0 ... A4 in the preset (any names), their
    components read from the recorded settings; Table 3's orderings compare them by label."""
    configs = {"shift": {"label": "A4 (SHIFT)", "rewards": ["imr", "lmr"], "noise_alignment": True,
                         "adversarial": True},
               "my-a1": {"trainer": "shift", "label": "A1", "rewards": ["imr"], "noise_alignment": True,
                         "adversarial": False},
               "my-a0": {"trainer": "shift", "label": "A0", "rewards": ["imr"], "noise_alignment": False,
                         "adversarial": False},
               "shift-sigmoid": {"trainer": "shift", "rewards": ["imr", "lmr"]}}  # no label: not a Table 3 row
    assert ablation_rows(configs) == {"my-a0": ("A0", [True, False, False, False]),
                                      "my-a1": ("A1", [True, True, False, False]),
                                      "shift": ("A4 (SHIFT)", [True, True, True, True])}
    recs = pd.DataFrame(_records("base", 0, 0.0) + _records("my-a0", 8, 0.1, seed=1)
                        + _records("my-a1", 8, 0.0, seed=2))
    checks = {c: e for c, _, e in shift_checks(recs, ["my-a0", "my-a1"], configs)}
    assert checks["A0 (IMR only) has more VBench motion than A1 (+NA)"].startswith("Motion my-a0 − my-a1:")
    agg = pd.DataFrame([r for m in ("base", "my-a0", "my-a1") for r in _agg(m, 0 if m == "base" else 8,
                                                                            {"motion_score[x]": 0.2})])
    text = shift_markdown(shift_table(agg, recs, configs), [], configs)
    table3 = text.split("Table 3")[1].splitlines()
    assert [ln.split("|")[1].strip() for ln in table3 if ln.startswith("| A")] == ["A0", "A1"]
