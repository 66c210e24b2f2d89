"""Scaffolding shared by the data-parallel tests: the tiny preset trained by one process, and by
two gloo processes started the way a launcher starts them (environment variables, then
``init_from_env``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file


def distance(a: dict, b: dict) -> float:
    """Relative Frobenius distance of two LoRA state dicts."""
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    return float(diff.norm() / torch.cat([a[k].flatten() for k in a]).norm())


def assert_same_training(one: Path, two: Path, methods: list[str], steps: tuple[int, ...], rtol: float) -> None:
    """Every method's LoRA at each step within ``rtol`` (relative) of the one-process LoRA, and trained:
    the second run's lora_B moved away from its zero initialisation."""
    for method in methods:
        for step in steps:
            a, b = lora(one, method, step), lora(two, method, step)
            assert a.keys() == b.keys()
            dist = distance(a, b)
            print(f"{method} step {step}: relative distance {dist:.2e}")
            assert dist <= rtol, f"{method} step {step}: LoRA differs by {dist:.2e} (relative)"
            lora_b = {k: v for k, v in b.items() if "lora_B" in k}
            assert distance(lora_b, {k: 0 * v for k, v in lora_b.items()}) == 1.0  # lora_B left zero: trained


def lora(run: Path, method: str, step: int) -> dict:
    return load_file(run / "checkpoints" / method / "seed0" / f"step{step:06d}" / "lora.safetensors")


def run_tiny(out: str | Path, methods: list[str], sets: dict, steps: int, resume: bool = False,
             adopt: bool = False) -> None:
    from harness.config import load_preset
    from harness.runner import RunOptions, run

    run(load_preset("tiny", [sets]), Path(out),
        RunOptions(methods, [0], steps=steps, eval_every=2, resume=resume, show_progress=False, adopt=adopt))


def _worker(rank: int, world: int, port: int, out: str, cache: str, methods: list[str], sets: dict, steps: int,
            env: dict[str, str], around: Callable | None) -> None:
    from harness.distributed import init_from_env

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), HARNESS_CACHE=cache, **env)
    assert init_from_env().world_size == world
    try:
        if around is None:
            run_tiny(out, methods, sets, steps)
        else:  # a test's own checks around the run (module-level, so that spawn can pickle it)
            around(lambda: run_tiny(out, methods, sets, steps), rank, Path(out))
    finally:
        torch.distributed.destroy_process_group()


def one_and_two(root: Path, methods: list[str], sets: dict, steps: int = 4, env: dict[str, str] | None = None,
                around: Callable | None = None) -> tuple[Path, Path]:
    """``root/one``: one process; ``root/two``: two processes (with ``env`` set in each)."""
    cache = str(Path(os.environ.get("HARNESS_CACHE") or root / "cache"))
    os.environ["HARNESS_CACHE"] = cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_tiny(root / "one", methods, sets, steps)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_worker, args=(2, port, str(root / "two"), cache, methods, sets, steps, env or {}, around),
                 nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    return root / "one", root / "two"
