"""`flow-grpo`: Flow-GRPO (Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via Online
RL", arXiv 2505.05470; code github.com/yifan123/flow_grpo), online RL through the flow SDE.

A rollout round samples ``group_size`` trajectories for each of ``conditions`` conditions with the
flow SDE (trainers/flow_sde.py: the ODE turned into an SDE with the same marginals, noise level
``eta``), keeping every state x_k, the next state x_{k+1} and log pi_old(x_{k+1} | x_k). Rewards
of the clean samples give the group-relative advantages (trainers/group_rl.py)

    A_i = (R_i - mean_group R) / (std_group R + 1e-4),  clipped to [-adv_clip, adv_clip].

Each step re-evaluates the policy's transition on the trained steps of ``batch_size`` rollouts and
minimises the clipped surrogate with the KL to the reference (the paper's GRPO objective):

    rho = exp(log pi_theta(x_{k+1} | x_k) - log pi_old(x_{k+1} | x_k))
    L = mean_{i,k} max(-A_i rho, -A_i clip(rho, 1 - eps, 1 + eps)) + beta mean_{i,k} KL(pi_theta || pi_ref)

with the closed-form KL between the two Gaussian transitions (trainers/flow_sde.py);
pi_ref is the base model (LoRA disabled). Log-densities and the KL are per-dimension means (the
repo's convention; see trainers/flow_sde.py). Options:

* ``timestep_fraction``: train on the first fraction of each trajectory's steps (the repo's
  `train.timestep_fraction`);
* ``sde_window`` (Flow-GRPO-Fast, the repo's README: `sde_window_size`, `sde_window_range`): a
  window of that many SDE steps, placed at random per round among the first ``sde_window_range``
  steps, ODE elsewhere; only the window is trained (cost per sample: the window, not the trajectory);
* ``rollout_steps``: the SDE's step count, fewer than evaluation's (the paper's "denoising
  reduction": train with T = 10, evaluate with T = 40);
* ``adv_std: global``: one std over the whole round (the repo's configs set `sample.global_std`).

Defaults and their sources (equation and section numbers of the paper were not re-checked here;
the repo files were read at commit ac4c86e): eta = 0.7 (repo config/base.py
`sample.noise_level`); clip range eps = 1e-4 (config/base.py `train.clip_range`; the paper's value
was not verified here); adv_clip 5 (config/base.py `train.adv_clip_max`); beta = 0.04
(config/grpo.py, the GenEval and OCR settings); lr 3e-4 (config/base.py `train.learning_rate`,
with LoRA); rollout_steps 10 (config/grpo.py `sample.num_steps`, eval 40); group size 24 and 48
groups per round (config/grpo.py `num_image_per_prompt`, the README's "Important Hyperparameters"),
each round's samples used for 2 optimizer steps (config/grpo.py
`gradient_accumulation_steps = num_batches_per_epoch // 2`). Scaled for the tiny preset
(harness/presets/tiny.yaml): group 4 x 8 conditions, 2 steps per round as the repo, half of each
round per step (batch 16), 8 rollout steps against evaluation's 16 (the paper's 1:4 would leave
4 steps), LoRA rank 8, lr 1.5e-3 as the other tiny methods.

Departures: the last step (onto sigma = 0) adds no noise in this harness's sampler, so it is never
trained (the repo's configs drop it with timestep_fraction 0.99); the KL is the exact Gaussian KL
(the repo's code omits its 1/(-dt) factor); eval uses the method's sampler (tiny: the 16-step ODE).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from harness.data.source import clip_batch
from harness.sampling import SamplerConfig, sigma_schedule
from trainers.base import Trainer
from trainers.claims import Objective, PaperClaim
from trainers.fcrm_data import Samples
from trainers.flow_sde import Trajectories, gaussian_kl, gaussian_logprob, sde_trajectories_sharded, transition
from trainers.group_rl import GroupRLConfig, batch_picks, finite_round, round_logs, score_sharded
from trainers.registry import register_trainer
from trainers.rewards import build_reward


def flow_grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip_range: float,
                   adv_clip: float, kl: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO objective over (sample, step) rows: the mean clipped surrogate plus kl_coef times the mean KL.
    Returns the loss and its parts (policy term, KL, ratio, fraction of rows clipped)."""
    a = advantages.to(logp.device, logp.dtype).clamp(-adv_clip, adv_clip)
    ratio = torch.exp(logp - logp_old.to(logp.device, logp.dtype))
    surrogate = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip_range, 1 + clip_range))
    policy = surrogate.mean()
    loss = policy + kl_coef * kl.mean() if kl_coef else policy
    return loss, {"policy": policy.detach(), "kl": kl.detach().mean(), "ratio": ratio.detach().mean(),
                  "clipfrac": ((ratio.detach() - 1).abs() > clip_range).float().mean()}


