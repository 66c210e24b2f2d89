"""`sft`: supervised fine-tuning with LoRA on the finetune split (the baseline of all four papers).

The loss is the base model's own flow-matching loss on real clips. On the tiny world the
finetune split is sharp but mostly slow or still and its captions do not describe motion,
so SFT trades motion for appearance (measured in the README), the collapse the SHIFT
paper reports (Table 1: dynamic degree 0.67 -> 0.33, motion score 4.39 -> 2.69 on SVD).

Defaults: SHIFT Table 5 uses LoRA rank 32 / alpha 32 and lr 1e-5 on 1.2-5 B models for
thousands of steps; the tiny model (96-wide projections) gets rank 8 / alpha 8 and
lr 5e-4 so that a few hundred CPU steps move it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from harness.data.source import clip_batch
from trainers.base import Trainer, TrainerConfig
from trainers.claims import Objective
from trainers.objectives import denoising_loss, sample_sigmas
from trainers.registry import register_trainer


class SFTConfig(TrainerConfig):
    timestep_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    split: str = Field("finetune", description="split of the world or of the preset's real dataset")


@register_trainer
class SFTTrainer(Trainer):
    name = "sft"
    report_rank = 10
    config_class = SFTConfig
    description = "supervised fine-tuning (LoRA) on the finetune split"
    training_objective = Objective("loss", "lower", "denoising loss on the fine-tune clips")
    config: SFTConfig

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        b = self.config.batch_size
        # Clip order depends only on (seed, step): a resumed run sees the same data.
        start = self.seed * 1_000_000 + step * b
        rows = self.dist.rows(b)  # this rank's share of the global batch (all of it on one process)
        batch = clip_batch(self.preset, self.config.split, range(start, start + b)[rows])
        self.saw(b)
        x0 = self.adapter.encode_video(batch.videos)
        cond = self.adapter.encode_condition(batch.first_frames, batch.captions)
        sigma = sample_sigmas(self.config.timestep_sampling, b, self.generator)[rows]
        noise = torch.randn((b, *x0.shape[1:]), generator=self.generator)[rows]
        return denoising_loss(self.adapter, x0, cond, sigma, noise).mean(), {}
