"""What every benchmark script shares: the timing rule and how a result is recorded."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from harness.provenance import provenance


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_record(out: Path, benchmark: str, preset: str, results: dict, **extra: object) -> None:
    """Write the figures with their provenance (commit, versions, hardware, when: the same host
    has sampled a video in 0.111 to 0.19 s on different days) and print them."""
    recorded = datetime.now(UTC).isoformat(timespec="seconds")
    record = {"benchmark": benchmark, "preset": preset, **extra, "results": results, **provenance(),
              "recorded": recorded}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(results, indent=2))


def host_seconds_per_video(preset_name: str = "tiny", repeats: int = 3) -> float:
    """This host's speed right now: seconds per video the tiny base model samples with the preset's
    sampler, in batches of 16 (the median of ``repeats``). Stored next to a wall time, it tells a slow
    host from slow code: the same machine has run 0.111 to 0.19 s a video on different days."""
    import torch

    from harness.config import load_preset
    from harness.data.batches import split_batch
    from harness.models.tiny_wan import TinyWanAdapter
    from harness.sampling import sample

    preset = load_preset(preset_name)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    batch = split_batch(preset.world, "eval", range(16))
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    adapter.model.eval()
    cond = adapter.encode_condition(batch.first_frames, batch.captions)
    return median_seconds(lambda: sample(adapter, cond, list(range(16)), preset.sampler), repeats) / 16
