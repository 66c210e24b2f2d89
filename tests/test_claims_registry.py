"""Claims and objectives collected from the trainer registry: today's claims table unchanged (its rows
written from the code before claims became data), a method's declarations reaching the reports
without an edit under reports/, and the objectives' interval over seeds by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reports.claims import ABSENT, HOLDS, OWN, RunData, check_claims, claims_markdown
from reports.objectives import FALLS, RISES, UNDECIDED, objective_change, objectives_markdown, run_objectives
from trainers.base import Trainer
from trainers.claims import Objective, PaperClaim
from trainers.registry import TRAINERS

METRICS = {"dynamic_degree[flow=dis]": 0.6, "motion_score[flow=dis]": 0.5, "motion_adherence[judge=oracle]": 0.4,
           "distortion_rate[judge=oracle]": 0.2, "latent_reward[rm=tiny]": 1.0}
SHIFTS = {"sft": -0.1, "shift": 0.02, "dpo": 0.01, "pgdpo": 0.03, "apo": -0.02, "fcrm": 0.2,
          "fcrm-onpolicy": 0.1, "fcrm-offline": 0.15}
# The claims table of this run as reports/claims.py wrote it before the claims moved onto the trainers.
BEFORE = Path(__file__).parent / "fixtures" / "claims_table_before_registry.md"


def _frames(records, logs):
    return RunData(pd.DataFrame(records, columns=["method", "seed", "step", "metric", "video_id", "value"]),
                   pd.DataFrame(logs, columns=["method", "seed", "step", "key", "value"]))


def synthetic_run() -> RunData:
    """Every method the claims name, three seeds, six videos, step 8; times, displacements, Gamma."""
    rec, logs = [], []
    for metric, level in METRICS.items():
        rec += [("base", 0, 0, metric, f"v{v}", level + 0.01 * (v % 3)) for v in range(6)]
        for i, (method, d) in enumerate(SHIFTS.items()):
            for s in (0, 1, 2):
                rec += [(method, s, 8, metric, f"v{v}", level + d + 0.01 * ((v * (s + 1) + i) % 5))
                        for v in range(6)]
    for i, method in enumerate(SHIFTS):
        for s in (0, 1, 2):
            logs.append((method, s, 8, "seconds", 8.0 * (1 + i % 3) + s))
            logs.append((method, s, 8, "probe/likelihood_displacement/chosen_displacement", (i - 3) * 0.1 + 0.01 * s))
            logs += [(method, s, st, "own_pairs/gamma", float((st + s + i) % 4 - 1)) for st in range(8)]
    # APO's Table 1 claim now names the offline-only variant: it gets the numbers `apo` had when the table was written
    rec += [("apo-offline", *r[1:]) for r in rec if r[0] == "apo"]
    logs += [("apo-offline", *r[1:]) for r in logs if r[0] == "apo"]
    return _frames(rec, logs)


def test_claims_table_is_todays_plus_one_objective_row_per_method():
    table = check_claims(synthetic_run(), signals={"fcrm": ["latent_rm"], "dpo": ["oracle"]})
    lines = claims_markdown(table, "tiny").splitlines()
    own = [ln for ln in lines if ln.startswith(f"| {OWN} |")]
    in_run = [f"| {OWN} | {m} improves its own training objective | no {k} logged | **{ABSENT}** |"
              for m, k in [("sft", "loss"), ("shift", "loss")]]
    in_run += [f"| {OWN} | flow-grpo improves its own training objective | needs method(s) flow-grpo in the run "
               f"| **{ABSENT}** |"]
    in_run += [f"| {OWN} | {m} improves its own training objective | no {k} logged | **{ABSENT}** |"
               for m, k in [("dpo", "reward_margin"), ("pgdpo", "reward_margin"), ("apo", "reward_margin"),
                            ("fcrm", "reward/round_mean")]]
    in_run += [f"| {OWN} | {m} improves its own training objective | needs method(s) {m} in the run | **{ABSENT}** |"
               for m in ("awm", "diffusionnft")]
    assert own == in_run
    # the baselines' comparative claims: not measured here, the synthetic run has none of them
    baselines = [ln for ln in lines if ln.startswith("| ") and not ln.startswith(f"| {OWN} |") and
                 any(b in ln for b in ("Flow-GRPO", "than AWM", "than DiffusionNFT"))]
    assert len(baselines) == 3 and all(f"**{ABSENT}**" in ln for ln in baselines)
    # issue #26: the staged pipeline is `apo` (a claim of its own against the base model), and Table 1's claim
    # names the offline-only variant, which the synthetic run gives `apo`'s numbers
    staged = [ln for ln in lines if "curriculum lowers the distortion rate" in ln]
    assert len(staged) == 1 and "distortion_rate apo − base:" in staged[0]
    table1 = ("APO lowers the distortion rate vs DPO at matched compute",
              "APO lowers the distortion rate vs DPO at matched compute (Table 1, offline)")
    before = [ln.replace(*table1).replace("distortion_rate apo − dpo", "distortion_rate apo-offline − dpo")
              for ln in BEFORE.read_text(encoding="utf-8").splitlines()]
    # the same table, the added rows aside; the head's counts grow by them
    rest = [ln for ln in lines if ln not in own + baselines + staged]
    assert [ln for ln in rest if not ln.startswith("†")] == [
        before[0].replace("0 not measured.", f"{len(own) + len(baselines)} not measured.")
                 .replace("2 inconclusive", "3 inconclusive"),
        *[ln for ln in before[1:] if not ln.startswith("†")]]
    # the overlap footnote: today's, then the baselines' claims decided on FCRM's training judge
    (note,), (note_before,) = [ln for ln in rest if ln.startswith("†")], [ln for ln in before if ln.startswith("†")]
    assert note.startswith(note_before.rstrip(".")) and "more than AWM at matched compute: fcrm trained on" in note


class ToyTrainer(Trainer):
    """A method declared outside reports/: its claim and objective must reach the reports."""

    name = "toy"
    claims = (PaperClaim("Toy", "toy raises the motion score over the base model", "difference", ("toy",),
                         a="toy", b="base", metric="motion_score"),)
    training_objective = Objective("toy/reward", "higher", "the toy's reward")

    def compute_loss(self, step):  # the Trainer interface requires it; the reports never train a method
        raise AssertionError("reports must read a trainer's class attributes, not train it")


def test_a_new_trainer_reaches_claims_and_objectives(monkeypatch):
    monkeypatch.setitem(TRAINERS, "toy", ToyTrainer)
    m = "motion_score[flow=dis]"
    rec = [("base", 0, 0, m, f"v{v}", 0.5) for v in range(5)]
    rec += [("toy", s, 10, m, f"v{v}", 0.6 + 0.001 * (v + s)) for s in (0, 1, 2) for v in range(5)]
    logs = [("toy", s, st, "toy/reward", float(st + s)) for s in (0, 1, 2) for st in range(20)]
    data = _frames(rec, logs)
    table = check_claims(data).set_index("claim")
    assert table.loc["toy raises the motion score over the base model", "verdict"] == HOLDS
    own = table.loc["toy improves its own training objective"]
    assert own["paper"] == OWN and own["verdict"] == HOLDS and "toy/reward (higher is better)" in own["evidence"]
    changes = run_objectives(data.logs, ["base", "toy"], {})
    assert [c.method for c in changes] == ["toy"] and changes[0].verdict == RISES and changes[0].improves
    assert "| toy | toy/reward (the toy's reward) |" in objectives_markdown(changes)


def _series(values_per_seed):
    return pd.DataFrame([("m", s, st + 1, "obj", v) for s, vals in enumerate(values_per_seed)
                         for st, v in enumerate(vals)], columns=["method", "seed", "step", "key", "value"])


def test_objective_change_and_its_t_interval_by_hand():
    # 20 logged steps: the first and last tenth are two steps each; middle values do not count
    firsts, lasts = [1.0, 2.0, 0.5], [3.0, 4.2, 2.3]
    seeds = [[a, a + 0.2, *np.linspace(-9, 9, 16), b - 0.2, b + 0.2] for a, b in zip(firsts, lasts, strict=True)]
    higher = Objective("obj", "higher", "a reward")
    change = objective_change(_series(seeds), "m", higher)
    d = np.array([b - (a + 0.1) for a, b in zip(firsts, lasts, strict=True)])  # per seed: 1.9, 2.1, 1.7
    assert change.seeds == 3 and change.change == pytest.approx(d.mean())
    assert change.first == pytest.approx(np.mean(firsts) + 0.1) and change.last == pytest.approx(np.mean(lasts))
    assert change.half == pytest.approx(stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3))
    assert change.half == pytest.approx(4.3027 * 0.2 / np.sqrt(3), rel=1e-4)  # 1.9 ± 0.497
    assert change.verdict == RISES and change.improves is True
    assert objective_change(_series(seeds), "m", Objective("obj", "lower", "a loss")).improves is False
    falling = objective_change(_series([s[::-1] for s in seeds]), "m", higher)
    assert falling.verdict == FALLS and falling.improves is False
    one = objective_change(_series(seeds[:1]), "m", higher)
    assert one.verdict == UNDECIDED and np.isnan(one.half) and one.improves is None
    assert objective_change(_series(seeds), "other", higher) is None
