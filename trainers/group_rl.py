"""What the online group-reward baselines share (`flow-grpo`, `diffusionnft`, `awm`).

Each method trains on rounds of the policy's own samples: every ``inner_steps`` steps a round
samples ``group_size`` videos for each of ``conditions`` conditions (drawn from the first
``condition_pool`` clips of ``split``), scores them once with a reward from the registry
(trainers/rewards.py; default ``latent_rm``, the learned judge, which no evaluation metric uses as
its judge) and forms GRPO's group-relative advantages. A sample whose reward is not finite is
dropped and counted (``reward/dropped``). Steps take ``batch_size`` samples of the round in a
shuffled order; data parallel, every rank draws the same round and order and trains on its rows
(``batch_layout``: a group never straddles two ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from harness.distributed import Dist
from harness.models.base import ModelAdapter
from trainers.base import Draw, Trainer, TrainerConfig, pairs_draws
from trainers.fcrm_data import Samples, policy_rollouts
from trainers.rewards import Reward, RewardConfig, RewardInputs, build_reward


class GroupRLConfig(TrainerConfig):
    """Rollout rounds, the reward and the advantage of the group-reward baselines."""

    reward: RewardConfig = Field(default_factory=RewardConfig)
    split: str = Field("prompts", description="world split the rollout conditions come from")
    condition_pool: int = Field(2048, ge=1, description="rollout conditions are drawn from the first N")
    conditions: int = Field(8, ge=1, description="conditions per rollout round")
    group_size: int = Field(4, ge=2, description="rollouts per condition (the advantage's group)")
    inner_steps: int = Field(2, ge=1, description="optimization steps per rollout round")
    adv_std: Literal["group", "global"] = Field(
        "group", description="advantage denominator: the group's std (GRPO) or the whole round's (`global_std`)")
    adv_clip: float = Field(5.0, gt=0, description="advantages are clipped to [-adv_clip, adv_clip]")

    def training_signals(self) -> list[str]:
        return [self.reward.name]

    def preset_problems(self, preset, where: str) -> list[str]:
        return self.reward.preset_problems(preset, where)

    def training_draws(self, where: str) -> list[Draw]:
        return [*pairs_draws(getattr(self, "pairs", None), where),
                Draw(f"{where} (rollout conditions, condition_pool)", self.split, 0, self.condition_pool)]

    def batch_layout(self) -> list[tuple[str, int, int]]:
        return [*super().batch_layout(),
                ("conditions x group_size (rollouts per round)", self.conditions * self.group_size, self.group_size)]


def grpo_advantages(rewards: torch.Tensor, groups: torch.Tensor, std: str = "group",
                    eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of the sample's group) / (s + eps), s the population std of the group (``group``)
    or of every reward of the round (``global``); detached, float64. eps = 1e-4 as Flow-GRPO's and
    DiffusionNFT's stat trackers (flow_grpo/stat_tracking.py)."""
    if std not in ("group", "global"):
        raise ValueError(f"unknown advantage std {std!r}; allowed: group, global")
    rewards = rewards.detach().double()
    out = torch.zeros_like(rewards)
    spread = rewards.std(unbiased=False) if len(rewards) > 1 else rewards.new_zeros(())
    for g in torch.unique(groups):
        m = groups == g
        r = rewards[m]
        s = r.std(unbiased=False) if std == "group" else spread
        out[m] = (r - r.mean()) / (s + eps)
    return out


def score_sharded(reward: Reward, samples: Samples, adapter: ModelAdapter, dist: Dist,
                  batch: int = 64) -> torch.Tensor:
    """(N,) float64 rewards on the CPU: rank r scores samples r, r + W, ... and every rank gets all."""
    mine = list(dist.strided(len(samples)))
    out = [torch.empty(0, dtype=torch.float64)]
    for lo in range(0, len(mine), batch):
        part = samples.take(mine[lo:lo + batch])
        out.append(reward(part.x0, RewardInputs(part.condition(adapter), part.specs)).double().cpu())
    rewards = torch.empty(len(samples), dtype=torch.float64)
    for rows, scored in dist.gather((mine, torch.cat(out))):
        rewards[rows] = scored
    return rewards


def finite_round(samples: Samples, groups: Sequence[int], std: str) -> tuple[torch.Tensor, int]:
    """Keeps the samples with a finite reward and sets their advantages; returns the kept rows
    and how many were dropped."""
    keep = torch.isfinite(samples.rewards)
    kept = torch.nonzero(keep).squeeze(1)
    advantages = torch.zeros(len(samples), dtype=torch.float64)
    if len(kept):
        advantages[kept] = grpo_advantages(samples.rewards[kept], torch.tensor(list(groups))[kept], std)
    samples.advantages = advantages
    return kept, int((~keep).sum())


