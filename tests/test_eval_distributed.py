"""Sharded evaluation: two processes (gloo) store exactly the single-process aggregates and records."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import torch.multiprocessing as mp

METRICS = ["subject_consistency", "i2v_subject", "motion_score", "fvd"]


def _videos():
    from harness.config import load_preset
    from harness.data.batches import split_batch
    from harness.data.world import WorldCondition
    from metrics import VideoSample

    preset = load_preset("tiny")
    clips = split_batch(preset.world, "eval", range(7))  # odd count: uneven shards
    return preset, [VideoSample(f"v{i}", clips.frames[i], preset.world.fps, first_frame=clips.frames[i, 0],
                                condition=WorldCondition(clips.specs[i], preset.world)) for i in range(7)]


def _score(db: Path) -> None:
    from harness.evaluate import Evaluator
    from harness.store import ResultStore

    preset, videos = _videos()
    with ResultStore(db) as store:
        store.add_run("r", "tiny", {}, [0], {})
        ckpt = store.checkpoint("r", "m", 0, 0, "x", {})
        Evaluator(preset, METRICS).score(store, ckpt, videos, show_progress=False)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _score(Path(out) / f"rank{rank}.sqlite")
    finally:
        dist.destroy_process_group()


def _tables(db: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from harness.store import ResultStore

    with ResultStore(db) as store:
        agg = store.aggregates()[["metric", "value", "n", "ci_low", "ci_high"]].sort_values("metric")
        rec = store.records()[["metric", "video_id", "value"]].sort_values(["metric", "video_id"])
    return agg.reset_index(drop=True), rec.reset_index(drop=True)


def test_two_processes_store_the_single_process_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    _score(tmp_path / "single.sqlite")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    single, sharded = _tables(tmp_path / "single.sqlite"), _tables(tmp_path / "rank0.sqlite")
    assert {m.split("[")[0] for m in single[0]["metric"]} >= set(METRICS)
    pd.testing.assert_frame_equal(single[0], sharded[0])  # aggregates and bootstrap CIs, to the last bit
    pd.testing.assert_frame_equal(single[1], sharded[1])  # per-video records
    assert np.isfinite(single[0]["value"]).all()
    _, rank1_records = _tables(tmp_path / "rank1.sqlite")
    assert rank1_records.empty  # only rank 0 writes