class FlowGRPOConfig(GroupRLConfig):
    lr: float = 3e-4
    batch_size: int = 16
    eta: float = Field(0.7, gt=0, description="the SDE's noise level a")
    sigma_max: float = Field(0.98, gt=0, lt=1, description="sigma cap inside the noise level (avoids 1/0)")
    rollout_steps: int = Field(10, ge=2, description="SDE steps of a rollout (evaluation uses the method's sampler)")
    clip_range: float = Field(1e-4, gt=0, description="PPO clip range eps")
    kl_coef: float = Field(0.04, ge=0, description="beta, the KL weight")
    timestep_fraction: float = Field(1.0, gt=0, le=1, description="train on the first fraction of the steps")
    sde_window: int | None = Field(None, ge=1, description="Flow-GRPO-Fast: SDE steps per rollout (None: all)")
    sde_window_range: int | None = Field(
        None, ge=1, description="Flow-GRPO-Fast: the window starts before this step (None: anywhere it fits)")

    @model_validator(mode="after")
    def _check_window(self) -> FlowGRPOConfig:
        if self.sde_window is not None and self.sde_window > self.rollout_steps - 1:
            raise ValueError(f"sde_window={self.sde_window} exceeds the {self.rollout_steps - 1} trainable steps of "
                             f"rollout_steps={self.rollout_steps} (the last step adds no noise)")
        return self


