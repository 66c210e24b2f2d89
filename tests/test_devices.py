"""Trainers draw noise, sigmas and labels from CPU generators (reproducible on any device) while a
real model's latents live on its GPU. The meta device stands in for the GPU here: mixing it with a
CPU tensor raises, as mixing CUDA and CPU does, so these checks fail wherever the two would meet
unconverted."""

from __future__ import annotations

import pytest
import torch

from harness.config import load_preset
from harness.models.tiny_wan import TinyWanAdapter

META = torch.device("meta")


def test_mixing_meta_and_cpu_raises_as_cuda_does():
    with pytest.raises(RuntimeError, match="device"):
        torch.ones(2, device=META) * torch.ones(2)


def test_noise_from_a_cpu_generator_meets_latents_on_the_models_device():
    adapter = TinyWanAdapter.load(load_preset("tiny").base_checkpoint_path())
    x0 = torch.randn(2, 3, 4, 8, 8, device=META)
    noise = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.rand(2, generator=torch.Generator().manual_seed(1))
    assert adapter.add_noise(x0, noise, sigma).device == META
    assert adapter.training_target(x0, noise, sigma).device == META
    # On one device the arithmetic is unchanged.
    x0 = torch.randn(2, 3, 4, 8, 8)
    s = sigma.view(-1, 1, 1, 1, 1)
    assert torch.equal(adapter.add_noise(x0, noise, sigma), (1 - s) * x0 + s * noise)
    assert torch.equal(adapter.training_target(x0, noise, sigma), noise - x0)


def test_latent_reward_head_runs_where_its_features_are():
    from harness.scorers.latent_rm import RewardHead

    head = RewardHead(feature_dim=8, text_dim=4).to(META)
    assert head(torch.randn(2, 5, 8, device=META), torch.randn(2, 3, 4, device=META)).shape == (2,)