def round_logs(rewards: torch.Tensor) -> dict[str, float]:
    return {"reward/round_mean": float(rewards.mean()) if len(rewards) else float("nan"),
            "reward/round_std": float(rewards.std()) if len(rewards) > 1 else 0.0}


def batch_picks(order: torch.Tensor, k: int, batch_size: int) -> list[int]:
    """The ``k``-th batch of a round's shuffled ``order`` (wrapping around when the round is short)."""
    o = order.tolist()
    return [o[(k * batch_size + j) % len(o)] for j in range(batch_size)]


@contextlib.contextmanager
def using_weights(params: list[torch.nn.Parameter], weights: list[torch.Tensor] | None) -> Iterator[None]:
    """The LoRA parameters hold ``weights`` (an old or EMA policy) inside the context; the live
    values come back on exit. Only for forward passes without gradient: a graph built inside would
    see the swapped values change under it."""
    if weights is None:
        yield
        return
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(params, weights)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)


def lerp_weights(target: list[torch.Tensor], params: list[torch.nn.Parameter], decay: float) -> None:
    """target <- decay * target + (1 - decay) * params (an EMA / old-policy update)."""
    with torch.no_grad():
        torch._foreach_lerp_(target, [p.detach() for p in params], 1 - decay)


class SampleRoundTrainer(Trainer):
    """A trainer on rounds of clean rollouts (x0 only; any sampler): DiffusionNFT and AWM. Rollouts
    come from the current policy with the method's sampler (fcrm_data.policy_rollouts, sharded);
    ``batch(step)`` returns this rank's rows of the step's global batch."""

    replay_state: tuple[str, ...] = ("round", "round_order", "round_logs", "dropped")
    config: GroupRLConfig

    def __init__(self, adapter, preset, config: GroupRLConfig, seed: int, workdir=None):
        super().__init__(adapter, preset, config, seed, workdir)
        self.reward = build_reward(config.reward.name, adapter, preset, **config.reward.options())
        self.dropped = 0
        self.round: Samples | None = None
        self.round_order: torch.Tensor | None = None
        self.round_logs: dict[str, float] = {}

    def before_round(self, step: int) -> None:
        """Called before each round samples (an old-policy update, say); nothing by default."""

    def batch(self, step: int) -> Samples:
        cfg = self.config
        if step % cfg.inner_steps == 0 or self.round is None:
            self.before_round(step)
            samples, groups = policy_rollouts(self.adapter, self.preset, cfg.split, cfg.condition_pool, cfg.conditions,
                                              cfg.group_size, self.generator, self.sampler)
            self.saw(len(samples))
            samples.rewards = score_sharded(self.reward, samples, self.adapter, self.dist)
            kept, dropped = finite_round(samples, groups, cfg.adv_std)
            self.dropped += dropped
            self.round = samples.take(kept)
            self.round_logs = round_logs(self.round.rewards)
            self.round_order = torch.randperm(len(self.round), generator=self.generator)
        assert self.round is not None and self.round_order is not None
        if len(self.round) == 0:
            raise ValueError(f"step {step}: every reward of the round was non-finite; nothing to train on")
        picks = batch_picks(self.round_order, step % cfg.inner_steps, cfg.batch_size)
        return self.round.take(picks[self.dist.rows(cfg.batch_size)])

    def step_logs(self, samples: Samples) -> dict[str, float]:
        return {**self.round_logs, "reward/batch_mean": float(samples.rewards.mean()),
                "reward/dropped": float(self.dropped)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["round"] = {"round": None if self.round is None else self.round.state(), "order": self.round_order,
                          "logs": dict(self.round_logs), "dropped": self.dropped}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        r = state["round"]
        self.round = None if r["round"] is None else Samples.from_state(r["round"])
        self.round_order, self.round_logs, self.dropped = r["order"], dict(r["logs"]), int(r["dropped"])


def noised_rows(adapter: ModelAdapter, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (sample, timestep) flattened: x0 (n, *) with sigma (n, T) and noise (n, T, *) ->
    (x_t, sigma, target velocity), each with n * T rows on the model's side."""
    n, t = sigma.shape
    rows = torch.arange(n).repeat_interleave(t)
    x0_rep, s, eps = x0[rows], sigma.reshape(-1), noise.reshape(n * t, *x0.shape[1:])
    return adapter.add_noise(x0_rep, eps, s), s, adapter.training_target(x0_rep, eps, s)
