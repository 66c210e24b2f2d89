"""The same learning-rate sweep for every method (issue 25; harness/tuning.py, docs/tuning.md): its grid, its
criterion (the method's own training-side judge, never an evaluation metric), held-out validation clips,
resume, divergence, the recorded sweep in the preset and the claims report's budget statement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from harness.config import ConfigError, TuningConfig, load_preset
from harness.runner import RunOptions, method_plan
from harness.tuning import TuningError, criterion, grid, merge_record, tune, validation_problems
from metrics.registry import list_metrics
from reports.budget import compute_summary, tuning_summary
from trainers.base import Draw


def _plans(preset, methods, steps=None):
    opts = RunOptions(methods=methods, seeds=[0], steps=steps)
    return {m: method_plan(preset, m, opts) for m in methods}


def test_grid_centres_on_the_preset_lr():
    assert grid(1.5e-3, TuningConfig()) == [5e-4, 1.5e-3, 4.5e-3]
    assert grid(1e-4, TuningConfig(points=4, ratio=2)) == pytest.approx([3.536e-5, 7.071e-5, 1.414e-4, 2.828e-4])


def test_every_method_is_chosen_by_its_own_training_judge_never_an_evaluation_metric():
    preset = load_preset("tiny")
    methods = [m for m, s in preset.methods.items() if not s.get("trainer")]
    roles = {s.name: s for s in list_metrics()}
    tuning = preset.tuning or TuningConfig()
    for method, (cfg, _) in _plans(preset, methods).items():
        crit = criterion(cfg, tuning)
        assert crit.split != "eval", method
        assert set(crit.judges) == set(cfg.training_signals()), method
        for name in crit.metrics:  # a judge the method trains on, scored by its training-judge metric
            assert roles[name].role == "training-judge", (method, name)
            assert roles[name].judge in cfg.training_signals(), (method, name)
    sft, _ = _plans(preset, ["sft"])["sft"]
    assert criterion(sft, tuning).metrics == () and criterion(sft, tuning).split == "finetune"
    shift, _ = _plans(preset, ["shift"])["shift"]
    assert criterion(shift, tuning).metrics == ("imr_reward", "lmr_reward")


def test_a_method_trained_on_the_oracle_has_no_training_judge_metric_to_tune_on():
    preset = load_preset("tiny")
    cfg, _ = _plans(preset, ["dpo-oracle"])["dpo-oracle"]
    with pytest.raises(TuningError, match="'oracle' judge, which has 0 training-judge metrics"):
        criterion(cfg, TuningConfig())


def test_clip_walks_overlap_only_where_the_seeds_walk():
    walk = Draw("sft walk", "finetune", 0, None, walk=8)
    assert walk.ranges([0, 2], 100) == [(0, 800), (2_000_000, 2_000_800)]
    assert walk.overlaps("finetune", 700, 900, [0], 100)
    assert not walk.overlaps("finetune", 500_000, 500_064, [0, 1, 2], 100)
    assert walk.overlaps("finetune", 500_000, 500_064)  # seeds unknown: the whole split
    assert not walk.overlaps("prompts", 0, 10)


def test_the_validation_clips_are_held_out_from_every_methods_training():
    preset = load_preset("tiny")
    methods = [m for m, s in preset.methods.items() if not s.get("trainer")]
    assert validation_problems(_plans(preset, methods), preset.tuning or TuningConfig()) == []
    # Moved onto the pairs' conditions (prompts 0..95) or SFT's first clips: refused, naming the draw and the fix.
    problems = validation_problems(_plans(preset, ["dpo", "sft"]), TuningConfig(start=0))
    assert any("dpo" in p and "methods.dpo.pairs" in p and "tuning.start" in p for p in problems)
    assert any("sft" in p and "finetune clips 0..63" in p for p in problems)
    with pytest.raises(TuningError, match="not held out"):
        tune(load_preset("tiny", [{"tuning": {"start": 0}}]), ["dpo"], Path("/nonexistent"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep of sft (denoising-loss criterion) and flow-grpo (latent-reward judge) at 1 step, 4 videos."""
    out = tmp_path_factory.mktemp("tune")
    preset = load_preset("tiny", [{"tuning": {"videos": 4}, "sampler": {"num_steps": 4},
                                   "methods": {"flow-grpo": {"conditions": 2, "batch_size": 8}}}])
    return preset, out, tune(preset, ["sft", "flow-grpo"], out, show_progress=False, steps=1)


