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
    """Write the figures with their provenance (commit, versions, hardware, when: the same host's speed
    differs by up to 20 % from day to day) and print them."""
    recorded = datetime.now(UTC).isoformat(timespec="seconds")
    record = {"benchmark": benchmark, "preset": preset, **extra, "results": results, **provenance(),
              "recorded": recorded}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(results, indent=2))
