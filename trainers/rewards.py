"""Reward registry shared by the reward-driven trainers (FCRM; the baselines flow-grpo, diffusionnft, awm).

A reward scores clean samples x0 in the model's space, one scalar per sample::

    reward(x0, inputs) -> (B,) float64, NaN/inf where it cannot score a sample

Trainers treat a non-finite reward as "drop this sample" and count it.

* ``latent_rm`` (space: latent): FCRM's default. A learned reward model that reads the
  frozen base transformer's intermediate features of x0 (a noise-aware feature
  extractor, as the paper's Wan-backbone reward model) with the caption tokens, through a
  small query-attention head (harness/scorers/latent_rm.py). No decoding. The tiny world's
  head is fitted to oracle scores; a real family's (Wan) to preference pairs with the
  Bradley-Terry loss (`harness build latent-rm --pairs`), on the policy's own frozen base,
  read with its LoRA disabled.
* ``oracle`` (space: pixel): decode, then the tiny world's oracle judge (mean of sprite
  integrity and motion adherence). The pixel-space reward of the ablation. It is the same
  judge as the ``distortion_rate``/``motion_adherence`` metrics, so training on it is not
  a held-out evaluation; the report says so.
* ``luminance`` (space: pixel): mean frame luma (BT.601) in [0, 1], the paper's
  "lightness" reward.
* ``aesthetic`` (space: pixel): a real-footage reward. LAION's aesthetic predictor (a
  linear head on L2-normalised CLIP ViT-L/14 image embeddings, the model behind VBench's
  aesthetic_quality and DDPO's aesthetic reward) per frame, on its own 1-10 scale, averaged
  over frames. One of the paper's pixel-space evaluation scores; its weights come from the
  local cache (``harness weights prefetch clip_vit_l14 laion_aesthetic_l14``).

A method names its reward with ``RewardConfig`` (``reward: {name, path}`` in its preset section),
which also says, before any work, why a reward cannot serve a preset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.config import PresetConfig
from harness.data.preferences import oracle_score
from harness.data.video_io import tensor_to_frames
from harness.data.world import ClipSpec
from harness.models.base import Conditioning, ModelAdapter
from harness.scorers.errors import RewardError
from harness.weights import resolve_all


@dataclass
class RewardInputs:
    """What a reward may read besides x0: the encoded conditions and, for world clips,
    their specs (the oracle's ground truth; None for imported data)."""

    cond: Conditioning
    specs: list[ClipSpec] | None = None


class Reward(ABC):
    name: ClassVar[str]
    space: ClassVar[str]  # "latent": reads x0 directly; "pixel": decodes first
    description: ClassVar[str] = ""

    def __init__(self, adapter: ModelAdapter, preset: PresetConfig):
        self.adapter, self.preset = adapter, preset

    @property
    def identity(self) -> str:
        return self.name

    @abstractmethod
    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, inputs: RewardInputs) -> torch.Tensor:
        """(B,) float64 rewards; non-finite where a sample cannot be scored."""

    def frames(self, x0: torch.Tensor) -> list[np.ndarray]:
        """Decoded uint8 frames (T, H, W, 3) per sample, for pixel-space rewards."""
        return [tensor_to_frames(v) for v in self.adapter.decode_latents(x0).clamp(-1, 1)]


REWARDS: dict[str, type[Reward]] = {}


def register_reward(cls: type[Reward]) -> type[Reward]:
    if REWARDS.get(cls.name, cls) is not cls:
        raise ValueError(f"reward {cls.name!r} registered twice")
    REWARDS[cls.name] = cls
    return cls


def build_reward(name: str, adapter: ModelAdapter, preset: PresetConfig, **options: object) -> Reward:
    if name not in REWARDS:
        raise RewardError(f"unknown reward {name!r}; registered: {', '.join(sorted(REWARDS))}")
    return REWARDS[name](adapter, preset, **options)  # type: ignore[call-arg]


@register_reward
class LuminanceReward(Reward):
    name, space = "luminance", "pixel"
    description = "mean frame luma (BT.601) in [0, 1]"

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, inputs: RewardInputs) -> torch.Tensor:
        rgb = (self.adapter.decode_latents(x0).clamp(-1, 1).double() + 1) / 2  # (B, 3, T, H, W)
        luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
        return luma.flatten(1).mean(1)


