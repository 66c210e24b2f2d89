"""DeepSpeed ZeRO-2: two gloo processes, each method's AdamW inside a ZeRO-2 engine (gradients
reduce-scattered, moments partitioned), train what one process trains with plain AdamW, and their
consolidated checkpoints resume on one process without DeepSpeed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dp_runs import assert_same_training, distance, lora, one_and_two, run_tiny

pytest.importorskip("deepspeed")

# Every method's rows are sharded over ranks; apo: a window of backwards accumulated per step; shift:
# per-term gradient norms measured on the way through ZeRO; fcrm: a second parameter group (log Z).
METHODS = ["sft", "apo", "shift", "fcrm"]
SETS = {"eval": {"num_videos": 2, "final_num_videos": None, "batch_size": 2, "metrics": ["motion_score"]},
        "sampler": {"num_steps": 2}, "probes": {"names": []},
        "methods": {"sft": {"batch_size": 4, "lr": 5e-4}, "apo": {"batch_size": 4, "lr": 5e-5},
                    "shift": {"batch_size": 4, "lr": 5e-4,
                              "buffer": {"prompts": 2, "rollouts_per_prompt": 2, "passes": 1}},
                    "fcrm": {"batch_size": 4, "lr": 5e-4, "conditions": 2, "group_size": 2, "offline": {"count": 8}}}}
RTOL = 1e-4  # as tests/test_train_distributed.py: float32 summation order, amplified by Adam's first steps
# The learning rates are pinned (tiny-long's) because the check is about the reduction, not the schedule:
# at the tiny preset's rates, 3x higher, FCRM's step-4 loss (on rollouts of the updated policy) moves by
# 2e-3 relative between one process and ZeRO while its weights still agree within RTOL.
ZERO_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
            "ACCELERATE_MIXED_PRECISION": "no"}


# Where each method's training step runs the model on its batch (probes are off here, so these
# calls are the training steps'): (module, function), whose second argument is the batch.
TRAINING_FORWARDS = {"apo": ("trainers.apo", "pair_errors"), "shift": ("trainers.shift", "denoising_loss"),
                     "fcrm": ("trainers.fcrm", "mc_losses")}


def _instrument(run, rank: int, out: Path) -> None:
    """Each rank runs under ZeRO-2 and records how many engines its methods built and how many rows
    of a batch its training steps ran the model on."""
    import importlib

    from harness.distributed import deepspeed_config
    from trainers.optimizer import ZeroStep

    assert deepspeed_config()["zero_optimization"]["stage"] == 2
    builds, build = [], ZeroStep._build
    ZeroStep._build = lambda self: (builds.append(1), build(self))[1]
    rows: dict[str, list[int]] = {}
    originals = {}
    for method, (module, name) in TRAINING_FORWARDS.items():
        mod = importlib.import_module(module)
        originals[method] = fn = getattr(mod, name)

        def counted(adapter, batch, *args, _method=method, _fn=fn, **kwargs):
            rows.setdefault(_method, []).append(int(batch.shape[0]))
            return _fn(adapter, batch, *args, **kwargs)

        setattr(mod, name, counted)
    from trainers.rewards import LatentRewardModelReward

    scored, score = [], LatentRewardModelReward.__call__  # FCRM's reward: offline set, then each round
    LatentRewardModelReward.__call__ = lambda self, x0, inputs: (scored.append(int(x0.shape[0])),
                                                                  score(self, x0, inputs))[1]
    rows["fcrm_reward"] = scored
    try:
        run()
    finally:
        LatentRewardModelReward.__call__ = score
        ZeroStep._build = build
        for method, (module, name) in TRAINING_FORWARDS.items():
            setattr(importlib.import_module(module), name, originals[method])
    (out / f"engines_rank{rank}").write_text(str(len(builds)))
    (out / f"rows_rank{rank}.json").write_text(json.dumps({m: sorted(set(r)) for m, r in rows.items()}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return one_and_two(tmp_path_factory.mktemp("zero"), METHODS, SETS, env=ZERO_ENV, around=_instrument)


def test_zero2_trains_what_one_process_trains(runs):
    one, zero = runs
    # One engine per method, and one more per later APO stage (each stage starts a fresh optimizer:
    # tests/test_optimizer.py restarts an engine); the tiny apo is the paper's three-stage curriculum.
    from harness.config import load_preset

    engines = len(METHODS) + len(load_preset("tiny").methods["apo"]["stages"]) - 1
    assert [int((zero / f"engines_rank{r}").read_text()) for r in (0, 1)] == [engines] * 2
    for r in (0, 1):  # each rank ran the model on its half of every batch of 4 (sft's rows: test_train_distributed)
        # FCRM scores half of its 8 offline samples and of each round's 4 rollouts (one process: 8 and 4).
        assert json.loads((zero / f"rows_rank{r}.json").read_text()) == {**{m: [2] for m in TRAINING_FORWARDS},
                                                                          "fcrm_reward": [2, 4]}
    assert_same_training(one, zero, METHODS, (2, 4), RTOL)
    from harness.store import ResultStore

    with ResultStore(one / "results.sqlite") as s1, ResultStore(zero / "results.sqlite") as s2:
        l1, l2 = s1.train_logs("one"), s2.train_logs("two")
    keys = ["loss", "grad_norm", "grad_norm/sft", "grad_norm/awr"]
    keep = lambda df: df[df["key"].isin(keys)].sort_values(["method", "step", "key"])  # noqa: E731
    assert set(keep(l1)["key"]) == set(keys)
    np.testing.assert_allclose(keep(l1)["value"].to_numpy(), keep(l2)["value"].to_numpy(), rtol=1e-4, atol=1e-6)


def test_a_zero2_checkpoint_resumes_on_one_process(runs, tmp_path):
    one, zero = runs
    resumed = tmp_path / "zero"
    shutil.copytree(zero, resumed)
    for method in METHODS:  # one process without DeepSpeed recomputes steps 3 and 4 from the ZeRO state
        shutil.rmtree(resumed / "checkpoints" / method / "seed0" / "step000004")
    run_tiny(resumed, METHODS, SETS, steps=4, resume=True, adopt=True)  # a copy of the run
    for method in METHODS:
        assert distance(lora(one, method, 4), lora(resumed, method, 4)) <= RTOL
