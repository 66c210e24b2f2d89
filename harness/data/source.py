"""Where clips come from: the synthetic world (default) or real footage (a preset's `data`).

Trainers and the evaluator ask for ``clip_batch(preset, split, indices)``. The world is
infinite (index i of a split is a deterministic clip); a real dataset is finite, so an
index wraps around its split (epochs), and the same index always names the same clip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from harness.data.batches import ClipBatch, split_batch
from harness.data.world import WorldConfig

DATA_ENV = "HARNESS_DATA"


@lru_cache(maxsize=4)
def _dataset(config_json: str):
    from harness.data.folder import RealVideoDataset, VideoDataConfig

    return RealVideoDataset(VideoDataConfig.model_validate_json(config_json))


def dataset_for(preset):
    """The preset's real dataset (indexed once per process), or None for the synthetic world."""
    if preset.data is None:
        return None
    root = Path(preset.data.root).expanduser()  # relative roots are under $HARNESS_DATA
    if not root.is_absolute():
        root = Path(os.environ.get(DATA_ENV, "~/.cache/harness/data")).expanduser() / root
    if not root.is_dir():
        from harness.data.folder import VideoDataError

        raise VideoDataError(f"data root {root} of preset {preset.name!r} is not a folder; put the footage there, "
                             f"or set data.root (absolute, or relative to ${DATA_ENV}) with --set data.root=DIR")
    return _dataset(preset.data.model_copy(update={"root": str(root)}).model_dump_json())


def clip_batch(preset, split: str, indices: Sequence[int]) -> ClipBatch:
    """Clips ``indices`` of ``split`` from a preset's source (or straight from a WorldConfig)."""
    if isinstance(preset, WorldConfig):
        return split_batch(preset, split, indices)
    data = dataset_for(preset)
    if data is None:
        return split_batch(preset.world, split, indices)
    size = len(data.split(split))
    if not size:
        raise ValueError(f"split {split!r} of {preset.data.root} has no clips (splits: {dict(preset.data.splits)}); "
                         "check `data.splits` and that the videos are long enough for `data.num_frames`")
    return data.batch(split, [int(i) % size for i in indices])


def frame_rate(preset) -> float:
    return preset.world.fps if preset.data is None else preset.data.fps


def data_file(path: str | Path) -> Path:
    """A data file a preset names: absolute as given; relative, under $HARNESS_DATA when it is there,
    else from the working directory."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    under = Path(os.environ.get(DATA_ENV, "~/.cache/harness/data")).expanduser() / p
    return under if under.exists() else p


def clip_length(preset) -> int:
    """Frames per clip the preset's model generates."""
    return preset.adapter.num_frames if preset.adapter is not None else preset.world.num_frames


def frame_size(preset) -> tuple[int, int]:
    """(height, width) of the clips the preset's model generates."""
    if preset.adapter is not None:
        return preset.adapter.height, preset.adapter.width
    return preset.world.resolution, preset.world.resolution
