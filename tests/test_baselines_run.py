"""The baselines (flow-grpo, diffusionnft, awm) through the one outer loop on the tiny preset: a
short run trains each, logs a finite loss and its own terms, and marks the training judge."""

import math

from tiny_runs import fast_preset, run_cache  # noqa: F401  (run_cache: autouse fixture)

from harness.runner import RunOptions, run
from harness.store import ResultStore

METHODS = ["flow-grpo", "diffusionnft", "awm"]
SMALL = [f"methods.{m}.{k}={v}" for m in METHODS for k, v in
         (("conditions", 2), ("group_size", 2), ("batch_size", 2), ("train_timesteps", 2)) if
         not (m == "flow-grpo" and k == "train_timesteps")] + ["methods.flow-grpo.rollout_steps=3"]


def test_each_baseline_trains_through_the_runner(tmp_path):
    preset = fast_preset(*SMALL)
    run(preset, tmp_path / "r", RunOptions(methods=METHODS, steps=2, eval_every=2, metrics=["latent_reward"],
                                           show_progress=False))
    with ResultStore(tmp_path / "r" / "results.sqlite") as store:
        logs = store.train_logs()
        agg = store.aggregates()
    for m in METHODS:
        mine = logs[logs["method"] == m]
        assert set(mine["step"]) >= {0, 1} or set(mine["step"]) >= {1, 2}, m
        assert {"loss", "policy", "grad_norm", "reward/round_mean"} <= set(mine["key"]), m
        assert all(math.isfinite(v) for v in mine[mine["key"] == "loss"]["value"]), m
        assert (mine[mine["key"] == "grad_norm"]["value"] > 0).all(), m  # the loss reaches the LoRA
    assert set(METHODS) <= set(agg["method"])
