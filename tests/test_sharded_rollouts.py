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
from harness.models.tiny_wan import TinyWanAdapter
from trainers.base import trainer_settings

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


def _apo_batches(preset, workdir: Path):
    """One online and one half-online batch of APO (3 pairs each): this rank's pairs, and how many
    videos this rank sampled and how many pairs it ranked for each."""
    import trainers.apo as apo_module

    stages = [{"kind": "online", "steps": 1, "conditions": 4},
              {"kind": "half_online", "steps": 1, "pairs": {"conditions": 3, "per_condition": 2}}]
    cfg = apo_module.APOConfig(**{**trainer_settings(preset.methods["apo"]), "batch_size": 3, "stages": stages})
    apo = apo_module.APOTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0,
                                workdir=workdir)
    ranked, get_ranker = [], apo_module.get_ranker

    def counting(*args):
        ranker = get_ranker(*args)
        prefer = ranker.prefer
        ranker.prefer = lambda a, b, cond: (ranked.append(1), prefer(a, b, cond))[1]
        return ranker

    apo_module.get_ranker = counting
    try:
        online, n_online = _sampled_rows(lambda: apo._batch(0))
    finally:
        apo_module.get_ranker = get_ranker
    apo._pairs(1)  # the anchors' own rollouts are not the step's
    apo._advance_to(1)
    half, n_half = _sampled_rows(lambda: apo._batch(1))
    keep = ("x_w", "x_l", "n", "rows", "scale")
    return {"online": {k: getattr(online, k) for k in keep}, "half": {k: getattr(half, k) for k in keep},
            "online_captions": online.cond.captions, "sampled": [n_online, n_half], "ranked": len(ranked)}


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
        apo = _apo_batches(preset, Path(out) / f"apo{rank}")
        # Rank 1 looks in a directory of its own that stays empty: rank 0's cache decides for both.
        cache = Path(out) / ("cache" if rank == 0 else "elsewhere")
        built, n_built = _sampled_rows(lambda: _pairs(adapter, preset, cache))
        read, n_read = _sampled_rows(lambda: _pairs(adapter, preset, cache))  # now in rank 0's cache
        torch.save({"x0": x0, "n": n, "apo": apo, "built": built.chosen, "n_built": n_built,
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
        one = {"x0": _sampled_rows(lambda: _rollouts(adapter, preset)), "apo": _apo_batches(preset, out / "apo"),
               "pairs": _pairs(adapter, preset, None)}
        mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    return out, one, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_each_rank_samples_its_share_and_gets_the_one_process_batch(ranks):
    _, one, got = ranks
    x0, n_one = one["x0"]
    assert n_one == ROWS and [g["n"] for g in got] == [3, 2]
    for g in got:
        torch.testing.assert_close(g["x0"], x0, atol=ATOL, rtol=0)
    assert torch.equal(got[0]["x0"], got[1]["x0"])


def test_apo_samples_and_ranks_only_its_share_of_the_online_pairs(ranks):
    """Online: rank r samples (2 videos each) and ranks pairs r, r + 2 of 3; the kept pairs are
    re-split in even blocks. Half-online: each rank samples the policy half of its own block."""
    _, one, got = ranks
    one = one["apo"]
    assert one["sampled"] == [6, 3] and one["ranked"] == 3
    assert [g["apo"]["sampled"] for g in got] == [[4, 2], [2, 1]]
    assert [g["apo"]["ranked"] for g in got] == [2, 1]
    for stage in ("online", "half"):
        n = one[stage]["n"]
        assert n >= 2 and [g["apo"][stage]["n"] for g in got] == [n, n]  # the seeds keep some untied pairs
        assert [g["apo"][stage]["rows"] for g in got] == [slice(0, (n + 1) // 2), slice((n + 1) // 2, n)]
        assert sum(g["apo"][stage]["scale"] for g in got) == pytest.approx(2.0)
        for x in ("x_w", "x_l"):  # the tiny model's latents are its frames: equal up to one uint8 level
            joined = torch.cat([g["apo"][stage][x] for g in got])
            torch.testing.assert_close(joined, one[stage][x], atol=2 / 255 + 1e-6, rtol=0)
    assert got[0]["apo"]["online_captions"] + got[1]["apo"]["online_captions"] == one["online_captions"]


def test_pairs_are_built_in_shards_once_and_read_from_rank_0s_cache(ranks):
    out, one, got = ranks
    assert [g["n_built"] for g in got] == [3, 3]  # 3 conditions x 2 rollouts, split between the ranks
    assert [g["n_read"] for g in got] == [0, 0]  # the second call reads rank 0's file on both ranks
    for g in got:
        assert _close_frames(g["built"], one["pairs"].chosen) and np.array_equal(g["read"], g["built"])
    assert np.array_equal(got[0]["built"], got[1]["built"])  # the ranks hold the same pairs
    assert len(list((out / "cache" / "pairs").glob("*.npz"))) == 1 and not (out / "elsewhere").exists()
