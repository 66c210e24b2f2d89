"""Flow-GRPO's stochastic policy: the flow SDE's Gaussian transitions, their log-densities and KL,
and rollouts that keep the trajectory (Liu et al. 2025, arXiv 2505.05470: its ODE-to-SDE conversion
and KL; repo yifan123/flow_grpo, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py).

The ODE x' = x + v dt (sigma from 1 to 0, dt < 0) becomes an SDE with the same marginals; its
Euler-Maruyama step is a Gaussian transition

    x_next ~ N(mu, (sigma_t sqrt(-dt))^2 I),  mu = x + [v + sigma_t^2 / (2 s) (x + (1 - s) v)] dt,
    sigma_t = a sqrt(s / (1 - s))

with noise level ``a`` (``eta``; the paper's a = 0.7). ``s`` inside sigma_t is capped at
``sigma_max`` (< 1) to avoid 1/0 at s = 1 (the repo's sd3_sde_with_logprob.py substitutes the
schedule's second sigma there). The step that lands on sigma = 0 adds no noise (harness/sampling.py),
so it has no density and is never trained on (the repo's configs skip it too: timestep_fraction 0.99
of 10 steps).

Log-densities are averaged over the sample's dimensions, not summed (the repo's convention, with
which its clip range 1e-4 and KL beta were tuned): a per-dimension log-ratio keeps exp(.) finite.
The closed-form KL between the policy's and the reference's transitions (same covariance) is
||mu_theta - mu_ref||^2 / (2 sigma_t^2 (-dt)) (the paper's closed form); it is averaged over dimensions
the same way. The repo's code divides by 2 sigma_t^2 only (no dt): its KL is (-dt) times this one.

Flow-GRPO-Fast (the repo's README, `sde_window_size` / `sde_window_range`): SDE steps only in a
window of ``window`` consecutive steps starting at a random step before ``window_range``, ODE steps
elsewhere; only the window's transitions are trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from harness.distributed import current
from harness.models.base import Conditioning, ModelAdapter
from harness.sampling import initial_noise, sde_mean


def noise_level(s: torch.Tensor, eta: float, sigma_max: float) -> torch.Tensor:
    """sigma_t = eta sqrt(s / (1 - s)) with s capped at sigma_max."""
    s_c = s.clamp(max=sigma_max)
    return eta * torch.sqrt(s_c / (1 - s_c))


def transition(x: torch.Tensor, v: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, eta: float,
               sigma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the Gaussian step from sigma ``s`` to ``s_next`` (< s) given velocity ``v``;
    ``s`` and ``s_next`` broadcast against x (shape (N, 1, ..., 1) or scalars)."""
    sigma_t = noise_level(s, eta, sigma_max)
    dt = s_next - s
    return sde_mean(x, v, s, dt, sigma_t), sigma_t * torch.sqrt(-dt)


def gaussian_logprob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N,) log N(x_next; mean, std^2 I), averaged over each sample's dimensions."""
    logp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.flatten(1).mean(1)


def gaussian_kl(mean_a: torch.Tensor, mean_b: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N,) KL(N(mean_a, std^2 I) || N(mean_b, std^2 I)) averaged over dimensions: (a - b)^2 / (2 std^2)."""
    return ((mean_a - mean_b) ** 2 / (2 * std**2)).flatten(1).mean(1)


@dataclass
class Trajectories:
    """The trained transitions of a round's rollouts: J steps per sample."""

    x: torch.Tensor  # (N, J, *latent) the state before each trained step
    x_next: torch.Tensor  # (N, J, *latent) the state it stepped to
    logp: torch.Tensor  # (N, J) log-density of the step under the sampling policy
    sigma: torch.Tensor  # (J,) sigma of each trained step
    sigma_next: torch.Tensor  # (J,)

    def take(self, idx: Sequence[int]) -> Trajectories:
        i = torch.as_tensor(list(idx), dtype=torch.long)
        return Trajectories(self.x[i], self.x_next[i], self.logp[i], self.sigma, self.sigma_next)

    def state(self) -> dict[str, torch.Tensor]:
        return {"x": self.x, "x_next": self.x_next, "logp": self.logp, "sigma": self.sigma,
                "sigma_next": self.sigma_next}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Trajectories:
        return cls(state["x"], state["x_next"], state["logp"], state["sigma"], state["sigma_next"])


