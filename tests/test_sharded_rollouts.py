"""Rollouts split over ranks: two gloo processes each sample their share of an on-policy batch (FCRM's
and SHIFT's rounds, APO's online pairs, the rollout pair sets) and both get back what one process
samples; a pair cache that only rank 0 has is read by every rank instead of rebuilt."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from harness.config import load_preset
from harness.data.source import clip_batch
from harness.models.tiny_wan import TinyWanAdapter

SETS = {"sampler": {"num_steps": 2}}
ROWS = 5  # odd: the ranks get 3 and 2 rows
# A row's float32 kernels depend a little on the batch size (x0 moves by ~2e-6 between batches of 5 and
# of 3; batches of 8 and 4 agree to the bit), so shards match one process to rounding: x0 within 1e-5,
# uint8 frames within one level.
ATOL = 1e-5


def _close_frames(a, b) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def _preset():
    return load_preset("tiny", [SETS])


def _rollouts(adapter, preset):
    from trainers.fcrm_data import policy_rollouts

    samples, _ = policy_rollouts(adapter, preset.world, "prompts", 16, ROWS, 1, torch.Generator().manual_seed(3),
                                 preset.sampler)
    return samples.x0


def _pairs(adapter, preset, workdir: Path):
    from trainers.preference import PairsConfig, load_pairs

    return load_pairs(adapter, preset, PairsConfig(conditions=3, per_condition=2), workdir)


def _apo_videos(adapter, preset):
    from trainers.apo import APOTrainer

    apo = APOTrainer.__new__(APOTrainer)  # only its online-rollout helper, which reads these three
    apo.adapter, apo.preset, apo.generator = adapter, preset, torch.Generator().manual_seed(5)
    batch = clip_batch(preset, "prompts", range(3))
    return np.stack(apo._policy_videos(adapter.encode_condition(batch.first_frames, batch.captions), 3))


def _sampled_rows(fn):
    """Run ``fn`` and count the rows this process handed to the sampler."""
    import harness.sampling as sampling

    counted, inner = [], sampling.sample_latents
    sampling.sample_latents = lambda adapter, cond, seeds, cfg, progress=None: (
        counted.append(len(seeds)), inner(adapter, cond, seeds, cfg, progress))[1]
    try:
        return fn(), sum(counted)
    finally:
        sampling.sample_latents = inner


def _worker(rank: int, port: int, out: str) -> None:
    from harness.distributed import init_from_env

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    init_from_env()
    try:
        preset = _preset()
        adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
        x0, n = _sampled_rows(lambda: _rollouts(adapter, preset))
        videos, n_apo = _sampled_rows(lambda: _apo_videos(adapter, preset))
        # Rank 1 looks in a directory of its own that stays empty: rank 0's cache decides for both.
        cache = Path(out) / ("cache" if rank == 0 else "elsewhere")
        built, n_built = _sampled_rows(lambda: _pairs(adapter, preset, cache))
        read, n_read = _sampled_rows(lambda: _pairs(adapter, preset, cache))  # now in rank 0's cache
        torch.save({"x0": x0, "n": n, "videos": videos, "n_apo": n_apo, "built": built.chosen, "n_built": n_built,
                    "read": read.chosen, "n_read": n_read}, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    preset = _preset()
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the thread count changes float32 reductions, the batch does not
    try:
        one = {"x0": _sampled_rows(lambda: _rollouts(adapter, preset)), "videos": _apo_videos(adapter, preset),
               "pairs": _pairs(adapter, preset, None)}
        mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    return out, one, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_each_rank_samples_its_share_and_gets_the_one_process_batch(ranks):
    _, one, got = ranks
    x0, n_one = one["x0"]
    assert n_one == ROWS and [g["n"] for g in got] == [3, 2]
    assert [g["n_apo"] for g in got] == [2, 1]
    for g in got:
        torch.testing.assert_close(g["x0"], x0, atol=ATOL, rtol=0)
        assert _close_frames(g["videos"], one["videos"])
    assert torch.equal(got[0]["x0"], got[1]["x0"]) and np.array_equal(got[0]["videos"], got[1]["videos"])


def test_pairs_are_built_in_shards_once_and_read_from_rank_0s_cache(ranks):
    out, one, got = ranks
    assert [g["n_built"] for g in got] == [3, 3]  # 3 conditions x 2 rollouts, split between the ranks
    assert [g["n_read"] for g in got] == [0, 0]  # the second call reads rank 0's file on both ranks
    for g in got:
        assert _close_frames(g["built"], one["pairs"].chosen) and np.array_equal(g["read"], g["built"])
    assert np.array_equal(got[0]["built"], got[1]["built"])  # the ranks hold the same pairs
    assert len(list((out / "cache" / "pairs").glob("*.npz"))) == 1 and not (out / "elsewhere").exists()
