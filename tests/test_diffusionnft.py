"""DiffusionNFT: the optimality probability and the negative-aware loss against numbers worked out by
hand from the paper's equations (v+ = (1 - beta) v_old + beta v_theta, v- = (1 + beta) v_old - beta
v_theta, r-weighted), its minimiser derived independently, and the trainer on the tiny model."""

import math

import pytest
import torch

from harness.config import load_preset, parse_override
from harness.models.tiny_wan import TinyWanAdapter
from trainers.diffusionnft import DiffusionNFTConfig, DiffusionNFTTrainer, nft_loss, optimality_probability


def test_optimality_probability_by_hand():
    # r = 1/2 + 1/2 clip(A / 5, -1, 1): A = -7 -> 0, 0 -> 1/2, 2.5 -> 3/4, 9 -> 1
    assert optimality_probability(torch.tensor([-7.0, 0.0, 2.5, 9.0]), 5.0).tolist() == [0.0, 0.5, 0.75, 1.0]


def _one(v_theta, weighting, beta=0.5, sigma=0.5):
    """One row: v_old = 0.5, target v = 0.6, r = 0.75 (A = 2.5 of 5), adv_clip / beta = 5 / beta."""
    return nft_loss(v_theta.view(1, 1), torch.full((1, 1), 0.5), torch.full((1, 1), 0.6), torch.tensor([sigma]),
                    torch.tensor([0.75]), beta, 5.0, weighting)


def test_uniform_loss_and_gradient_by_hand():
    """beta = 1/2, v_theta = 0.8: v+ = 0.65, v- = 0.35; l+ = 0.05^2 = 0.0025, l- = 0.25^2 = 0.0625;
    10 (0.75 x 0.0025 + 0.25 x 0.0625) = 0.175. d/dv_theta = 10 [2 r beta (v+ - v) - 2 (1 - r) beta (v- - v)]
    = 10 [0.0375 + 0.0625] = 1.0."""
    v = torch.tensor(0.8, requires_grad=True)
    loss = _one(v, "uniform")
    assert float(loss) == pytest.approx(0.175)
    loss.sum().backward()
    assert float(v.grad) == pytest.approx(1.0)


def test_adaptive_loss_and_gradient_by_hand():
    """x0-space errors e = t (v - u) at t = 1/2: e+ = -0.025, e- = 0.125; l = e^2 / |e| (weight
    detached): 0.025 and 0.125; 10 (0.75 x 0.025 + 0.25 x 0.125) = 0.5. Gradient: de+/dv_theta =
    -t beta, so d l+/dv_theta = 2 e+ (-1/4) / 0.025 = 0.5 and d l-/dv_theta = 2 e- (1/4) / 0.125 = 0.5:
    10 (0.75 x 0.5 + 0.25 x 0.5) = 5."""
    v = torch.tensor(0.8, requires_grad=True)
    loss = _one(v, "adaptive")
    assert float(loss) == pytest.approx(0.5)
    loss.sum().backward()
    assert float(v.grad) == pytest.approx(5.0)


def test_the_minimiser_is_the_old_velocity_moved_by_2r_minus_1_over_beta():
    """Setting d/dv_theta [r (v+ - v)^2 + (1 - r) (v- - v)^2] = 0 with v+- - v = (v_old - v) +- beta (v_theta
    - v_old) gives (2r - 1)(v_old - v) + beta (v_theta - v_old) = 0: v_theta* = v_old + (2r - 1)/beta (v - v_old).
    beta = 1, r = 3/4: 0.5 + 0.5 x 0.1 = 0.55, where the gradient vanishes."""
    v = torch.tensor(0.55, requires_grad=True)
    _one(v, "uniform", beta=1.0).sum().backward()
    assert abs(float(v.grad)) < 1e-6


@pytest.fixture(scope="module")
def preset():
    return load_preset("tiny", [parse_override("sampler.num_steps=2")])


def test_trains_and_the_gradient_reaches_the_lora(preset):
    cfg = DiffusionNFTConfig(conditions=2, group_size=2, batch_size=2, train_timesteps=2, kl_coef=0.1)
    tr = DiffusionNFTTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0)
    loss, logs = tr.compute_loss(0)
    assert torch.isfinite(loss) and logs["old_deviation"] == 0.0  # the old policy starts as the policy
    tr.optimizer.zero_grad()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.params)
    assert all(math.isfinite(v) for v in tr.train_step(1).values())
    before = [t.clone() for t in tr.old]
    tr.train_step(2)  # a new round: old <- d old + (1 - d) theta with d = min(0.001 x 2, 0.5)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.old, strict=True))
    assert tr.old_decay(2) == pytest.approx(0.002) and tr.old_decay(10**6) == 0.5
