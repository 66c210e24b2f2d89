"""FCRM's objective (Forward-Consistent Reward Matching, paper 002: Sec. 3, App. D).

The forward denoising loss becomes a loss-induced score; reward alignment is a one-step
GFlowNet matching problem whose residual is pointwise in (x0, c) (Eq. 4)::

    g(x0, c) = b_phi(c) - beta * r(x0, c) + (L_ref(x0; c) - L_theta(x0; c)) / gamma

with ``r`` replaced in practice by the detached group-normalised advantage A (App. D.2;
``target='reward'`` keeps the raw reward for the ablation). L is estimated by Eq. 6 with
N_mc (tau, eps) draws shared by policy and reference (common random numbers); w(tau) = 1.

Eq. 3 writes the per-sample loss as a squared L2 *norm* (a sum over the sample's
dimensions); ``reduction='sum'`` follows it, ``'mean'`` divides by the dimension (which
amounts to gamma * D). The scale matters: it sets how far L_theta may move from L_ref
before the residual reaches zero.

Squaring a one-batch estimate is biased upward by its Monte-Carlo variance
(Proposition 1); the double-sampling estimator draws two independent noise batches A and
B and uses g_A * g_B, whose expectation is g^2. Its gradient is taken through the
symmetric stop-gradient surrogate sg(g_A) g_B + sg(g_B) g_A (Eq. 7), which has the
gradient of g_A * g_B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from harness.models.base import Conditioning, ModelAdapter


# -- the residual and its estimators ----------------------------------------------------------
def residual(b: torch.Tensor, target: torch.Tensor, l_ref: torch.Tensor, l_theta: torch.Tensor,
             beta: float, gamma: float) -> torch.Tensor:
    """Eq. 4 per sample: b - beta * target + (L_ref - L_theta) / gamma."""
    return b - beta * target + (l_ref - l_theta) / gamma


def double_sampling_surrogate(g_a: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
    """Eq. 7's symmetric stop-gradient surrogate, per sample. Its value is 2 g_A g_B (the
    unbiased estimate of g^2 is g_A g_B); its gradient is that of g_A g_B."""
    return g_a.detach() * g_b + g_b.detach() * g_a


# -- advantages ----------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """App. D.2: (r - group mean) / group std (population std), per group of samples of the
    same condition; detached. A group whose rewards are all equal carries no signal: A = 0."""
    rewards = rewards.detach().double()
    out = torch.zeros_like(rewards)
    for g in torch.unique(groups):
        m = groups == g
        r = rewards[m]
        std = r.std(unbiased=False)
        out[m] = (r - r.mean()) / std if std > 0 else 0.0
    return out


@dataclass
class SourceStats:
    """Source-level reward normalisation of the offline branch (App. D.2): EMA of the batch
    mean and second moment; sigma = sqrt(max(m - mu^2, sigma_min^2))."""

    decay: float = 0.9
    sigma_min: float = 1e-2
    mean: float | None = None
    second: float | None = None

    def update(self, rewards: torch.Tensor) -> tuple[float, float]:
        mu, m = float(rewards.mean()), float((rewards.double() ** 2).mean())
        if self.mean is None or self.second is None:
            self.mean, self.second = mu, m
        else:
            self.mean = self.decay * self.mean + (1 - self.decay) * mu
            self.second = self.decay * self.second + (1 - self.decay) * m
        return self.mean, self.sigma

    @property
    def sigma(self) -> float:
        assert self.mean is not None and self.second is not None
        return max(self.second - self.mean**2, self.sigma_min**2) ** 0.5


def offline_advantages(rewards: torch.Tensor, mean: float, sigma: float, mode: str, a0: float = 1.0,
                       a_max: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """``signed``: (r - mu) / (sigma + eps). ``nonnegative`` (App. D.2, Eq. 1):
    clip((r - mu) / (sigma + eps) + a0, 0, A_max): offline videos as positive anchors."""
    a = (rewards.detach().double() - mean) / (sigma + eps)
    if mode == "signed":
        return a
    if mode == "nonnegative":
        return (a + a0).clamp(0.0, a_max)
    raise ValueError(f"unknown offline advantage mode {mode!r}; allowed: signed, nonnegative")


# -- the Monte-Carlo loss estimate ----------------------------------------------------------------
def mc_draws(n: int, n_mc: int, shape: Sequence[int], generator: torch.Generator,
             timesteps: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """N_mc (sigma, noise) draws per sample: sigma ~ U(0, 1), or uniform over a few-step
    generator's fixed timestep set (App. D.3, sigmas = timesteps / 1000)."""
    if timesteps:
        table = torch.tensor([t / 1000.0 for t in timesteps])
        sigma = table[torch.randint(len(table), (n, n_mc), generator=generator)]
    else:
        sigma = torch.rand(n, n_mc, generator=generator)
    return sigma, torch.randn((n, n_mc, *shape), generator=generator)