def test_a_sweep_records_every_candidate_and_chooses_the_best(swept):
    preset, out, record = swept
    assert record["settings"]["points"] == 3 and record["preset"] == "tiny"
    for method, center in (("sft", 1.5e-3), ("flow-grpo", 1.5e-3)):
        entry = record["methods"][method]
        assert [c["lr"] for c in entry["candidates"]] == [5e-4, 1.5e-3, 4.5e-3]
        assert entry["center"] == center and entry["steps"] == 1
        scores = [c["score"] for c in entry["candidates"]]
        assert all(math.isfinite(s) for s in scores)
        best = (max if entry["higher_is_better"] else min)(scores)
        assert entry["chosen"] == entry["candidates"][scores.index(best)]["lr"]
        assert len({round(s, 12) for s in scores}) == 3  # the learning rate changed what was scored
        for c in entry["candidates"]:
            assert (out / method / f"lr={c['lr']:g}.json").is_file()
    assert record["methods"]["sft"]["higher_is_better"] is False  # a loss
    assert "latent_reward" in record["methods"]["flow-grpo"]["criterion"]
    assert json.loads((out / "tuning.json").read_text()) == record


def test_a_resumed_sweep_trains_nothing_again(swept, monkeypatch):
    import harness.tuning as tuning

    preset, out, record = swept

    def no_training(*args, **kwargs):
        raise AssertionError("a finished candidate was trained again")

    monkeypatch.setattr(tuning, "_train", no_training)
    assert tune(preset, ["sft", "flow-grpo"], out, show_progress=False, steps=1)["methods"] == record["methods"]
    # What training and the validation score never read (the eval set and metrics, probes, the checkpoint
    # schedule) reuses the candidates.
    evaluated_otherwise = load_preset("tiny", [
        {"tuning": {"videos": 4}, "sampler": {"num_steps": 4}, "eval": {"num_videos": 7, "metrics": ["fvd"]},
         "probes": {"every": 3},
         "methods": {"flow-grpo": {"conditions": 2, "batch_size": 8}, "sft": {"eval_every": 1}}}])
    assert tune(evaluated_otherwise, ["sft", "flow-grpo"], out, show_progress=False, steps=1)["methods"] == \
        record["methods"]
    # Another setting (more validation videos) is another candidate: computed again, not reused.
    other = load_preset("tiny", [{"tuning": {"videos": 5}, "sampler": {"num_steps": 4}}])
    with pytest.raises(AssertionError, match="trained again"):
        tune(other, ["sft"], out, show_progress=False, steps=1)


def test_a_diverged_candidate_is_recorded_and_never_chosen(tmp_path, monkeypatch):
    import harness.tuning as tuning

    real = tuning._train

    def diverge_at_high_lr(preset, method, cfg, schedule, seed, cache, show_progress):
        trainer, seconds, why = real(preset, method, cfg, schedule, seed, cache, show_progress)
        return trainer, seconds, ("non-finite {'loss': nan} at step 0" if cfg.lr > 2e-3 else why)

    monkeypatch.setattr(tuning, "_train", diverge_at_high_lr)
    preset = load_preset("tiny", [{"tuning": {"videos": 4}}])
    entry = tune(preset, ["sft"], tmp_path, show_progress=False, steps=1)["methods"]["sft"]
    assert entry["candidates"][2]["diverged"].startswith("non-finite") and entry["candidates"][2]["score"] is None
    assert entry["chosen"] in (5e-4, 1.5e-3)


def test_the_tiny_presets_learning_rates_are_the_recorded_sweeps_choices():
    preset = load_preset("tiny")
    results = preset.tuning.results
    assert results["settings"] == preset.tuning.model_dump(mode="json", exclude={"record", "results"})
    methods = [m for m, s in preset.methods.items() if not s.get("trainer")]
    assert sorted(results["methods"]) == sorted(methods)
    for method, (cfg, schedule) in _plans(preset, methods).items():
        entry = results["methods"][method]
        assert cfg.lr == entry["chosen"], method
        assert entry["steps"] == schedule.steps, method  # swept at the schedule the preset trains
        assert [c["lr"] for c in entry["candidates"]] == grid(entry["center"], preset.tuning)
        assert "tiny" in preset.record()["tuning"]["record"]


