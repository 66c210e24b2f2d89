import os

import pytest
import torch

from harness.data.world import WorldConfig

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
# Runs in tests train their methods in this process (monkeypatched faults must reach the trainers); the tests of
# worker processes (test_workers.py) ask for them with RunOptions(jobs=...), which wins over this.
os.environ.setdefault("HARNESS_JOBS", "1")


@pytest.fixture(scope="session")
def world() -> WorldConfig:
    return WorldConfig()