@dataclass
class MCLosses:
    policy: torch.Tensor  # (B,) L_theta estimate, with gradient
    reference: torch.Tensor  # (B,) L_ref estimate on the same draws, no gradient
    kl: torch.Tensor  # (B,) ||v_theta - v_ref||^2 on the same draws, same reduction (the KL penalty's estimate)


def mc_losses(adapter: ModelAdapter, x0: torch.Tensor, cond: Conditioning, sigma: torch.Tensor,
              noise: torch.Tensor, reduction: str = "sum") -> MCLosses:
    """Eq. 6 for policy and reference with common random numbers; (sigma, noise) from mc_draws."""
    b, n_mc = sigma.shape
    rows = torch.arange(b).repeat_interleave(n_mc)
    x0_rep, c_rep = x0[rows], cond.index(rows)
    s, eps = sigma.reshape(-1), noise.reshape(b * n_mc, *x0.shape[1:])
    x_t, target = adapter.add_noise(x0_rep, eps, s), adapter.training_target(x0_rep, eps, s)
    pred = adapter.predict(x_t, s, c_rep).float()
    with torch.no_grad(), adapter.reference():
        pred_ref = adapter.predict(x_t, s, c_rep).float()

    def per_sample(err: torch.Tensor) -> torch.Tensor:
        flat = err.flatten(1)
        red = flat.sum(1) if reduction == "sum" else flat.mean(1)
        return red.view(b, n_mc).mean(1)

    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown loss reduction {reduction!r}; allowed: sum, mean")
    target = target.float()
    # The KL estimate takes the loss's own reduction, so its coefficient is in the residual's units
    # (a per-dimension mean would make even kl_coef = 1 vanish next to a summed loss).
    return MCLosses(per_sample((pred - target) ** 2), per_sample((pred_ref - target) ** 2),
                    per_sample((pred - pred_ref) ** 2))


# -- b_phi: the condition-dependent log-normaliser ---------------------------------------------------
def image_plane(first_frame: torch.Tensor) -> torch.Tensor:
    """The image condition as (B, C, H, W): Wan I2V keeps a latent video whose first frame is the
    image; a text-only model (Wan T2V) has none, a (B, 0) tensor, which gives no image features."""
    ff = first_frame.float()
    if ff.ndim == 5:
        ff = ff[:, :, 0]
    return ff if ff.ndim == 4 else ff.reshape(ff.shape[0], 0, 1, 1)


class LogNormalizer(nn.Module):
    """App. D.1: the condition vector (mean-pooled caption tokens; for image-to-video also the
    first frame, average-pooled to 4x4) through an MLP with SiLU, hidden 256, whose last layer
    is zero-initialised so b_phi starts at 0 everywhere."""

    def __init__(self, text_dim: int, image_channels: int, hidden: int = 256, image_grid: int = 4):
        super().__init__()
        self.image_grid = image_grid
        self.mlp = nn.Sequential(nn.Linear(text_dim + image_channels * image_grid**2, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def condition_vector(self, cond: Conditioning) -> torch.Tensor:
        text = cond.text.float()
        keep = (text.abs().sum(-1, keepdim=True) > 0).float()  # padding tokens are zeros
        pooled = (text * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        plane = image_plane(cond.first_frame)
        image = F.adaptive_avg_pool2d(plane, self.image_grid).flatten(1) if plane.shape[1] else plane.flatten(1)
        return torch.cat([pooled, image], dim=1)

    def forward(self, cond: Conditioning) -> torch.Tensor:
        return self.mlp(self.condition_vector(cond)).squeeze(-1)
