"""Separate judges (issue #25): methods train on a judge that is not an evaluation metric, every
overlap is declared and marked, and the oracle-ranked variants say so in the log and the report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import fast_preset, run_cache  # noqa: F401  (run_cache: autouse fixture)

from harness.config import load_preset
from harness.data.raters import key_frames, rater_score, rater_view
from harness.data.source import clip_batch
from harness.runner import RunOptions, method_config
from harness.store import ResultStore
from metrics.judges import MARK, evaluation_overlaps, metric_judges, overlaps
from metrics.registry import list_metrics
from reports.claims import check_claims, claim_overlap, registered_claims
from reports.render import render_report

DEFAULT_METHODS = ["sft", "dpo", "pgdpo", "apo", "fcrm", "shift"]


def _configs(preset, methods):
    return {m: method_config(preset, m, RunOptions(methods=methods)) for m in methods}


def _evaluation_judges(preset) -> dict[str, str]:
    specs = {s.name: s for s in list_metrics()}
    return {name: specs[name].judge for name in preset.eval.metrics
            if specs[name].role == "evaluation" and specs[name].judge}


def test_default_methods_train_on_no_evaluation_judge():
    """The tiny preset's methods train on latent_rm (fitted to rater labels), imr/lmr: never on a judge
    that an evaluation metric of the preset reads."""
    preset = load_preset("tiny")
    evaluation = _evaluation_judges(preset)
    assert evaluation == {"distortion_rate": "oracle", "motion_adherence": "oracle"}
    signals = {m: c.training_signals() for m, c in _configs(preset, DEFAULT_METHODS).items()}
    assert signals == {"sft": [], "dpo": ["latent_rm"], "pgdpo": ["latent_rm"], "apo": ["latent_rm"],
                       "fcrm": ["latent_rm"], "shift": ["imr", "lmr"]}
    assert not set().union(*signals.values()) & set(evaluation.values())
    assert evaluation_overlaps(signals, preset.eval.metrics) == []


def test_oracle_variants_are_named_and_said_in_one_line():
    preset = load_preset("tiny")
    signals = {m: c.training_signals() for m, c in _configs(preset, ["dpo-oracle", "pgdpo-oracle",
                                                                       "fcrm-pixel"]).items()}
    assert signals == {"dpo-oracle": ["oracle"], "pgdpo-oracle": ["oracle"], "fcrm-pixel": ["oracle"]}
    lines = evaluation_overlaps(signals, ["distortion_rate[judge=oracle]", "motion_adherence[judge=oracle]",
                                          "motion_score[flow=dis]"])
    assert len(lines) == 3
    assert all("oracle judge" in line and "distortion_rate, motion_adherence" in line and "\n" not in line
               for line in lines)


def test_training_pairs_and_ranker_never_call_the_oracle(monkeypatch, tmp_path):
    """Building DPO's default pairs and ranking APO's online pairs (latent_rm) work with the oracle
    broken; the named oracle variant does call it."""
    import harness.data.oracle as oracle
    import harness.data.preferences as prefs
    from harness.models.starting import base_adapter
    from trainers.preference import PairsConfig, load_pairs
    from trainers.rankers import RankCondition, get_ranker

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the evaluation oracle was called by a training judge")

    monkeypatch.setattr(oracle, "judge", broken)
    monkeypatch.setattr(prefs, "judge", broken)
    preset = fast_preset()
    adapter = base_adapter(preset)
    pairs = load_pairs(adapter, preset, PairsConfig(conditions=3, per_condition=2), tmp_path)
    assert pairs.provenance["judge"].startswith("latent_rm:") and len(pairs) >= 1
    batch = clip_batch(preset, "prompts", [0])
    ranker = get_ranker("latent_rm", preset.world)
    pref = ranker.prefer(batch.frames[0], batch.frames[0][::-1].copy(),
                         RankCondition(batch.specs[0], batch.frames[0, 0], batch.captions[0]))
    assert pref in (-1, 0, 1) and not calls
    with pytest.raises(AssertionError, match="evaluation oracle"):
        load_pairs(adapter, preset, PairsConfig(conditions=3, per_condition=2, judge="oracle"), tmp_path)


def test_rater_labels_are_partial_noisy_and_reproducible():
    preset = load_preset("tiny")
    batch = clip_batch(preset, "prompts", range(20000, 20004))
    assert key_frames(8) == [0, 4, 7]
    for frames, spec in zip(batch.frames, batch.specs, strict=True):
        a, b = rater_score(frames, spec, preset.world), rater_score(frames, spec, preset.world)
        assert a == b and 0.0 <= a <= 1.0
        integrity, adherence = rater_view(frames, spec, preset.world)
        clean = 0.5 * (integrity + adherence)
        assert rater_score(frames, spec, preset.world, noise_std=0.0) == pytest.approx(clean)
        assert a != pytest.approx(clean, abs=1e-9)  # noise was added
    # The rater sees key frames only: a distortion confined to the frames in between is invisible to it.
    frames, spec = batch.frames[0].copy(), batch.specs[0]
    before = rater_view(frames, spec, preset.world)
    frames[[1, 2, 3, 5, 6]] = frames[[1, 2, 3, 5, 6]].mean(axis=(1, 2), keepdims=True).astype(np.uint8)
    assert rater_view(frames, spec, preset.world) == before


def test_shipped_reward_model_is_fitted_to_rater_labels():
    from harness.config import package_path

    record = json.loads((package_path("assets/tiny/rewards/latent_rm") / "record.json").read_text())
    assert record["target"].startswith("rater label")
    assert "--target rater" in record["reproduce"]
    # a useful proxy of the truth, but not the truth: its labels disagree with the oracle on held-out videos
    assert 0.5 < record["held_out"]["oracle"]["pearson"] < 0.99
    assert record["held_out"]["labels_vs_oracle"]["pearson"] < 0.99


def test_roll_ups_share_their_dimensions_judges():
    assert metric_judges("rollup:vbench_i2v_quality[x]") == {"aesthetic"}
    assert metric_judges("distortion_rate[judge=oracle]") == {"oracle"}
    assert metric_judges("motion_score[flow=dis]") == set()
    hits = overlaps({"fcrm-aes": ["aesthetic"], "sft": []},
                    ["rollup:vbench_i2v_quality[x]", "aesthetic_quality[features=clip-vitl14]", "fvd[f]"])
    assert set(hits) == {"fcrm-aes"} and set(hits["fcrm-aes"]) == {"rollup:vbench_i2v_quality[x]",
                                                                   "aesthetic_quality[features=clip-vitl14]"}


LR = "latent_reward[model=abc]"
DR = "distortion_rate[judge=oracle]"
PRESET = {"name": "tiny", "eval": {"num_videos": 4, "seed": 1000}, "sampler": {"kind": "ode", "num_steps": 2}}


def _run(root: Path, signals: dict[str, list[str]] | None) -> Path:
    run_dir = root / "run"
    run_dir.mkdir()
    methods = ["dpo", "dpo-oracle"]
    config = {"preset": PRESET, "methods": {"dpo": {}, "dpo-oracle": {"trainer": "dpo", "pairs": {"judge": "oracle"}}},
              "metrics": [LR, DR]}
    if signals is not None:
        config["training_signals"] = signals
    (run_dir / "run.json").write_text(json.dumps({"run_id": "r", "options": {"methods": methods}, **config}))
    with ResultStore(run_dir / "results.sqlite") as store:
        store.add_run("r", "tiny", config, [0], {})
        for method, step in (("base", 0), ("dpo", 4), ("dpo-oracle", 4)):
            cid = store.checkpoint("r", method, 0, step, None, PRESET["sampler"])
            for metric, v in ((LR, 0.5 + step / 100), (DR, 0.25 - step / 100)):
                store.add_aggregate(cid, metric, v, 4, v - 0.01, v + 0.01)
                store.add_records(cid, metric, [{"video_id": f"v{k}", "value": v + 0.01 * k} for k in range(4)])
    return run_dir


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "from-configs"])
def test_rendered_report_marks_the_overlap(tmp_path, recorded):
    """dpo's latent_reward and dpo-oracle's distortion_rate carry the mark in the Markdown, LaTeX, HTML
    and per-step tables, with the footnote; the other cells do not. An older run without recorded
    signals gets them from its method settings."""
    signals = {"dpo": ["latent_rm"], "dpo-oracle": ["oracle"]} if recorded else None
    index = render_report(_run(tmp_path, signals))
    out = index.parent
    md = (out / "table.md").read_text()
    cells: dict[str, list[str]] = {}  # a method's cells over the column groups' tables, in the layout's order:
    for line in md.splitlines():  # distortion_rate (hacking diagnostics), then latent_reward (training judges)
        if line.startswith("| dpo"):
            row = [c.strip() for c in line.strip("|").split("|")]
            cells.setdefault(row[0], []).extend(row[1:])
    assert cells["dpo"][1].endswith(MARK) and not cells["dpo"][0].endswith(MARK)
    assert cells["dpo-oracle"][0].endswith(MARK) and not cells["dpo-oracle"][1].endswith(MARK)
    assert "dpo trained on the latent_rm judge (latent_reward)" in md
    assert "dpo-oracle trained on the oracle judge (distortion_rate)" in md
    assert r"$^\dagger$" in (out / "table.tex").read_text()
    page = index.read_text()
    assert page.count('class="overlap"') >= 4  # main table and per-step table, two cells each
    assert (out / "steps.md").read_text().count(MARK) >= 3  # two cells and the footnote


def test_claims_say_when_decided_on_a_training_judge():
    fcrm_claim = next(c for c in registered_claims() if c.text.startswith("FCRM raises the latent reward"))
    apo_claim = next(c for c in registered_claims() if c.text.startswith("APO lowers the distortion rate"))
    assert claim_overlap(fcrm_claim, {"fcrm": ["latent_rm"]}) == "fcrm trained on latent_rm"
    assert claim_overlap(apo_claim, {"apo": ["latent_rm"], "dpo": ["latent_rm"]}) == ""
    assert claim_overlap(apo_claim, {"apo": ["latent_rm"], "dpo": ["oracle"]}) == "dpo trained on oracle"
    import pandas as pd

    from reports.claims import RunData

    empty = RunData(pd.DataFrame(columns=["method", "seed", "step", "metric", "video_id", "value"]),
                    pd.DataFrame(columns=["method", "seed", "step", "key", "value"]))
    table = check_claims(empty, signals={"fcrm": ["latent_rm"]})
    assert list(table.columns)[-1] == "overlap"


def test_run_log_names_the_overlap(tmp_path, caplog):
    """A preset that makes a method train on an evaluation metric's judge still runs; the log says so
    in one line."""
    from harness.runner import run

    preset = fast_preset("eval.metrics=[distortion_rate,motion_adherence]", "probes.names=[]",
                         "methods.dpo-oracle.steps=1", "methods.dpo-oracle.eval_every=1",
                         "methods.dpo-oracle.batch_size=2", "methods.dpo-oracle.pairs.conditions=3",
                         "methods.dpo-oracle.pairs.per_condition=2")
    with caplog.at_level(logging.WARNING, logger="harness.runner"):
        run(preset, tmp_path / "run", RunOptions(methods=["dpo-oracle"], show_progress=False))
    lines = [r.getMessage() for r in caplog.records if "trains on the oracle judge" in r.getMessage()]
    assert lines == ["method dpo-oracle trains on the oracle judge, which evaluation metric(s) distortion_rate, "
                     "motion_adherence also use: their numbers for dpo-oracle are not held out (marked "
                     f"{MARK} in every table)"]
    render_report(tmp_path / "run")
    md = (tmp_path / "run" / "report" / "table.md").read_text()
    assert "dpo-oracle trained on the oracle judge (distortion_rate, motion_adherence)" in md
