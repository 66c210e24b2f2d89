"""Data-parallel training: two gloo processes train what one process trains on the same global
batch, store the single-process evaluation records, and leave checkpoints a one-process run resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dp_runs import assert_same_training, distance, lora, one_and_two, run_tiny

METHODS = ["sft", "dpo"]
SETS = {"eval": {"num_videos": 6, "final_num_videos": None,
                 "batch_size": 2, "metrics": ["motion_score", "subject_consistency"]},
        "sampler": {"num_steps": 4}, "probes": {"names": ["likelihood_displacement"], "pairs": 4, "draws": 1},
        "methods": {"sft": {"batch_size": 4}, "dpo": {"batch_size": 4, "pairs": {"conditions": 8}}}}
# The gradients of one global batch, summed in another order, differ by float32 rounding; Adam's
# first steps divide by sqrt(v) and so amplify it where a gradient is near zero. The adapters must
# agree to a relative Frobenius distance of 1e-4; they do to ~2e-6. A run that skips the gradient
# average is off by 1.6e-2 after two SFT steps (checked by disabling it).
RTOL = 1e-4


def _records(run: Path, method: str) -> pd.DataFrame:
    from harness.store import ResultStore

    with ResultStore(run / "results.sqlite") as store:
        rec, ckpts = store.records(), store.checkpoints()
    ids = ckpts[ckpts["method"] == method]["checkpoint_id"]
    rec = rec[rec["checkpoint_id"].isin(ids)]
    return rec[["metric", "video_id", "value"]].sort_values(["metric", "video_id"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return one_and_two(tmp_path_factory.mktemp("ddp"), METHODS, SETS)


def test_two_processes_train_what_one_process_trains(runs):
    one, two = runs
    assert_same_training(one, two, METHODS, (2, 4), RTOL)
    from harness.store import ResultStore

    with ResultStore(one / "results.sqlite") as s1, ResultStore(two / "results.sqlite") as s2:
        l1, l2 = s1.train_logs("one"), s2.train_logs("two")
    for logs in (l1, l2):
        assert {"loss", "grad_norm"} <= set(logs["key"])
    keep = lambda df: df[df["key"].isin(["loss", "grad_norm"])].sort_values(["method", "step", "key"])  # noqa: E731
    np.testing.assert_allclose(keep(l1)["value"].to_numpy(), keep(l2)["value"].to_numpy(), rtol=1e-5, atol=1e-6)
    # Compute: each rank counts the passes on its rows, summed over ranks: exactly one process's count.
    counts = lambda df: df[df["key"].str.startswith("compute/")].sort_values(["method", "step", "key"])  # noqa: E731
    assert len(counts(l1)) > 0
    np.testing.assert_array_equal(counts(l1)["value"].to_numpy(), counts(l2)["value"].to_numpy())


def test_sharded_evaluation_stores_the_single_process_records(runs):
    one, two = runs
    base1, base2 = _records(one, "base"), _records(two, "base")
    assert len(base1) == 2 * 6 and np.isfinite(base1["value"]).all()
    pd.testing.assert_frame_equal(base1, base2)  # the same model, sampled and scored in shards: to the bit
    for method in METHODS:  # every checkpoint was evaluated and stored once, by rank 0
        assert len(_records(two, method)) == 2 * len(_records(one, method)) // 2
    assert not (two / "cache" / "rank1" / "results.sqlite").exists()


def test_a_two_process_checkpoint_resumes_on_one_process(runs, tmp_path):
    import shutil

    one, two = runs
    resumed = tmp_path / "two"
    shutil.copytree(two, resumed)
    for method in METHODS:  # drop the last checkpoint: one process recomputes steps 3 and 4 from step 2
        shutil.rmtree(resumed / "checkpoints" / method / "seed0" / "step000004")
    run_tiny(resumed, METHODS, SETS, steps=4, resume=True, adopt=True)  # a copy of the run
    for method in METHODS:
        assert distance(lora(one, method, 4), lora(resumed, method, 4)) <= RTOL
