"""Flow-GRPO's trajectory rollouts split over ranks: two gloo processes each sample their share of the
rows (rank r: rows r, r + 2, ...) and both get back the trajectories one process samples."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from harness.config import load_preset
from harness.models.tiny_wan import TinyWanAdapter
from harness.sampling import SamplerConfig, sigma_schedule
from trainers.flow_sde import sde_trajectories_sharded

SEEDS = [11, 12, 13, 14, 15]  # odd: the ranks get 3 and 2 rows
ATOL = 1e-5  # a row's float32 kernels depend a little on the batch size (tests/test_sharded_rollouts.py)


def _trajectories() -> dict[str, torch.Tensor]:
    adapter = TinyWanAdapter.load(load_preset("tiny").base_checkpoint_path())
    def cond_for(rows):
        return adapter.encode_condition(torch.zeros(len(rows), 3, 16, 16), [f"caption {i}" for i in rows])

    x0, traj = sde_trajectories_sharded(adapter, cond_for, SEEDS, sigma_schedule(SamplerConfig(num_steps=3)), 0.7,
                                        0.98, range(3))
    return {"x0": x0, **traj.state()}


def _worker(rank: int, port: int, out: str) -> None:
    from harness.distributed import init_from_env

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    init_from_env()
    try:
        torch.save(_trajectories(), Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_each_rank_samples_its_share_and_gets_the_one_process_trajectories(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _trajectories()
        mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert one["logp"].shape == (5, 2)  # 3 steps, the last one (onto sigma = 0) without noise
    for g in got:
        for k in ("x0", "x", "x_next"):
            torch.testing.assert_close(g[k], one[k], atol=ATOL, rtol=0)
        torch.testing.assert_close(g["logp"], one["logp"], atol=1e-3, rtol=0)
        assert torch.equal(g["sigma"], one["sigma"])
    assert all(torch.equal(got[0][k], got[1][k]) for k in got[0])
