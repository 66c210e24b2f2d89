"""The claims report: paired differences over videos and seeds computed by hand, verdicts, missing methods."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reports.claims import ABSENT, FAILS, HOLDS, UNSURE, RunData, check_claims, claims_markdown, paired_delta
from reports.tables import Unfinished


def _records(rows):
    return pd.DataFrame(rows, columns=["method", "seed", "step", "metric", "video_id", "value"])


def _logs(rows):
    return pd.DataFrame(rows, columns=["method", "seed", "step", "key", "value"])


def test_paired_delta_over_videos_and_seeds_by_hand():
    m = "motion_score[flow=dis]"
    rows = [("base", 0, 0, m, v, x) for v, x in zip("abc", [0.5, 0.6, 0.7], strict=True)]
    # sft, 2 seeds, final step 10 (step 5 is ignored): differences from base
    # seed 0: -0.1, -0.2, -0.3; seed 1: -0.3, -0.2, -0.1
    rows += [("sft", 0, 5, m, v, 9.0) for v in "abc"]
    rows += [("sft", 0, 10, m, v, x) for v, x in zip("abc", [0.4, 0.4, 0.4], strict=True)]
    rows += [("sft", 1, 10, m, v, x) for v, x in zip("abc", [0.2, 0.4, 0.6], strict=True)]
    mean, half, k, n = paired_delta(RunData(_records(rows), _logs([])), "motion_score", "sft", "base")
    # per-video means over seeds: -0.2, -0.2, -0.2 (variance 0); per-seed means: -0.2, -0.2 (variance 0)
    assert (mean, k, n) == (pytest.approx(-0.2), 2, 3) and half == pytest.approx(0.0, abs=1e-12)
    rows[-1] = ("sft", 1, 10, m, "c", 0.9)  # seed 1 now: -0.3, -0.2, +0.2
    mean, half, _, _ = paired_delta(RunData(_records(rows), _logs([])), "motion_score", "sft", "base")
    d = np.array([[-0.1, -0.3], [-0.2, -0.2], [-0.3, 0.2]])
    se2 = d.mean(axis=1).var(ddof=1) / 3 + d.mean(axis=0).var(ddof=1) / 2
    assert mean == pytest.approx(d.mean()) and half == pytest.approx(1.96 * np.sqrt(se2))


def test_verdicts_and_not_measured():
    m = "dynamic_degree[flow=dis]"
    rng = np.random.default_rng(0)
    vids = [f"v{i}" for i in range(20)]
    rows = [("base", 0, 0, m, v, 0.6 + 0.01 * rng.standard_normal()) for v in vids]
    rows += [("sft", s, 4, m, v, 0.3 + 0.01 * rng.standard_normal()) for s in (0, 1, 2) for v in vids]
    rows += [("shift", s, 4, m, v, 0.3 + 0.01 * rng.standard_normal()) for s in (0, 1, 2) for v in vids]
    # per-step seconds: sft 1, 1.2, 1.4, shift 2.8, 3.5, 4: 2.8 / 1 is within 2.46 + 20 %
    logs = [("sft", s, 4, "seconds", 4.0 * x) for s, x in enumerate([1, 1.2, 1.4])]
    logs += [("shift", s, 4, "seconds", 4.0 * x) for s, x in enumerate([2.8, 3.5, 4])]
    table = check_claims(RunData(_records(rows), _logs(logs))).set_index("claim")
    assert table.loc["SFT on appearance-only data loses dynamic degree", "verdict"] == HOLDS
    assert table.loc["SHIFT keeps more dynamic degree than SFT", "verdict"] == UNSURE
    timing = table.loc["SHIFT trains at about 2.46× SFT's cost per epoch (no more than +20 %)"]
    assert timing["verdict"] == HOLDS and "2.80 (fastest of 3 and 3 seeds" in timing["evidence"]
    logs[3] = ("shift", 0, 4, "seconds", 4.0 * 3.0)  # fastest shift seed now 3.0 > 2.95
    timing = check_claims(RunData(_records(rows), _logs(logs))).set_index("claim").loc[timing.name]
    assert timing["verdict"] == FAILS and "3.00" in timing["evidence"]
    logs[2] = ("sft", 2, 4, "seconds", 4.0 * 9)  # sft seed 2 shared the machine: 9 s against 1 s
    timing = check_claims(RunData(_records(rows), _logs(logs))).set_index("claim").loc[timing.name]
    assert timing["verdict"] == UNSURE and "9.0× in time per step" in timing["evidence"]
    dpo = table.loc["DPO displaces the chosen likelihood (log p of chosen samples falls)"]
    assert dpo["verdict"] == ABSENT and "dpo" in dpo["evidence"]
    text = claims_markdown(table.reset_index(), "tiny")
    assert "**holds**" in text and "not measured" in text


def test_likelihood_and_gamma_claims_from_probe_logs():
    m = "distortion_rate[judge=oracle]"
    rows = [(meth, s, st, m, "v0", 0.0) for meth, s, st in [("base", 0, 0), ("dpo", 0, 4), ("dpo", 1, 4),
                                                             ("pgdpo", 0, 4), ("pgdpo", 1, 4)]]
    ld = "probe/likelihood_displacement/chosen_displacement"
    logs = [("dpo", 0, 4, ld, -0.5), ("dpo", 1, 4, ld, -0.7), ("pgdpo", 0, 4, ld, 0.2), ("pgdpo", 1, 4, ld, 0.3)]
    logs += [("pgdpo", s, st, "own_pairs/gamma", 1.0) for s in (0, 1) for st in range(10)]
    logs += [("dpo", s, st, "own_pairs/gamma", 0.0) for s in (0, 1) for st in range(10)]  # DPO vs itself: 0
    logs += [("pgdpo", s, st, "probe/gamma/gamma", -1.0) for s in (0, 1) for st in range(10)]  # not the paper's
    table = check_claims(RunData(_records(rows), _logs(logs))).set_index("claim")
    # -0.6 +- t(0.975, 1) * 0.1414 / sqrt(2) = -0.6 +- 1.27: the interval contains 0 with two seeds
    assert table.loc["DPO displaces the chosen likelihood (log p of chosen samples falls)", "verdict"] == UNSURE
    gamma = table.loc["Gamma > 0 in most training steps of PG-DPO (paper: 81.7 % and 76.9 %)"]
    assert gamma["verdict"] == HOLDS and "20 of 20" in gamma["evidence"]


def test_a_claim_whose_method_is_unfinished_says_so():
    """The report hands the claims only finished seeds; a method with none is named as unfinished, with the
    step it reached, never as absent from the run or decided on its half-way checkpoint."""
    m = "dynamic_degree[flow=dis]"
    rows = [("base", 0, 0, m, v, 0.6) for v in "abc"] + [("shift", 0, 100, m, v, 0.5) for v in "abc"]
    late = (Unfinished("sft", 0, 50, 100),)
    table = check_claims(RunData(_records(rows), _logs([])), unfinished=late).set_index("claim")
    row = table.loc["SHIFT keeps more dynamic degree than SFT"]
    assert row["verdict"] == ABSENT and row["evidence"] == "sft unfinished (evaluated to step 50 of 100)"
    table.loc["SFT on appearance-only data loses dynamic degree", "verdict"] = HOLDS  # one measured row: a table
    text = claims_markdown(table.reset_index(), "tiny", unfinished=late)
    assert "Unfinished, left out of the final tables and claims: sft seed 0 (evaluated to step 50 of 100)" in text
