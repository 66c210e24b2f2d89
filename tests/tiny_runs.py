"""What the run-level tests share: a fast tiny preset and the run cache they all use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.config import PresetConfig, load_preset, parse_override

FAST = ["eval.num_videos=4", "eval.final_num_videos=null", "sampler.num_steps=2", "methods.sft.batch_size=2",
        "probes.pairs=2", "probes.draws=1", "probes.every=2"]


def fast_preset(*extra: str) -> PresetConfig:
    """The tiny preset at test size (4 eval videos, for the final checkpoints too; 2 sampler steps, 2 probe
    pairs), with ``extra`` overrides."""
    return load_preset("tiny", [parse_override(s) for s in (*FAST, *extra)])


@contextmanager
def shared_cache(tmp_path_factory) -> Iterator[None]:
    """HARNESS_CACHE in the session's temp dir (pair sets built once), for module-scoped fixtures too."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def run_cache(tmp_path_factory) -> Iterator[None]:
    """Imported by a test module, every test in it uses the shared cache."""
    with shared_cache(tmp_path_factory):
        yield
