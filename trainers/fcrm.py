"""`fcrm`: Forward-Consistent Reward Matching (paper 002), off-policy reward RL in loss space.

Each step minimises the squared one-step GFlowNet residual (trainers/fcrm_objective.py)
over clean samples from a behaviour distribution, with the double-sampling estimator:

* ``behaviour``: where online samples come from. Every ``inner_steps`` steps a rollout
  round samples ``group_size`` videos for each of ``conditions`` prompts-split conditions,
  scores them once with the reward and forms group-normalised advantages; steps draw
  ``batch_size`` samples from it.
    - ``on_policy``: rollouts from the current policy, each round used for ``inner_steps``;
    - ``ema``: rollouts from an EMA of the policy (App. D.4; eta = ``ema_decay``, per step);
    - ``replay``: rollouts (from the EMA sampler) go through a FIFO buffer of ``capacity``
      with a positive-only / negative-only / unfiltered filter; draws are uniform;
    - ``none``: no online branch (fully offline, needs ``offline``).
* ``offline`` (App. D.2): a separate FCRM branch over fixed samples (real clips of a
  world split, or an .npz of latents/frames with captions), weighted by ``weight``
  (lambda_offline), with source-level reward normalisation (EMA statistics), signed or
  non-negative advantages (offset a0, cap A_max) and a source-level scalar normaliser
  b_offline (or b_phi with its gradient stopped).
* ``timesteps``: a few-step generator's fixed set (App. D.3, e.g. [1000, 757, 522]) instead
  of tau ~ U(0, 1); pair it with ``sampler.timesteps`` and a few-step ``base_checkpoint``.
* ``kl_coef``: the optional KL penalty (the ablation's {0, 0.01, 1}), estimated by
  ||v_theta - v_ref||^2 on the residual's own draws (no extra forward pass), reduced like
  the loss so that the coefficient is in the residual's units.

Rewards come from the registry in trainers/rewards.py (default: the latent reward model).
A sample whose reward is not finite is dropped and counted (``reward/dropped``).

Defaults: the paper's beta = gamma = 1, N_mc = 1, uniform p(tau) and w(tau), phi lr 1e-3,
weight decay 1e-4, grad clip 1, EMA eta 0.9; scaled for the tiny model: group size 4 (paper
32), 8 conditions per round, batch 8 per branch, lr 1e-4 as the paper (LoRA rank 8).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.data.source import frame_size
from harness.models.base import Conditioning
from trainers.base import Draw, SmokeChanges, Trainer, TrainerConfig, pairs_draws
from trainers.claims import Objective, PaperClaim
from trainers.fcrm_data import (
    FCRMDataError,
    ReplayBuffer,
    Samples,
    check_source,
    file_offline,
    policy_rollouts,
    world_offline,
)
from trainers.fcrm_objective import (
    LogNormalizer,
    SourceStats,
    double_sampling_surrogate,
    group_advantages,
    image_plane,
    mc_draws,
    mc_losses,
    offline_advantages,
    residual,
)
from trainers.optimizer import AdamWSettings
from trainers.registry import register_trainer
from trainers.rewards import RewardConfig, RewardInputs, build_reward

log = logging.getLogger(__name__)


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capacity: int = Field(256, ge=1, description="FIFO capacity in samples (paper: 20000)")
    filter: Literal["all", "positive", "negative"] = "all"


class OfflineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field("world", description="`world`: real clips of `split` (the preset's footage, else its world), "
                        "or a path to an .npz")
    split: str = "prompts"
    start: int = Field(100_000, ge=0, description="first clip index of `split` (kept apart from rollouts)")
    count: int = Field(256, ge=1)
    weight: float = Field(1.0, ge=0, description="lambda_offline")
    advantage: Literal["signed", "nonnegative"] = "nonnegative"
    a0: float = Field(1.0, ge=0, description="offset of the non-negative advantage (paper: 1.0)")
    a_max: float = Field(3.0, gt=0, description="cap of the non-negative advantage")
    normaliser: Literal["source", "stopgrad"] = Field(
        "source", description="source: a learned scalar b_offline; stopgrad: b_phi(c) without its gradient")
    stats_decay: float = Field(0.9, ge=0, lt=1)
    sigma_min: float = Field(1e-2, gt=0)


class FCRMConfig(TrainerConfig):
    lr: float = 1e-4
    beta: float = Field(1.0, gt=0, description="reward temperature")
    gamma: float = Field(1.0, gt=0, description="loss-score temperature")
    n_mc: int = Field(1, ge=1, description="(tau, eps) draws per sample and noise batch")
    target: Literal["advantage", "reward"] = "advantage"
    estimator: Literal["double", "naive"] = Field(
        "double", description="double sampling (unbiased) or the square of one batch (biased, Prop. 1)")
    reduction: Literal["sum", "mean"] = Field("sum", description="per-sample loss: Eq. 3's squared norm, or a mean")
    timesteps: list[float] | None = Field(None, description="few-step mode: the generator's timesteps in (0, 1000]")
    kl_coef: float = Field(0.0, ge=0)
    phi_lr: float = Field(1e-3, gt=0)
    phi_hidden: int = Field(256, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    behaviour: Literal["on_policy", "ema", "replay", "none"] = "ema"
    ema_decay: float = Field(0.9, ge=0, lt=1)
    split: str = Field("prompts", description="world split the rollout conditions come from")
    condition_pool: int = Field(2048, ge=1, description="rollout conditions are drawn from the first N")
    conditions: int = Field(8, ge=1, description="conditions per rollout round")
    group_size: int = Field(4, ge=2, description="rollouts per condition (the advantage's group)")
    inner_steps: int = Field(4, ge=1, description="optimization steps per rollout round")
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    offline: OfflineConfig | None = Field(default_factory=OfflineConfig)

    @classmethod
    def smoke_changes(cls, section: dict[str, Any], with_steps: bool) -> SmokeChanges:
        """Also reward rollouts of 2 conditions x 2 and a small offline set (unless the section has none)."""
        changes = [*super().smoke_changes(section, with_steps),
                   (("conditions",), 2), (("group_size",), 2), (("batch_size",), 2)]
        if section.get("offline", {}) is not None:
            changes.append((("offline", "count"), 4))
        return changes

    def optimizer_settings(self) -> AdamWSettings:
        return AdamWSettings(weight_decay=self.weight_decay)

    def training_draws(self, where: str) -> list[Draw]:
        """The rollout conditions (unless fully offline) and the offline clips drawn from the world."""
        out = pairs_draws(getattr(self, "pairs", None), where)
        if self.behaviour != "none":
            out.append(Draw(f"{where} (rollout conditions, condition_pool)", self.split, 0, self.condition_pool))
        if self.offline is not None and self.offline.source == "world":
            o = self.offline
            out.append(Draw(f"{where}.offline", o.split, o.start, o.start + o.count))
        return out

    def training_signals(self) -> list[str]:
        return [self.reward.name]

    def preset_problems(self, preset, where: str) -> list[str]:
        return self.reward.preset_problems(preset, where)

    def batch_layout(self) -> list[tuple[str, int, int]]:
        return [*super().batch_layout(),
                ("conditions x group_size (rollouts per round)", self.conditions * self.group_size, self.group_size)]

    @model_validator(mode="after")
    def _check(self) -> FCRMConfig:
        if self.behaviour == "none" and self.offline is None:
            raise ValueError("behaviour 'none' (fully offline) needs an `offline` source")
        if self.timesteps is not None and (not self.timesteps or any(not 0 < t <= 1000 for t in self.timesteps)):
            raise ValueError(f"timesteps must be values in (0, 1000], got {self.timesteps}")
        return self


@register_trainer
class FCRMTrainer(Trainer):
    name = "fcrm"
    report_rank = 60
    config_class = FCRMConfig
    description = "FCRM: loss-space GFlowNet reward matching, online/EMA/replay/offline, few-step"
    training_objective = Objective("reward/round_mean", "higher", "mean training reward of its rollout rounds")
    claims = (
        PaperClaim("FCRM", "FCRM raises the latent reward over the base model", "difference", ("fcrm",),
                   a="fcrm", b="base", metric="latent_reward"),
        PaperClaim("FCRM", "hybrid EMA + offline collection beats fully on-policy", "difference",
                   ("fcrm", "fcrm-onpolicy"), a="fcrm", b="fcrm-onpolicy", metric="latent_reward"),
        PaperClaim("FCRM", "hybrid EMA + offline collection beats fully offline", "difference",
                   ("fcrm", "fcrm-offline"), a="fcrm", b="fcrm-offline", metric="latent_reward"),
        PaperClaim("FCRM", "fully on-policy beats fully offline", "difference", ("fcrm-onpolicy", "fcrm-offline"),
                   a="fcrm-onpolicy", b="fcrm-offline", metric="latent_reward"),
    )
    replay_state = ("round", "round_order", "round_logs", "dropped", "buffer", "offline_stats")
    config: FCRMConfig

    def __init__(self, adapter, preset, config: FCRMConfig, seed: int, workdir: Path | None = None):
        super().__init__(adapter, preset, config, seed, workdir)
        torch.manual_seed(seed)  # b_phi's hidden layers
        probe = adapter.encode_condition(torch.zeros(1, 3, *frame_size(preset)), [""])
        device = next(adapter.model.parameters()).device  # log Z reads the conditions where the model has them
        self.log_z = LogNormalizer(probe.text.shape[-1], image_plane(probe.first_frame).shape[1],
                                   config.phi_hidden).to(device)
        # (1,), not 0-dim: ZeRO cannot flatten a 0-dim parameter
        self.b_offline = torch.nn.Parameter(torch.zeros(1, device=device))
        self.optimizer.add_param_group({"params": [*self.log_z.parameters(), self.b_offline], "lr": config.phi_lr,
                                        "weight_decay": config.weight_decay})
        self.reward = build_reward(config.reward.name, adapter, preset, **config.reward.options())
        self.dropped = 0  # samples whose reward was not finite
        self.round: Samples | None = None
        self.round_order: torch.Tensor | None = None
        self.round_logs: dict[str, float] = {}
        self.ema = [p.detach().clone() for p in self.params] if config.behaviour in ("ema", "replay") else None
        self.buffer = ReplayBuffer(config.replay.capacity, config.replay.filter) \
            if config.behaviour == "replay" else None
        self.offline = self._load_offline() if config.offline is not None else None
        self.offline_stats = SourceStats(config.offline.stats_decay, config.offline.sigma_min) \
            if config.offline is not None else None

    # -- data ------------------------------------------------------------------------------------
    def _load_offline(self) -> Samples:
        cfg = self.config.offline
        assert cfg is not None
        if cfg.source == "world":
            samples, what = world_offline(self.preset, self.adapter, cfg.split, cfg.start, cfg.count), \
                f"offline source (world split {cfg.split!r})"
        else:
            path = Path(cfg.source)
            samples, what = file_offline(path, self.adapter), f"offline source {path}"
        check_source(samples, self.adapter, what)
        # Rewards are fixed per offline sample: scored once, here.
        samples.rewards = self._score(samples)
        keep = torch.isfinite(samples.rewards)
        if not keep.all():
            log.warning("%s: %d samples have a non-finite reward and are dropped", what, int((~keep).sum()))
            self.dropped += int((~keep).sum())
            samples = samples.take(torch.nonzero(keep).squeeze(1))
        if len(samples) == 0:
            raise FCRMDataError(f"{what}: no sample has a finite reward under {self.reward.identity}")
        return samples

    def _score(self, samples: Samples, batch: int = 64) -> torch.Tensor:
        """(N,) float64 rewards on the CPU. Rank r scores samples r, r + W, ... (decoding and reward
        models are what costs at real size) and the scalars are gathered, so every rank holds all."""
        mine = list(self.dist.strided(len(samples)))
        out = [torch.empty(0, dtype=torch.float64)]
        for lo in range(0, len(mine), batch):
            part = samples.take(mine[lo:lo + batch])
            out.append(self.reward(part.x0, RewardInputs(part.condition(self.adapter), part.specs)).double().cpu())
        rewards = torch.empty(len(samples), dtype=torch.float64)
        for rows, scored in self.dist.gather((mine, torch.cat(out))):
            rewards[rows] = scored
        return rewards

    @contextlib.contextmanager
    def _behaviour_weights(self) -> Iterator[None]:
        """The LoRA weights rollouts come from: the EMA for ema/replay, else the policy's own."""
        if self.ema is None:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.ema)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, saved)

    def _rollout_round(self, step: int) -> None:
        cfg = self.config
        with self._behaviour_weights():
            samples, rows = policy_rollouts(self.adapter, self.preset, cfg.split, cfg.condition_pool,
                                            cfg.conditions, cfg.group_size, self.generator, self.sampler)
        self.saw(len(samples))
        samples.rewards = self._score(samples)
        keep = torch.isfinite(samples.rewards)
        self.dropped += int((~keep).sum())
        groups = torch.tensor(rows)[keep]
        samples = samples.take(torch.nonzero(keep).squeeze(1))
        samples.advantages = group_advantages(samples.rewards, groups)
        self.round_logs = {"reward/round_mean": float(samples.rewards.mean()) if len(samples) else float("nan"),
                           "reward/round_std": float(samples.rewards.std()) if len(samples) > 1 else 0.0}
        if self.buffer is not None:
            self.buffer.insert(samples)
        self.round = samples
        self.round_order = torch.randperm(len(samples), generator=self.generator)

    def _online_batch(self, step: int) -> Samples | None:
        cfg = self.config
        if cfg.behaviour == "none":
            return None
        if step % cfg.inner_steps == 0 or self.round is None:
            self._rollout_round(step)
        if self.buffer is not None:
            return self.buffer.draw(cfg.batch_size, self.generator) if len(self.buffer) else None
        assert self.round is not None and self.round_order is not None
        if len(self.round) == 0:
            return None
        k = step % cfg.inner_steps
        order = self.round_order.tolist()
        picks = [order[(k * cfg.batch_size + j) % len(order)] for j in range(cfg.batch_size)]
        return self.round.take(picks)

    # -- the objective -------------------------------------------------------------------------
    def branch_loss(self, samples: Samples, cond: Conditioning, target: torch.Tensor,
                    b: torch.Tensor, rows: slice) -> tuple[torch.Tensor, dict]:
        """Mean over samples of the (double-sampling) squared residual, plus the KL penalty.
        ``samples``, ``cond``, ``target`` and ``b`` are this rank's ``rows`` of the global batch,
        whose noise draws every rank makes alike and keeps its rows of."""
        cfg = self.config
        shape = samples.x0.shape[1:]
        n = self.config.batch_size
        draws = [tuple(t[rows] for t in mc_draws(n, cfg.n_mc, shape, self.generator, cfg.timesteps))
                 for _ in range(2 if cfg.estimator == "double" else 1)]
        mcs = [mc_losses(self.adapter, samples.x0, cond, s, e, cfg.reduction) for s, e in draws]
        target = target.to(b.device, torch.float32)  # rewards live on the CPU, b on the model's device
        gs = [residual(b, target, m.reference, m.policy, cfg.beta, cfg.gamma) for m in mcs]
        per_sample = double_sampling_surrogate(gs[0], gs[1]) if len(gs) == 2 else gs[0] ** 2
        kl = torch.stack([m.kl for m in mcs]).mean(0)
        loss = per_sample.mean() + cfg.kl_coef * kl.mean() if cfg.kl_coef else per_sample.mean()
        gap = torch.stack([m.reference - m.policy.detach() for m in mcs]).mean(0)
        g0, g1 = gs[0].detach(), gs[-1].detach()
        # residual_sq: the unbiased estimate of g^2 (g_A g_B); naive_sq: the biased g_A^2 (Prop. 1).
        return loss, {"residual_sq": float((g0 * g1).mean()), "naive_sq": float((g0**2).mean()),
                      "loss_gap": float(gap.mean()), "kl": float(kl.detach().mean()), "b": float(b.detach().mean())}

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        total = torch.zeros(())
        logs: dict[str, float] = {}
        # Data parallel: each branch's global batch (samples, offline statistics, noise) is drawn
        # alike on every rank, which trains on its rows of it (whole batches: world size | batch_size).
        rows = self.dist.rows(cfg.batch_size)
        online = self._online_batch(step)
        if online is not None and len(online):
            local = online.take(list(range(len(online)))[rows])
            target = local.advantages if cfg.target == "advantage" else local.rewards
            cond = local.condition(self.adapter)
            loss, parts = self.branch_loss(local, cond, target, self.log_z(cond), rows)
            total = total + loss
            logs.update({f"online/{k}": v for k, v in parts.items()})
            logs["reward/batch_mean"] = float(local.rewards.mean())
        logs.update(self.round_logs)
        if self.offline is not None and self.offline_stats is not None and cfg.offline is not None:
            idx = torch.randint(len(self.offline), (cfg.batch_size,), generator=self.generator)
            self.saw(cfg.batch_size)
            off = self.offline.take(idx)
            mean, sigma = self.offline_stats.update(off.rewards)  # the global batch's statistics, on every rank
            adv = offline_advantages(off.rewards, mean, sigma, cfg.offline.advantage, cfg.offline.a0,
                                     cfg.offline.a_max)[rows]
            off = self.offline.take(idx[rows])
            target = adv if cfg.target == "advantage" else off.rewards
            cond = off.condition(self.adapter)
            b = self.b_offline.expand(len(off)) if cfg.offline.normaliser == "source" else \
                self.log_z(cond).detach()
            loss, parts = self.branch_loss(off, cond, target, b, rows)
            total = total + cfg.offline.weight * loss
            logs.update({f"offline/{k}": v for k, v in parts.items()})
            logs.update({"offline/reward_mean": float(off.rewards.mean()), "offline/advantage_mean": float(adv.mean())})
        if not total.requires_grad:
            raise FCRMDataError(f"step {step}: no sample to train on (every reward was non-finite, or the replay "
                                "filter kept nothing)")
        logs["reward/dropped"] = float(self.dropped)
        if self.buffer is not None:
            logs["replay/size"] = float(len(self.buffer))
        return total, logs

    def train_step(self, step: int) -> dict[str, float]:
        logs = super().train_step(step)
        if self.ema is not None:  # theta_old <- eta theta_old + (1 - eta) theta
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - self.config.ema_decay)
        return logs

    # -- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["fcrm"] = {
            "log_z": self.log_z.state_dict(), "b_offline": self.b_offline.detach().clone(), "dropped": self.dropped,
            "ema": self.ema, "round": None if self.round is None else self.round.state(),
            "round_order": self.round_order, "round_logs": dict(self.round_logs),
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "offline_stats": None if self.offline_stats is None else
            [self.offline_stats.mean, self.offline_stats.second],
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        f = state["fcrm"]
        self.log_z.load_state_dict(f["log_z"])
        with torch.no_grad():
            self.b_offline.copy_(f["b_offline"])
        self.dropped = int(f["dropped"])
        if self.ema is not None:
            self.ema = [t.clone() for t in f["ema"]]
        self.round = None if f["round"] is None else Samples.from_state(f["round"])
        self.round_order = f["round_order"]
        self.round_logs = dict(f["round_logs"])
        if self.buffer is not None:
            self.buffer.load_state_dict(f["buffer"])
        if self.offline_stats is not None and f["offline_stats"] is not None:
            self.offline_stats.mean, self.offline_stats.second = f["offline_stats"]
