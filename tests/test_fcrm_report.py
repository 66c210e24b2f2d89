"""The FCRM Table-3 view and its ordering checks, on a hand-made results table."""

import pandas as pd

from reports.fcrm import fcrm_checks, fcrm_markdown, fcrm_table, variant_label

# As a run records them: each method's settings with its preset section's label (harness/runner.py method_record)
CONFIGS = {"fcrm": {"reward": {"name": "latent_rm"}, "label": "FCRM (default: EMA + offline)"},
           "fcrm-replay-neg": {"trainer": "fcrm", "label": "Replay: negative-only"},
           "fcrm-replay-pos": {"trainer": "fcrm", "label": "Replay: positive-only"},
           "fcrm-replay-all": {"trainer": "fcrm", "label": "Replay: unfiltered"}, "dpo": {}}


def _agg():
    rows = []
    for method, step, lr, dist in [("base", 0, 0.40, 0.5), ("fcrm", 40, 0.45, 0.4), ("fcrm", 80, 0.50, 0.3),
                                   ("fcrm-replay-neg", 80, 0.30, 0.7), ("fcrm-replay-pos", 80, 0.48, 0.4),
                                   ("fcrm-replay-all", 80, 0.41, 0.4), ("dpo", 80, 0.9, 0.1)]:
        rows += [{"run_id": "r", "method": method, "seed": 0, "step": step, "metric": "latent_reward[model=x]",
                  "value": lr, "n": 4, "ci_low": None, "ci_high": None},
                 {"run_id": "r", "method": method, "seed": 0, "step": step, "metric": "distortion_rate[judge=oracle]",
                  "value": dist, "n": 4, "ci_low": None, "ci_high": None}]
    return pd.DataFrame(rows)


def _records():
    rows = []
    for method, step, values in [("base", 0, [0.4, 0.4, 0.4, 0.4]), ("fcrm", 80, [0.5, 0.6, 0.4, 0.5]),
                                 ("fcrm-replay-neg", 80, [0.3, 0.3, 0.3, 0.3]),
                                 ("fcrm-replay-pos", 80, [0.48] * 4), ("fcrm-replay-all", 80, [0.41, 0.41, 0.4, 0.42])]:
        rows += [{"method": method, "seed": 0, "step": step, "metric": "latent_reward[model=x]",
                  "video_id": f"v{i}", "value": v} for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_table_rows_final_checkpoints_and_paired_change():
    t = fcrm_table(_agg(), CONFIGS, records=_records()).set_index("row")
    assert list(t.index) == ["base@0", "fcrm", "fcrm-replay-neg", "fcrm-replay-pos", "fcrm-replay-all"]  # no dpo
    assert t.loc["fcrm", "step"] == 80 and t.loc["fcrm", "Latent Reward"] == 0.5
    # per-video changes 0.1, 0.2, 0.0, 0.1: mean 0.1, std 0.0816, se 0.0408
    assert abs(t.loc["fcrm", "delta"] - 0.1) < 1e-9 and abs(t.loc["fcrm", "delta_se"] - 0.0408) < 1e-3


def test_checks_name_the_verdict_and_flag_noise():
    checks = {c[0]: c for c in fcrm_checks(fcrm_table(_agg(), CONFIGS, records=_records()))}
    assert checks["FCRM raises the latent reward over the base model"][1] == "holds"
    assert checks["negative-only replay is the worst replay variant"][1] == "holds"
    assert "hybrid EMA + offline beats fully on-policy" not in checks  # that variant did not run
    md = fcrm_markdown(fcrm_table(_agg(), CONFIGS, records=_records()), list(checks.values()))
    assert "Replay: negative-only" in md and "+0.100 ± 0.041" in md
    noisy = _agg()
    noisy.loc[(noisy["method"] == "fcrm-replay-neg") & noisy["metric"].str.startswith("latent"), "value"] = 0.405
    recs = _records()
    recs.loc[recs["method"] == "fcrm-replay-neg", "value"] = [0.1, 0.7, 0.2, 0.62]
    verdict = {c[0]: c[1] for c in fcrm_checks(fcrm_table(noisy, CONFIGS, records=recs))}
    assert verdict["negative-only replay is the worst replay variant"] == "holds (within noise)"


def test_unlabelled_variants_are_labelled_by_their_settings():
    configs = {"fcrm": {"behaviour": "ema", "reward": {"name": "latent_rm"}, "label": "FCRM (default: EMA + offline)"},
               "fcrm-mine": {"trainer": "fcrm", "behaviour": "none", "reward": {"name": "latent_rm", "scale": 2}},
               "fcrm-offline": {"trainer": "fcrm", "behaviour": "none", "label": "Data: fully offline"}}
    assert variant_label("fcrm-mine", configs) == "fcrm-mine (behaviour=none, reward.scale=2)"
    assert variant_label("fcrm-offline", configs) == "Data: fully offline"  # the label its preset section gives
    assert variant_label("fcrm", configs) == "FCRM (default: EMA + offline)"


def test_a_run_records_each_methods_own_label_which_a_variant_does_not_inherit():
    from harness.config import load_preset
    from harness.runner import RunOptions, method_plan, method_record

    preset = load_preset("tiny", [{"methods": {"fcrm-mine": {"trainer": "fcrm", "kl_coef": 0.1}}}])
    records = {m: method_record(preset, m, *method_plan(preset, m, RunOptions([m])))
               for m in ("fcrm", "fcrm-offline", "fcrm-mine", "sft")}
    assert records["fcrm"]["label"] == "FCRM (default: EMA + offline)"
    assert records["fcrm-offline"]["label"] == "Data: fully offline"
    assert "label" not in records["fcrm-mine"] and "label" not in records["sft"]
    assert variant_label("fcrm-mine", records) == "fcrm-mine (kl_coef=0.1)"
    assert (records["fcrm"]["steps"], records["fcrm"]["eval_every"]) == (24, 6)  # the schedule, in the same mapping
