"""Model families by name: the preset's `adapter` section -> a loaded ModelAdapter.

`tiny-wan` is the default preset's pixel-space model (harness/assets). The real families
load from a local diffusers pipeline directory, checked component by component before any
weights are read (harness/models/components.py). Geometry that a family cannot take (Wan:
4k+1 frames, sides divisible by 16; SVD: sides divisible by 8) is refused when the preset is
read, not after the weights are loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.models.base import ModelAdapter

MODELS_ENV = "HARNESS_MODELS"
REAL_FAMILIES = ("wan21-t2v", "wan21-i2v", "wan22-ti2v", "svd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (temporal compression: frames must be k * t + 1, or 1 for none; spatial multiple)
GEOMETRY = {"wan21-t2v": (4, 16), "wan21-i2v": (4, 16), "wan22-ti2v": (4, 32), "svd": (1, 8)}


class AdapterConfig(BaseModel):
    """A real model family in a local directory (diffusers layout)."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["wan21-t2v", "wan21-i2v", "wan22-ti2v", "svd"]
    path: str = Field(description="local diffusers pipeline directory (model_index.json); nothing is downloaded")
    num_frames: int = Field(ge=1)
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    gradient_checkpointing: bool = True
    lora_targets: list[str] | None = Field(
        None, description="peft target modules; default: Wan all attention, SVD temporal attention (SHIFT)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="family options: SVD fps/motion_bucket_id/noise_aug_strength, "
                                          "Wan max_sequence_length")

    @model_validator(mode="after")
    def _geometry(self) -> AdapterConfig:
        temporal, spatial = GEOMETRY[self.family]
        problems = []
        if temporal > 1 and (self.num_frames - 1) % temporal:
            k = (self.num_frames - 1) // temporal
            problems.append(f"num_frames={self.num_frames} is not {temporal}k+1 (the VAE compresses time by "
                            f"{temporal}); use {temporal * k + 1} or {temporal * (k + 1) + 1}")
        for side in ("height", "width"):
            v = getattr(self, side)
            if v % spatial:
                problems.append(f"{side}={v} is not a multiple of {spatial}; use {v - v % spatial or spatial} "
                                f"or {v - v % spatial + spatial}")
        if problems:
            raise ValueError(f"{self.family}: " + "; ".join(problems))
        return self


def model_path(path: str) -> Path:
    """A relative model path is under ``$HARNESS_MODELS`` (default ~/.cache/harness/models)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(os.environ.get(MODELS_ENV, "~/.cache/harness/models")).expanduser() / p


def check_adapter_dir(cfg: AdapterConfig) -> None:
    """Fail before any other work if the model directory lacks a component or holds a wrong class."""
    from harness.models.components import check_model_dir

    if cfg.family == "svd":
        from harness.models import svd

        check_model_dir(model_path(cfg.path), svd.COMPONENTS, svd.FAMILY, svd.HF_REPO)
    else:
        from harness.models import wan

        spec = wan._variant(cfg.family)
        check_model_dir(model_path(cfg.path), list(spec.components), f"{wan.FAMILY}/{cfg.family}", spec.repo)


def load_adapter(cfg: AdapterConfig, device: str | torch.device | None = None) -> ModelAdapter:
    """The family's adapter from its local directory, gradient checkpointing as configured."""
    device = device or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[cfg.dtype]
    if cfg.family == "svd":
        from harness.models.svd import SVDAdapter

        adapter: ModelAdapter = SVDAdapter.from_pretrained(
            model_path(cfg.path), cfg.num_frames, cfg.height, cfg.width, dtype=dtype, device=device,
            lora_targets=cfg.lora_targets, **cfg.options)
    else:
        from harness.models.wan import WanAdapter

        adapter = WanAdapter.from_pretrained(
            model_path(cfg.path), cfg.family, cfg.num_frames, cfg.height, cfg.width, dtype=dtype, device=device,
            lora_targets=cfg.lora_targets, **cfg.options)
    if cfg.gradient_checkpointing:
        adapter.enable_gradient_checkpointing()
    return adapter


def base_identity(cfg: AdapterConfig | None, tiny_dir: Path) -> str:
    """What results sampled from a base model are tied to: the digest of a tiny model directory's files,
    or, for a real family, its settings (path, family, shape, dtype: its multi-gigabyte files are not
    hashed at every evaluation)."""
    import json

    from harness.rundir import dir_digest

    if cfg is not None:
        return "adapter:" + json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return f"tiny:{dir_digest(tiny_dir)}"
