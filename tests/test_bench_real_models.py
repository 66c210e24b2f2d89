"""The GPU check's script (benchmarks/bench_real_models.py) runs end to end at the tests' tiny size, so
that a session lent a GPU can run it at real size as is: trainer steps timed with their FLOPs counted,
a method the preset refuses recorded as refused, and a sampling pass."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_real_models_runs_at_tiny_size(tmp_path):
    from bench_real_models import bench_preset

    result = bench_preset("wan21-1.3b-fewstep", ["sft", "apo"], "tiny", 2, tmp_path / "models", tmp_path / "work",
                          peak_tflops=100.0)
    sft = result["methods"]["sft"]
    assert result["family"] == "wan21-t2v" and result["geometry"] == {"num_frames": 5, "height": 16, "width": 16}
    assert sft["step_s"] > 0 and sft["tflop_per_step"] > 0 and math.isfinite(sft["loss"])
    assert sft["mfu"] == pytest.approx(sft["tflop_per_step"] / sft["step_s"] / 100.0)
    assert "explicit few-step timestep list" in result["methods"]["apo"]["refused"]
    assert result["sampling"]["seconds_per_video"] > 0