@register_trainer
class FlowGRPOTrainer(Trainer):
    name = "flow-grpo"
    training_objective = Objective("reward/round_mean", "higher", "mean training reward of its rollout rounds")
    report_rank = 25
    # SHIFT's paper (Table 1) times an epoch of Flow-GRPO at 19.35x SFT's and SHIFT's at 2.46x: SHIFT
    # costs 2.46 / 19.35 = 0.127 of Flow-GRPO per step (within +20 %).
    claims = (
        PaperClaim("SHIFT", "SHIFT trains at about 0.127× Flow-GRPO's cost per step (2.46× vs 19.35× SFT; +20 %)",
                   "time_ratio", ("shift", "flow-grpo"), a="shift", b="flow-grpo", ratio=0.127),
    )
    config_class = FlowGRPOConfig
    description = "Flow-GRPO: clipped policy ratio over flow-SDE transitions, group advantages, closed-form KL"
    replay_state = ("round", "round_order", "traj", "round_logs", "dropped")
    config: FlowGRPOConfig

    def __init__(self, adapter, preset, config: FlowGRPOConfig, seed: int, workdir: Path | None = None):
        super().__init__(adapter, preset, config, seed, workdir)
        self.reward = build_reward(config.reward.name, adapter, preset, **config.reward.options())
        self.sigmas = sigma_schedule(SamplerConfig(kind="sde", num_steps=config.rollout_steps,
                                                   shift=self.sampler.shift), adapter.num_train_timesteps)
        self.dropped = 0
        self.round: Samples | None = None
        self.traj: Trajectories | None = None
        self.round_order: torch.Tensor | None = None
        self.round_logs: dict[str, float] = {}

    def _sde_steps(self) -> range:
        """All steps, or (Fast) a window of ``sde_window`` steps at a random start."""
        cfg = self.config
        if cfg.sde_window is None:
            return range(cfg.rollout_steps)
        last_start = cfg.rollout_steps - 1 - cfg.sde_window
        if cfg.sde_window_range is not None:
            last_start = min(last_start, cfg.sde_window_range - 1)
        start = int(torch.randint(last_start + 1, (1,), generator=self.generator))
        return range(start, start + cfg.sde_window)

    def _rollout_round(self) -> None:
        cfg = self.config
        idx = torch.randint(cfg.condition_pool, (cfg.conditions,), generator=self.generator).tolist()
        batch = clip_batch(self.preset, cfg.split, idx)
        groups = [i for i in range(cfg.conditions) for _ in range(cfg.group_size)]
        seeds = torch.randint(2**31 - 1, (len(groups),), generator=self.generator).tolist()
        steps = self._sde_steps()
        first, captions = batch.first_frames[groups], [batch.captions[i] for i in groups]
        was_training = self.adapter.model.training
        self.adapter.model.eval()
        try:
            x0, traj = sde_trajectories_sharded(
                self.adapter, lambda r: self.adapter.encode_condition(first[r], [captions[i] for i in r]), seeds,
                self.sigmas, cfg.eta, cfg.sigma_max, steps)
        finally:
            self.adapter.model.train(was_training)
        self.saw(len(groups))
        zeros = torch.zeros(len(groups), dtype=torch.float64)
        samples = Samples(x0, first, captions, zeros, zeros.clone(), [batch.specs[i] for i in groups])
        samples.rewards = score_sharded(self.reward, samples, self.adapter, self.dist)
        kept, dropped = finite_round(samples, groups, cfg.adv_std)
        self.dropped += dropped
        self.round, self.traj = samples.take(kept), traj.take(kept.tolist())
        self.round_logs = round_logs(self.round.rewards)
        self.round_order = torch.randperm(len(self.round), generator=self.generator)

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        if step % cfg.inner_steps == 0 or self.round is None:
            self._rollout_round()
        assert self.round is not None and self.traj is not None and self.round_order is not None
        if len(self.round) == 0:
            raise ValueError(f"step {step}: every reward of the round was non-finite; nothing to train on")
        picks = batch_picks(self.round_order, step % cfg.inner_steps, cfg.batch_size)[self.dist.rows(cfg.batch_size)]
        samples, traj = self.round.take(picks), self.traj.take(picks)
        n_steps = max(1, int(traj.logp.shape[1] * cfg.timestep_fraction))
        n = len(picks)
        device = next(self.adapter.model.parameters()).device
        x = traj.x[:, :n_steps].flatten(0, 1).to(device)
        x_next = traj.x_next[:, :n_steps].flatten(0, 1).to(device)
        s, s_next = traj.sigma[:n_steps].repeat(n).to(device), traj.sigma_next[:n_steps].repeat(n).to(device)
        cond = samples.condition(self.adapter).index(torch.arange(n).repeat_interleave(n_steps))
        col = (-1, *[1] * (x.ndim - 1))
        if cfg.kl_coef:
            with torch.no_grad(), self.adapter.reference():
                v_ref = self.adapter.predict(x, s, cond).float()
            mean_ref, _ = transition(x, v_ref, s.view(col), s_next.view(col), cfg.eta, cfg.sigma_max)
        v = self.adapter.predict(x, s, cond).float()
        mean, std = transition(x, v, s.view(col), s_next.view(col), cfg.eta, cfg.sigma_max)
        logp = gaussian_logprob(x_next, mean, std)
        kl = gaussian_kl(mean, mean_ref, std) if cfg.kl_coef else torch.zeros_like(logp)
        loss, parts = flow_grpo_loss(logp, traj.logp[:, :n_steps].flatten(), samples.advantages.repeat_interleave(
            n_steps), cfg.clip_range, cfg.adv_clip, kl, cfg.kl_coef)
        logs = {k: float(v) for k, v in parts.items()}
        logs.update(self.round_logs)
        logs.update({"reward/batch_mean": float(samples.rewards.mean()), "reward/dropped": float(self.dropped)})
        return loss, logs

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["flow_grpo"] = {"round": None if self.round is None else self.round.state(),
                              "traj": None if self.traj is None else self.traj.state(),
                              "round_order": self.round_order, "round_logs": dict(self.round_logs),
                              "dropped": self.dropped}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        f = state["flow_grpo"]
        self.round = None if f["round"] is None else Samples.from_state(f["round"])
        self.traj = None if f["traj"] is None else Trajectories.from_state(f["traj"])
        self.round_order, self.round_logs, self.dropped = f["round_order"], dict(f["round_logs"]), int(f["dropped"])
