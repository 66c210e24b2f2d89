"""The model every method starts from, as the preset names it: a real family (``adapter``) or
the tiny model (``base_checkpoint``, or a method's own tiny starting checkpoint such as a
few-step generator). Shared by the runner, the Evaluator and the build jobs."""

from __future__ import annotations

from harness.config import PresetConfig, package_path
from harness.models.base import ModelAdapter
from harness.models.registry import base_identity, load_adapter
from harness.models.tiny_wan import TinyWanAdapter


class BaseCheckpointError(ValueError):
    """A method's ``base_checkpoint`` cannot apply to this preset's model family."""


def base_adapter(preset: PresetConfig, checkpoint: str | None = None) -> ModelAdapter:
    """The model every method starts from: the preset's real family, else the tiny model (or a
    method's own tiny starting checkpoint, e.g. a few-step generator)."""
    if preset.adapter is not None:
        if checkpoint:
            raise BaseCheckpointError(
                f"methods.*.base_checkpoint={checkpoint!r} is for the tiny model; preset "
                f"{preset.name!r} loads {preset.adapter.family} from adapter.path")
        return load_adapter(preset.adapter)
    return TinyWanAdapter.load(package_path(checkpoint) if checkpoint else preset.base_checkpoint_path())


def base_weights(preset: PresetConfig, checkpoint: str | None = None) -> str:
    """The identity of the weights ``base_adapter(preset, checkpoint)`` loads (stored with each result)."""
    return base_identity(preset.adapter, package_path(checkpoint) if checkpoint else preset.base_checkpoint_path())