@torch.no_grad()
def sde_trajectories(adapter: ModelAdapter, cond: Conditioning, seeds: Sequence[int], sigmas: torch.Tensor,
                     eta: float, sigma_max: float, sde_steps: range) -> tuple[torch.Tensor, Trajectories]:
    """Clean samples and the trajectories of ``sde_steps`` (indices into the schedule's steps, SDE;
    ODE elsewhere). Noise: one generator per video, seeded by its seed (as harness/sampling.py), so
    a rollout depends only on its condition and seed."""
    x = initial_noise(adapter.latent_shape(len(seeds)), seeds)
    generators = [torch.Generator().manual_seed(int(s) + 0x5DE) for s in seeds]
    b = x.shape[0]
    trained = [i for i in sde_steps if float(sigmas[i + 1]) > 0]
    xs, nexts, logps = [], [], []
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = adapter.predict(x, torch.full((b,), s, dtype=x.dtype), cond).to(x.dtype)
        if i not in sde_steps:
            x = x + (s_next - s) * v
            continue
        mean, std = transition(x, v, torch.tensor(s, dtype=x.dtype), torch.tensor(s_next, dtype=x.dtype), eta,
                               sigma_max)
        if i not in trained:  # the last step lands on the data: no fresh noise, no density
            x = mean
            continue
        z = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x.device, x.dtype)
        x_next = mean + std * z
        xs.append(x)
        nexts.append(x_next)
        logps.append(gaussian_logprob(x_next, mean, std))
        x = x_next
    sig = sigmas.to(torch.float32)
    stack = (lambda t: torch.stack(t, 1)) if trained else (lambda t: x.new_zeros((b, 0, *x.shape[1:])))
    return x, Trajectories(stack(xs), stack(nexts), torch.stack(logps, 1) if trained else x.new_zeros((b, 0)),
                           sig[trained], sig[[i + 1 for i in trained]])


def sde_trajectories_sharded(adapter: ModelAdapter, cond_for: Callable[[list[int]], Conditioning],
                             seeds: Sequence[int], sigmas: torch.Tensor, eta: float, sigma_max: float,
                             sde_steps: range) -> tuple[torch.Tensor, Trajectories]:
    """``sde_trajectories`` of rows 0..len(seeds)-1, split over the ranks (rank r samples rows
    r, r + W, ...) and gathered on every rank, on the CPU."""
    d = current()
    mine = list(d.strided(len(seeds)))
    if mine:
        x0, traj = sde_trajectories(adapter, cond_for(mine), [seeds[i] for i in mine], sigmas, eta, sigma_max,
                                    sde_steps)
        local = (x0.cpu(), {k: v.cpu() for k, v in traj.state().items()})
    else:
        local = None
    pieces = [(rows, part) for rows, part in d.gather((mine, local)) if part is not None]
    x0_all = torch.empty((len(seeds), *pieces[0][1][0].shape[1:]), dtype=pieces[0][1][0].dtype)
    parts = {k: torch.empty((len(seeds), *v.shape[1:]), dtype=v.dtype) for k, v in pieces[0][1][1].items()
             if k in ("x", "x_next", "logp")}
    for rows, (x0, state) in pieces:
        x0_all[rows] = x0
        for k in parts:
            parts[k][rows] = state[k]
    head = pieces[0][1][1]
    return x0_all, Trajectories(parts["x"], parts["x_next"], parts["logp"], head["sigma"], head["sigma_next"])
