"""DeepSpeed ZeRO-2: two gloo processes, each method's AdamW inside a ZeRO-2 engine (gradients
reduce-scattered, moments partitioned), train what one process trains with plain AdamW, and their
consolidated checkpoints resume on one process without DeepSpeed."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from safetensors.torch import load_file

pytest.importorskip("deepspeed")

# sft: rows sharded over ranks; apo: a window of backwards accumulated per step; shift: per-term
# gradient norms measured on the way through ZeRO.
METHODS = ["sft", "apo", "shift"]
SETS = {"eval": {"num_videos": 2, "batch_size": 2, "metrics": ["motion_score"]},
        "sampler": {"num_steps": 2}, "probes": {"names": []},
        "methods": {"sft": {"batch_size": 4}, "apo": {"batch_size": 4}, "shift": {"batch_size": 4}}}
RTOL = 1e-4  # as tests/test_train_distributed.py: float32 summation order, amplified by Adam's first steps
ZERO_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
            "ACCELERATE_MIXED_PRECISION": "no"}


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

    from harness.distributed import deepspeed_config, init_from_env

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), HARNESS_CACHE=cache, **ZERO_ENV)
    assert init_from_env().world_size == world
    assert deepspeed_config()["zero_optimization"]["stage"] == 2
    from trainers.optimiser import ZeroStep

    builds, build = [], ZeroStep._build  # count the engines built, to know the steps went through them
    ZeroStep._build = lambda self: (builds.append(1), build(self))[1]
    try:
        _run(out, steps=4)
    finally:
        ZeroStep._build = build
        torch.distributed.destroy_process_group()
    (Path(out) / f"engines_rank{rank}").write_text(str(len(builds)))


def _lora(run: Path, method: str, step: int) -> dict:
    return load_file(run / "checkpoints" / method / "seed0" / f"step{step:06d}" / "lora.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("zero")
    cache = str(Path(os.environ.get("HARNESS_CACHE") or root / "cache"))
    os.environ["HARNESS_CACHE"] = cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(str(root / "one"), steps=4)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_worker, args=(2, port, str(root / "zero"), cache), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    return root / "one", root / "zero"


def test_zero2_trains_what_one_process_trains(runs):
    one, zero = runs
    # One engine per method (the tiny apo has one stage; tests/test_optimiser.py restarts an engine).
    assert [int((zero / f"engines_rank{r}").read_text()) for r in (0, 1)] == [len(METHODS)] * 2
    for method in METHODS:
        for step in (2, 4):
            a, b = _lora(one, method, step), _lora(zero, method, step)
            assert a.keys() == b.keys()
            dist = _distance(a, b)
            print(f"{method} step {step}: relative distance {dist:.2e}")
            assert dist <= RTOL, f"{method} step {step}: LoRA differs by {dist:.2e} (relative)"
            lora_b = {k: v for k, v in b.items() if "lora_B" in k}
            assert _distance(lora_b, {k: 0 * v for k, v in lora_b.items()}) == 1.0  # lora_B left zero: trained
    from harness.store import ResultStore

    with ResultStore(one / "results.sqlite") as s1, ResultStore(zero / "results.sqlite") as s2:
        l1, l2 = s1.train_logs("one"), s2.train_logs("zero")
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
    _run(str(resumed), steps=4, resume=True)
    for method in METHODS:
        assert _distance(_lora(one, method, 4), _lora(resumed, method, 4)) <= RTOL