@register_reward
class OracleReward(Reward):
    name, space = "oracle", "pixel"
    description = "tiny-world oracle judge: mean of sprite integrity and motion adherence (decoded pixels)"

    def __init__(self, adapter: ModelAdapter, preset: PresetConfig):
        super().__init__(adapter, preset)
        self.score: Callable[[np.ndarray, object], float] = oracle_score(preset.world)

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, inputs: RewardInputs) -> torch.Tensor:
        if inputs.specs is None:
            raise RewardError("the oracle reward needs tiny-world conditions (clip specs); imported samples "
                              "have none: use reward latent_rm, luminance or aesthetic for them")
        return torch.tensor([self.score(f, s) for f, s in zip(self.frames(x0), inputs.specs, strict=True)],
                            dtype=torch.float64)


@register_reward
class LatentRewardModelReward(Reward):
    name, space = "latent_rm", "latent"
    description = "learned latent reward model: frozen base-transformer features + query-attention head"

    def __init__(self, adapter: ModelAdapter, preset: PresetConfig, path: str | None = None):
        super().__init__(adapter, preset)
        from harness.scorers.latent_rm import load_reward_model

        self.model = load_reward_model(path, adapter)
        if preset.adapter is not None and not self.model.shared:
            raise RewardError(f"reward latent_rm {path or '(the shipped one)'} reads the tiny world's model, not "
                              f"{preset.adapter.family}; fit one on this preset's base model with `harness "
                              f"build latent-rm --preset {preset.name} --pairs footage --out DIR` and set "
                              "methods.fcrm.reward.path=DIR")

    @property
    def identity(self) -> str:
        return f"{self.name}[{self.model.digest}]"

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, inputs: RewardInputs) -> torch.Tensor:
        return self.model.score(x0, inputs.cond).double()


@register_reward
class AestheticReward(Reward):
    name, space = "aesthetic", "pixel"
    description = "LAION aesthetic predictor on CLIP ViT-L/14 frame embeddings (1-10 scale), mean over frames"

    def __init__(self, adapter: ModelAdapter, preset: PresetConfig):
        super().__init__(adapter, preset)
        from metrics.quality import AestheticQuality

        resolve_all(AestheticQuality.spec.weights)  # one error naming every missing file, before any training
        self.model = AestheticQuality()

    @property
    def identity(self) -> str:
        return f"{self.name}[{self.model.identity_options()['model']}]"

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, inputs: RewardInputs) -> torch.Tensor:
        embedder, head = self.model.embedder, self.model.head
        per_video = embedder.embed_many(self.frames(x0))  # frames of every sample share batches
        return torch.tensor([float(head(torch.from_numpy(f).float().to(embedder.device)).mean()) for f in per_video],
                            dtype=torch.float64)


class RewardConfig(BaseModel):
    """A reward-driven method's training reward: a registered reward by name (default: the learned
    latent reward model, held out from every evaluation metric's judge) and its options."""

    model_config = ConfigDict(extra="forbid")

    name: str = "latent_rm"
    path: str | None = Field(None, description="latent_rm only: a reward model directory (default: shipped)")

    def options(self) -> dict[str, Any]:
        return {"path": self.path} if self.name == "latent_rm" else {}

    def preset_problems(self, preset: PresetConfig, where: str) -> list[str]:
        """What makes this reward unusable on ``preset`` (``where``: the method's section), each with the fix."""
        from harness.scorers.latent_rm import missing_file

        name = self.name
        if name not in REWARDS:
            return [f"{where}.reward.name={name!r} is not a registered reward; registered: "
                    f"{', '.join(sorted(REWARDS))}" + (" (a real family: latent_rm with a head fitted by "
                                                         "`harness build latent-rm --pairs`, or aesthetic)"
                                                         if preset.adapter else "")]
        if name == "oracle" and preset.data is not None:
            return [f"{where}.reward.name=oracle is the tiny world's judge and cannot score footage; use latent_rm "
                    "(a head fitted by `harness build latent-rm --pairs`), aesthetic or luminance"]
        if name == "latent_rm" and (missing := missing_file(self.path)):
            return [f"{where}.reward: {missing}"]
        if name == "latent_rm" and preset.adapter is not None and self.path is None:
            return [f"{where}.reward: the shipped latent_rm reads the tiny world's model, not "
                    f"{preset.adapter.family}; fit one with `harness build latent-rm --preset {preset.name} --pairs "
                    f"footage --out DIR` and set {where}.reward.path=DIR"]
        return []
