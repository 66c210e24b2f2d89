"""`dpo`: Diffusion-DPO / VideoDPO, the preference baseline of PG-DPO and Diffusion-APO.

Loss -log sigmoid(-0.5 * beta * T * (delta_w - delta_l)) on noised pairs with one
(t, noise) per pair (trainers/preference_losses.py). Pairs: rollouts of the base model
on the `prompts` split, 4 per condition, best vs worst by the oracle (or a pairs file).

Defaults: PG-DPO trains 3000 steps at batch 16 with lr 1e-6 and beta 100 on 14 B
models, a tenth of the usual SFT rate. The tiny model takes lr 5e-5 (a tenth of its SFT
rate), batch 8 pairs and 300 steps; beta stays at the paper's 100, with T folded into it
as in the papers' code. At lr 5e-4 DPO collapses the tiny model (measured in the README).
"""

from __future__ import annotations

import torch

from trainers.claims import Objective
from trainers.preference import PreferenceConfig, PreferenceTrainer
from trainers.preference_losses import PairErrors, dpo_loss
from trainers.registry import register_trainer


class DPOConfig(PreferenceConfig):
    pass


@register_trainer
class DPOTrainer(PreferenceTrainer):
    name = "dpo"
    report_rank = 30
    config_class = DPOConfig
    description = "Diffusion-DPO / VideoDPO on base-model rollout pairs (LoRA)"
    training_objective = Objective("reward_margin", "higher", "implicit reward margin (chosen − rejected)")
    config: DPOConfig

    def objective(self, errors: PairErrors) -> tuple[torch.Tensor, dict[str, float]]:
        return dpo_loss(errors, self.config.beta, self.config.T)
