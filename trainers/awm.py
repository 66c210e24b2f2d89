"""`awm`: Advantage Weighted Matching (Xue et al. 2025, "Advantage Weighted Matching: Aligning RL
with Pretraining in Diffusion Models"; code github.com/scxue/advantage_weighted_matching), the
baseline FCRM compares against: reward RL as the pretraining flow-matching loss on the policy's own
samples, weighted by their advantages.

Rounds of the current policy's clean samples (any sampler: the method's, tiny the 16-step ODE) are
scored; group-relative advantages (trainers/group_rl.py) are clipped to [-adv_clip, adv_clip] and
rescaled to A' = A / adv_clip x advantage_max. The per-sample log-likelihood is replaced by the
negative (weighted) flow-matching loss at (t, eps), with x_t = (1 - t) x0 + t eps, v = eps - x0:

    log p_theta ~ -w(t, m),  m = ||v_theta(x_t) - v||^2 / D
    w = m (``uniform``), t m (``t``), or t ((m + 1e-10)^p - 1e-10^p) / p (``ghuber``, power p)

and the policy gradient goes through the PPO-clipped ratio against the round's starting (old) policy
on the same (t, eps) (the repo's `loss_type: exp_first`, per (sample, t)):

    rho = exp(log p_theta - log p_old)
    L = mean max(-A' rho, -A' clip(rho, 1 - eps_clip, 1 + eps_clip))
        + kl_coef mean ||v_theta - v_ref||^2 / D + ema_kl_coef mean ||v_theta - v_ema||^2 / D

At rho = 1 (the first step of a round) the gradient is A' grad w: advantage-weighted matching, the
paper's objective. v_ref is the base model (LoRA disabled); v_ema an EMA of the policy, updated
after each round with decay min(ema_decay_rate x step, ema_decay_max) (the repo's
`kl_ema_decay_type: linear`). Timesteps: ``train_timesteps`` sigmas of the method's sampling
schedule, stratified over its steps 1 .. int(K x timestep_fraction) (the first, sigma = 1, left
out: the repo's `time_type: discrete_wo_init`), shared by the batch; fresh noise per sample.

Defaults and their sources (repo advantage_weighted_matching/config/dgx_awm.py, the GenEval and OCR
settings, unless said; the paper's own tables were not checked here): clip range 1, kl_coef 0.003,
advantage_max 1, adv_clip 5 (config/base_awm.py), weighting ghuber with p = 0.25, ema_kl_coef 1 with
the decay capped at 0.3 rising 0.001 per step, train_timesteps 6, timestep_fraction 0.9, global std,
lr 3e-4, group 24. The repo samples with an SA-solver at noise 0.4 (or the ODE, `noise_level 0` in
its PickScore setting); here rollouts use the method's sampler. Scaled for the tiny preset: group 4
x 8 conditions, 2 steps per round, batch 16 with 3 timesteps each, LoRA 8, lr 1.5e-3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from harness.sampling import sigma_schedule
from trainers.claims import Objective, PaperClaim
from trainers.group_rl import GroupRLConfig, SampleRoundTrainer, lerp_weights, noised_rows, using_weights
from trainers.registry import register_trainer


def matching_logp(v_theta: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, weighting: str,
                  power: float) -> torch.Tensor:
    """(N,) the flow-matching log-likelihood surrogate -w(t, m) (see the module docstring)."""
    m = ((v_theta - target) ** 2).flatten(1).mean(1)
    if weighting == "uniform":
        return -m
    if weighting == "t":
        return -sigma * m
    if weighting == "ghuber":
        return -sigma * ((m + 1e-10) ** power - 1e-10**power) / power
    raise ValueError(f"unknown AWM weighting {weighting!r}; allowed: uniform, t, ghuber")


def awm_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, adv_clip: float,
                    advantage_max: float, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate's mean over rows, and the ratio."""
    a = advantages.to(logp.device, logp.dtype).clamp(-adv_clip, adv_clip) / adv_clip * advantage_max
    ratio = torch.exp(logp - logp_old.detach())
    return torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip_range, 1 + clip_range)).mean(), ratio.detach()


class AWMConfig(GroupRLConfig):
    lr: float = 3e-4
    batch_size: int = 16
    adv_std: Literal["group", "global"] = "global"
    advantage_max: float = Field(1.0, gt=0, description="A' = clip(A) / adv_clip x advantage_max")
    clip_range: float = Field(1.0, gt=0, description="PPO clip range of the ratio")
    weighting: Literal["uniform", "t", "ghuber"] = "ghuber"
    ghuber_power: float = Field(0.25, gt=0)
    kl_coef: float = Field(0.003, ge=0, description="weight of ||v_theta - v_ref||^2")
    ema_kl_coef: float = Field(1.0, ge=0, description="weight of ||v_theta - v_ema||^2")
    ema_decay_rate: float = Field(1e-3, ge=0)
    ema_decay_max: float = Field(0.3, ge=0, lt=1)
    train_timesteps: int = Field(6, ge=1, description="sigmas per step, stratified over the schedule")
    timestep_fraction: float = Field(0.9, gt=0, le=1)


