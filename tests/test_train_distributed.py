"""Data-parallel training: two gloo processes train what one process trains on the same global
batch, store the single-process evaluation records, and leave checkpoints a one-process run resumes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.multiprocessing as mp
from safetensors.torch import load_file

METHODS = ["sft", "dpo"]
SETS = {"eval": {"num_videos": 6, "batch_size": 2, "metrics": ["motion_score", "subject_consistency"]},
        "sampler": {"num_steps": 4}, "probes": {"names": ["likelihood_displacement"], "pairs": 4, "draws": 1},
        "methods": {"sft": {"batch_size": 4}, "dpo": {"batch_size": 4, "pairs": {"conditions": 8}}}}
# The gradients of one global batch, summed in another order, differ by float32 rounding; Adam's
# first steps divide by sqrt(v) and so amplify it where a gradient is near zero. The adapters must
# agree to a relative Frobenius distance of 1e-4; they do to ~2e-6. A run that skips the gradient
# average is off by 1.6e-2 after two SFT steps (checked by disabling it).
RTOL = 1e-4


def _distance(a: dict, b: dict) -> float:
    import torch

    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    return float(diff.norm() / torch.cat([a[k].flatten() for k in a]).norm())


def _run(out: str, steps: int, resume: bool = False) -> None:
    from harness.config import load_preset
    from harness.runner import RunOptions, run

    run(load_preset("tiny", [SETS]), Path(out),
        RunOptions(METHODS, [0], steps=steps, eval_every=2, resume=resume, show_progress=False))


def _worker(rank: int, world: int, port: int, out: str, cache: str) -> None:
    import torch

    from harness.distributed import init_from_env

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), HARNESS_CACHE=cache)
    assert init_from_env().world_size == world
    try:
        _run(out, steps=4)
    finally:
        torch.distributed.destroy_process_group()


def _records(run: Path, method: str) -> pd.DataFrame:
    from harness.store import ResultStore

    with ResultStore(run / "results.sqlite") as store:
        rec, ckpts = store.records(), store.checkpoints()
    ids = ckpts[ckpts["method"] == method]["checkpoint_id"]
    rec = rec[rec["checkpoint_id"].isin(ids)]
    return rec[["metric", "video_id", "value"]].sort_values(["metric", "video_id"]).reset_index(drop=True)


def _lora(run: Path, method: str, step: int) -> dict:
    return load_file(run / "checkpoints" / method / "seed0" / f"step{step:06d}" / "lora.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("ddp")
    cache = str(Path(os.environ.get("HARNESS_CACHE") or root / "cache"))
    os.environ["HARNESS_CACHE"] = cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(str(root / "one"), steps=4)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_worker, args=(2, port, str(root / "two"), cache), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    return root / "one", root / "two"


def test_two_processes_train_what_one_process_trains(runs):
    one, two = runs
    for method in METHODS:
        for step in (2, 4):
            a, b = _lora(one, method, step), _lora(two, method, step)
            assert a.keys() == b.keys()
            dist = _distance(a, b)
            print(f"{method} step {step}: relative distance {dist:.2e}")
            assert dist <= RTOL, f"{method} step {step}: LoRA differs by {dist:.2e} (relative)"
            b_moved = {k: v for k, v in a.items() if "lora_B" in k}
            assert _distance(b_moved, {k: 0 * v for k, v in b_moved.items()}) == 1.0  # lora_B left zero: trained
    from harness.store import ResultStore

    with ResultStore(one / "results.sqlite") as s1, ResultStore(two / "results.sqlite") as s2:
        l1, l2 = s1.train_logs("one"), s2.train_logs("two")
    for logs in (l1, l2):
        assert {"loss", "grad_norm"} <= set(logs["key"])
    keep = lambda df: df[df["key"].isin(["loss", "grad_norm"])].sort_values(["method", "step", "key"])  # noqa: E731
    np.testing.assert_allclose(keep(l1)["value"].to_numpy(), keep(l2)["value"].to_numpy(), rtol=1e-5, atol=1e-6)


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
    _run(str(resumed), steps=4, resume=True)
    for method in METHODS:
        assert _distance(_lora(one, method, 4), _lora(resumed, method, 4)) <= RTOL
