"""Primitives shared by the trainers: sigma samplers and the per-sample denoising loss.

Per-sample losses (not batch means) are what the preference and reward-weighted
objectives need; passing the same (sigma, noise) to two models gives common
random numbers, as DPO-style and FCRM objectives require.
"""

from __future__ import annotations

import torch

from harness.models.base import Conditioning, ModelAdapter


def sample_sigmas(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "logit_normal":  # SD3's logit-normal(0, 1)
        return torch.sigmoid(torch.randn(n, generator=generator))
    raise ValueError(f"unknown timestep sampling {kind!r}; allowed: uniform, logit_normal")


def denoising_loss(
    adapter: ModelAdapter, x0: torch.Tensor, cond: Conditioning, sigma: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Per-sample mean squared error of the prediction against the training target: (B,)."""
    pred = adapter.predict(adapter.add_noise(x0, noise, sigma), sigma, cond)
    err = (pred.float() - adapter.training_target(x0, noise, sigma).float()) ** 2
    return err.flatten(1).mean(dim=1)