@register_trainer
class AWMTrainer(SampleRoundTrainer):
    name = "awm"
    training_objective = Objective("reward/round_mean", "higher", "mean training reward of its rollout rounds")
    report_rank = 70
    claims = (  # FCRM's paper: "Compared to AWM and DiffusionNFT, FCRM achieves the best VBench" scores
        PaperClaim("FCRM", "FCRM raises the latent reward more than AWM at matched compute", "difference",
                   ("fcrm", "awm"), a="fcrm", b="awm", metric="latent_reward"),
    )
    config_class = AWMConfig
    description = "AWM: advantage-weighted flow matching on the policy's own samples (clipped ratio, KL to ref and EMA)"
    replay_state = (*SampleRoundTrainer.replay_state, "old", "ema")
    config: AWMConfig

    def __init__(self, adapter, preset, config: AWMConfig, seed: int, workdir: Path | None = None):
        super().__init__(adapter, preset, config, seed, workdir)
        self.old = [p.detach().clone() for p in self.params]  # the policy at the round's start
        self.ema = [p.detach().clone() for p in self.params]
        self.sigmas = sigma_schedule(self.sampler, adapter.num_train_timesteps)[:-1].float()

    def before_round(self, step: int) -> None:
        if step > 0:
            lerp_weights(self.ema, self.params, min(self.config.ema_decay_rate * step, self.config.ema_decay_max))
        with torch.no_grad():
            torch._foreach_copy_(self.old, [p.detach() for p in self.params])

    def timestep_indices(self) -> torch.Tensor:
        """``train_timesteps`` schedule indices, one per stratum of 1 .. int(K x timestep_fraction)."""
        cfg = self.config
        top = max(int(len(self.sigmas) * cfg.timestep_fraction), 1)
        bounds = torch.linspace(1, top, cfg.train_timesteps + 1)
        lo, hi = bounds[:-1].long(), bounds[1:].long()
        u = torch.rand(cfg.train_timesteps, generator=self.generator)
        return (lo + (u * (hi - lo)).long()).clamp(max=len(self.sigmas) - 1)

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        samples = self.batch(step)
        k = cfg.train_timesteps
        sigma = self.sigmas[self.timestep_indices()].expand(len(samples), k)
        noise = torch.randn((cfg.batch_size, k, *samples.x0.shape[1:]), generator=self.generator)
        x_t, s, target = noised_rows(self.adapter, samples.x0, sigma, noise[self.dist.rows(cfg.batch_size)])
        target = target.float()
        cond = samples.condition(self.adapter).index(torch.arange(len(samples)).repeat_interleave(k))
        s_model = s.to(target.device)
        with torch.no_grad():
            with using_weights(self.params, self.old):
                logp_old = matching_logp(self.adapter.predict(x_t, s, cond).float(), target, s_model, cfg.weighting,
                                         cfg.ghuber_power)
            if cfg.ema_kl_coef:
                with using_weights(self.params, self.ema):
                    v_ema = self.adapter.predict(x_t, s, cond).float()
            if cfg.kl_coef:
                with self.adapter.reference():
                    v_ref = self.adapter.predict(x_t, s, cond).float()
        v = self.adapter.predict(x_t, s, cond).float()
        logp = matching_logp(v, target, s_model, cfg.weighting, cfg.ghuber_power)
        policy, ratio = awm_policy_loss(logp, logp_old, samples.advantages.repeat_interleave(k), cfg.adv_clip,
                                        cfg.advantage_max, cfg.clip_range)
        kl = ((v - v_ref) ** 2).flatten(1).mean(1).mean() if cfg.kl_coef else torch.zeros(())
        ema_kl = ((v - v_ema) ** 2).flatten(1).mean(1).mean() if cfg.ema_kl_coef else torch.zeros(())
        loss = policy + cfg.kl_coef * kl + cfg.ema_kl_coef * ema_kl
        return loss, {"policy": float(policy.detach()), "kl": float(kl.detach()), "ema_kl": float(ema_kl.detach()),
                      "ratio": float(ratio.mean()),
                      "clipfrac": float(((ratio - 1).abs() > cfg.clip_range).float().mean()),
                      **self.step_logs(samples)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "old": [t.clone() for t in self.old], "ema": [t.clone() for t in self.ema]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.old = [t.clone() for t in state["old"]]
        self.ema = [t.clone() for t in state["ema"]]
