"""Samplers against a case with a known answer: Gaussian data under rectified flow.

For x0 ~ N(mu, s^2) and x_sigma = (1 - sigma) x0 + sigma eps, the marginal is
N((1 - sigma) mu, A(sigma)) with A = (1 - sigma)^2 s^2 + sigma^2, and the
probability-flow ODE is the affine map x_sigma = (1 - sigma) mu + sqrt(A) z.
Integrating from sigma = 1 (x = z) to 0 must therefore give mu + s z.
"""

import math

import pytest
import torch

from harness.models.base import Conditioning
from harness.sampling import SamplerConfig, guided_velocity, initial_noise, integrate, sample, sigma_schedule

MU, S = 0.7, 0.3


def gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    a = (1 - s) ** 2 * S**2 + s**2
    z = (x - (1 - s) * MU) / a.sqrt()
    return -MU + (s - (1 - s) * S**2) / a.sqrt() * z


def _ode_error(steps: int, shift: float) -> float:
    z = torch.randn(64, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cfg = SamplerConfig(kind="ode", num_steps=steps, shift=shift)
    x = integrate(gaussian_velocity, z.clone(), sigma_schedule(cfg), cfg)
    return (x - (MU + S * z)).abs().max().item()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ode_recovers_the_analytic_transport_at_first_order(shift):
    assert _ode_error(1600, shift) < 4e-3
    ratio = _ode_error(100, shift) / _ode_error(400, shift)
    assert 3.0 < ratio < 5.0  # Euler: 4x the steps, 1/4 the error


def test_sde_with_zero_eta_is_the_ode():
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ode = SamplerConfig(kind="ode", num_steps=20)
    sde = SamplerConfig(kind="sde", num_steps=20, eta=0.0)
    a = integrate(gaussian_velocity, z.clone(), sigma_schedule(ode), ode)
    b = integrate(gaussian_velocity, z.clone(), sigma_schedule(sde), sde, seeds=list(range(8)))
    assert torch.equal(a, b)


def test_sde_keeps_the_data_marginal():
    n = 1000
    seeds = list(range(n))
    z = initial_noise((n, 4), seeds).double()
    cfg = SamplerConfig(kind="sde", num_steps=200, eta=0.7)
    x = integrate(gaussian_velocity, z, sigma_schedule(cfg), cfg, seeds=seeds)
    assert abs(x.mean().item() - MU) < 0.02
    assert abs(x.std().item() - S) < 0.02
    # and it is stochastic: samples are not the ODE's deterministic image of z
    assert (x - (MU + S * z)).abs().mean() > 0.05


def test_few_step_schedule():
    cfg = SamplerConfig(timesteps=[1000, 757, 522])
    assert torch.allclose(sigma_schedule(cfg), torch.tensor([1.0, 0.757, 0.522, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly descending"):
        SamplerConfig(timesteps=[500, 757])


def test_noise_depends_only_on_the_seed():
    a = initial_noise((3, 2, 4), [5, 6, 7])
    b = initial_noise((2, 2, 4), [7, 5])
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])


class _LinearAdapter:
    """A stand-in with a caption-dependent velocity, to check the CFG combination."""

    num_train_timesteps = 1000

    def latent_shape(self, batch):
        return (batch, 1, 2, 2, 2)

    def decode_latents(self, x):
        return x

    def predict(self, x, sigma, cond):
        return x * 0.1 + cond.text.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)


def _cond(n):
    return Conditioning(torch.zeros(n, 1, 2, 2), torch.ones(n, 3, 4), tuple("c" for _ in range(n)))


def test_cfg_combines_conditional_and_unconditional():
    adapter, cond = _LinearAdapter(), _cond(2)
    x, s = torch.randn(2, 1, 2, 2, 2), torch.full((2,), 0.5)
    v = guided_velocity(adapter, cond, 3.0)(x, s)
    v_c, v_u = adapter.predict(x, s, cond), adapter.predict(x, s, cond.null_text())
    assert torch.allclose(v, v_u + 3.0 * (v_c - v_u))
    assert torch.equal(guided_velocity(adapter, cond, 1.0)(x, s), v_c)


def test_sample_is_bit_identical_for_the_same_seeds():
    adapter = _LinearAdapter()
    cfg = SamplerConfig(kind="sde", num_steps=5, guidance_scale=2.0)
    a = sample(adapter, _cond(3), [1, 2, 3], cfg)
    b = sample(adapter, _cond(3), [1, 2, 3], cfg)
    c = sample(adapter, _cond(3), [1, 2, 4], cfg)
    assert torch.equal(a, b) and not torch.equal(a[2], c[2]) and torch.equal(a[0], c[0])
    assert math.isfinite(a.sum().item())