def test_a_missing_or_broken_tuning_record_is_named(tmp_path):
    (tmp_path / "p.yaml").write_text("extends: tiny\nname: p\ntuning: {record: p.tuning.json}\n")
    with pytest.raises(ConfigError, match=r"tuning.record .*p.tuning.json does not exist; run `harness tune --record`"):
        load_preset(str(tmp_path / "p.yaml"))
    (tmp_path / "p.tuning.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not readable JSON"):
        load_preset(str(tmp_path / "p.yaml"))


def test_merging_a_partial_sweep_keeps_the_other_methods_but_not_other_settings():
    old = {"settings": {"points": 3}, "methods": {"sft": {"chosen": 1}, "dpo": {"chosen": 2}}}
    new = {"settings": {"points": 3}, "methods": {"dpo": {"chosen": 3}}}
    assert merge_record(old, new)["methods"] == {"sft": {"chosen": 1}, "dpo": {"chosen": 3}}
    with pytest.raises(TuningError, match="budgets would differ"):
        merge_record(old, {"settings": {"points": 5}, "methods": {}})


def test_the_claims_report_states_the_tuning_and_compute_budgets():
    grid3 = [{"lr": 5e-4}, {"lr": 1.5e-3}, {"lr": 4.5e-3}]
    results = {"settings": {"points": 3, "ratio": 3.0, "seed": 0, "videos": 64, "start": 500000},
               "methods": {"sft": {"chosen": 1.5e-3, "candidates": grid3},
                           "fcrm": {"chosen": 5e-4, "candidates": grid3}}}
    matched, text = tuning_summary(results, {"sft": {"lr": 1.5e-3}, "fcrm-offline": {"lr": 5e-4, "trainer": "fcrm"}})
    assert matched and text.startswith("Tuning: matched budget") and "3 learning rates" in text
    assert "edge of the grid, so a better rate may lie beyond it: fcrm (lowest)." in text
    matched, text = tuning_summary(results, {"sft": {"lr": 5e-4}, "dpo": {"lr": 1e-4}})
    assert not matched and "sft (lr 0.0005, the sweep chose 0.0015)" in text and "dpo (not swept)" in text
    matched, text = tuning_summary(None, {"sft": {"lr": 5e-4}})
    assert not matched and "not at a matched tuning budget" in text
    logs = pd.DataFrame({"method": ["a", "a", "b", "b"], "seed": [0, 1, 0, 0], "step": [10, 10, 5, 10],
                         "key": ["compute/passes"] * 4, "value": [100.0, 300.0, 50.0, 400.0]})
    text = compute_summary(logs)
    assert "a 200, b 400" in text and "2.00x" in text
    assert compute_summary(pd.DataFrame()) == ""


def test_the_rendered_claims_section_carries_the_budget_paragraphs():
    from reports.claims import claims_markdown

    table = pd.DataFrame([{"paper": "P", "claim": "c", "evidence": "e", "verdict": "holds", "overlap": ""}])
    text = claims_markdown(table, "tiny", "Tuning: matched budget. x\n\nCompute: y")
    assert text.index("Tuning: matched") < text.index("Compute: y") < text.index("Headline claims")


def test_recording_a_sweep_around_an_adopted_choice_is_refused(tmp_path):
    """Re-running --record on a preset whose lr is already the sweep's choice would centre a second grid on
    it (a bigger budget for that method): refused before any training."""
    from typer.testing import CliRunner

    from harness.cli import app

    result = CliRunner().invoke(app, ["tune", "--methods", "fcrm", "--record", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "methods.fcrm.lr (0.0045) is the recorded sweep's choice, not its centre (0.0015)" in result.output
    assert not list(tmp_path.iterdir())


def test_a_training_step_that_fails_names_the_candidate_and_keeps_the_finished_ones(tmp_path, monkeypatch):
    import harness.tuning as tuning
    from trainers.sft import SFTTrainer

    preset = load_preset("tiny", [{"tuning": {"videos": 4}}])
    tune(preset, ["sft"], tmp_path, show_progress=False, steps=1)
    finished = sorted(p.name for p in (tmp_path / "sft").iterdir())

    def dry(self, step):
        raise ValueError("split 'finetune' ran dry")

    monkeypatch.setattr(SFTTrainer, "counted_step", dry)
    with pytest.raises(tuning.TuningError, match=r"sft lr=0.0005 stopped at step 0: split 'finetune' ran dry; "
                                                 "the finished candidates are kept"):
        tune(load_preset("tiny", [{"tuning": {"videos": 5}}]), ["sft"], tmp_path, show_progress=False, steps=1)
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == finished
