"""FCRM's objective against the paper's equations, by hand on small tensors."""

import contextlib
import math

import pytest
import torch

from harness.models.base import Conditioning, ModelAdapter
from trainers.fcrm_data import FCRMDataError, ReplayBuffer, Samples
from trainers.fcrm_objective import (
    LogNormalizer,
    SourceStats,
    double_sampling_surrogate,
    group_advantages,
    mc_draws,
    mc_losses,
    offline_advantages,
    residual,
)


class LinearAdapter(ModelAdapter):
    """A two-number 'model': v = w * x_t + u, with a frozen reference (w0, u0). Enough for
    Eq. 6 by hand and for Monte-Carlo tests of thousands of draws."""

    prediction_type = "flow"

    def __init__(self, w=1.3, u=0.2, w0=1.0, u0=0.0):
        self.w, self.u = torch.nn.Parameter(torch.tensor(w)), torch.nn.Parameter(torch.tensor(u))
        self.w0, self.u0, self._ref = torch.tensor(w0), torch.tensor(u0), False
        self.model = torch.nn.Module()

    def encode_video(self, video):
        return video

    def decode_latents(self, latents):
        return latents

    def encode_condition(self, first_frame, captions):
        return Conditioning(first_frame, torch.zeros(len(captions), 2, 4), tuple(captions))

    def latent_shape(self, batch):
        return (batch, 2)

    def predict(self, x_t, sigma, cond):
        return (self.w0 * x_t + self.u0) if self._ref else (self.w * x_t + self.u)

    def add_lora(self, rank, alpha, target_modules=None):
        pass

    @contextlib.contextmanager
    def reference(self):
        self._ref = True
        try:
            yield
        finally:
            self._ref = False


def _cond(n):
    return Conditioning(torch.zeros(n, 3, 4, 4), torch.zeros(n, 2, 4), ("c",) * n)


def test_residual_by_hand():
    b = torch.tensor([0.5, -0.2])
    a = torch.tensor([1.0, -1.0])
    l_ref, l_theta = torch.tensor([3.0, 2.0]), torch.tensor([2.5, 2.4])
    # g = b - beta A + (L_ref - L_theta) / gamma, beta = 1, gamma = 2
    assert torch.allclose(residual(b, a, l_ref, l_theta, beta=1.0, gamma=2.0), torch.tensor([-0.25, 0.6]))
    # beta = 0.5, gamma = 1: 0.5 - 0.5 + 0.5 = 0.5; -0.2 + 0.5 - 0.4 = -0.1
    assert torch.allclose(residual(b, a, l_ref, l_theta, beta=0.5, gamma=1.0), torch.tensor([0.5, -0.1]))


def test_mc_losses_follow_eq6_with_common_random_numbers():
    ad = LinearAdapter(w=1.5, u=0.1)
    x0 = torch.tensor([[1.0, -2.0]])
    sigma = torch.tensor([[0.25, 0.5]])  # N_mc = 2 draws
    noise = torch.tensor([[[0.4, 1.0], [-1.0, 0.0]]])
    m = mc_losses(ad, x0, _cond(1), sigma, noise, reduction="sum")
    want_theta, want_ref, want_kl = 0.0, 0.0, 0.0
    for j in range(2):
        s, e = sigma[0, j], noise[0, j]
        x_t = (1 - s) * x0[0] + s * e
        u = e - x0[0]  # the flow target
        want_theta += ((1.5 * x_t + 0.1 - u) ** 2).sum() / 2
        want_ref += ((x_t - u) ** 2).sum() / 2  # same (tau, eps) under the reference
        want_kl += ((0.5 * x_t + 0.1) ** 2).sum() / 2
    assert m.policy.item() == pytest.approx(want_theta.item(), rel=1e-6)
    assert m.reference.item() == pytest.approx(want_ref.item(), rel=1e-6)
    assert m.kl.item() == pytest.approx(want_kl.item(), rel=1e-6)
    mean = mc_losses(ad, x0, _cond(1), sigma, noise, reduction="mean")
    assert mean.policy.item() == pytest.approx(want_theta.item() / 2, rel=1e-6)  # D = 2
    assert m.policy.requires_grad and not m.reference.requires_grad


def test_few_step_draws_stay_on_the_timestep_set():
    sigma, noise = mc_draws(200, 2, (3,), torch.Generator().manual_seed(0), timesteps=[1000, 757, 522])
    assert set(torch.round(sigma * 1000).int().unique().tolist()) == {1000, 757, 522}
    assert noise.shape == (200, 2, 3)
    u, _ = mc_draws(200, 1, (3,), torch.Generator().manual_seed(0))
    assert 0 <= u.min() and u.max() < 1 and len(u.unique()) == 200


def test_double_sampling_is_unbiased_and_the_naive_square_is_not():
    """Proposition 1 by Monte Carlo on the real estimator: E[g_A g_B] = g^2, while
    E[g_hat^2] = g^2 + Var(g_hat)."""
    ad = LinearAdapter(w=1.2, u=0.3)
    n = 40_000
    x0 = torch.tensor([[0.7, -0.4]]).expand(n, 2)
    gen = torch.Generator().manual_seed(0)
    b, adv = torch.full((n,), 0.1), torch.full((n,), 0.5)
    with torch.no_grad():
        g_a, g_b = (residual(b, adv, m.reference, m.policy, beta=1.0, gamma=1.0)
                    for m in (mc_losses(ad, x0, _cond(n), *mc_draws(n, 1, (2,), gen)) for _ in range(2)))
    truth = torch.cat([g_a, g_b]).mean() ** 2  # g^2 from 80 000 draws
    var = torch.cat([g_a, g_b]).var()
    se = (g_a * g_b).std() / math.sqrt(n)
    assert abs((g_a * g_b).mean() - truth) < 4 * se + 0.01 * var  # unbiased
    naive = (g_a**2).mean()
    assert naive - truth == pytest.approx(var.item(), rel=0.1)  # biased upward by the MC variance
    assert naive - (g_a * g_b).mean() > 10 * se


def test_surrogate_has_the_gradient_of_the_product_and_twice_its_value():
    p = torch.tensor([0.3, -1.1], requires_grad=True)
    g_a, g_b = 2 * p + 1, p**2 - 0.5
    s = double_sampling_surrogate(g_a, g_b)
    assert torch.allclose(s, 2 * g_a * g_b)
    (grad_s,) = torch.autograd.grad(s.sum(), p, retain_graph=True)
    (grad_prod,) = torch.autograd.grad((g_a * g_b).sum(), p)
    assert torch.allclose(grad_s, grad_prod)


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 0.0, 4.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    a = group_advantages(r, groups)
    s = math.sqrt(2 / 3)  # population std of (1, 2, 3)
    want = [-1 / s, 0.0, 1 / s, 0.0, 0.0, -1.0, 1.0]  # equal rewards carry no signal
    assert a.tolist() == pytest.approx(want)


def test_offline_normalisation_and_advantages_by_hand():
    st = SourceStats(decay=0.5, sigma_min=0.1)
    assert st.update(torch.tensor([1.0, 3.0])) == pytest.approx((2.0, 1.0))  # mean 2, m = 5: sigma 1
    mu, sigma = st.update(torch.tensor([2.0, 2.0]))  # mean 0.5*2+0.5*2 = 2, m = 0.5*5+0.5*4 = 4.5
    assert (mu, sigma) == pytest.approx((2.0, math.sqrt(0.5)))
    st2 = SourceStats(decay=0.5, sigma_min=0.1)
    assert st2.update(torch.tensor([2.0, 2.0]))[1] == pytest.approx(0.1)  # floored at sigma_min
    r = torch.tensor([0.0, 2.0, 5.0])
    assert offline_advantages(r, 2.0, 1.0, "signed", eps=0).tolist() == pytest.approx([-2.0, 0.0, 3.0])
    # clip((r - mu) / sigma + a0, 0, A_max) with a0 = 1, A_max = 3
    assert offline_advantages(r, 2.0, 1.0, "nonnegative", a0=1.0, a_max=3.0, eps=0).tolist() == \
        pytest.approx([0.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="signed, nonnegative"):
        offline_advantages(r, 0.0, 1.0, "both")


def test_log_normalizer_starts_at_zero_and_learns():
    torch.manual_seed(0)
    net = LogNormalizer(text_dim=4, image_channels=3, hidden=256)
    cond = Conditioning(torch.randn(5, 3, 8, 8), torch.randn(5, 6, 4), ("a",) * 5)
    out = net(cond)
    assert out.shape == (5,) and torch.equal(out, torch.zeros(5))
    out.sum().backward()
    assert net.mlp[-1].weight.grad.abs().sum() > 0  # the zero layer still gets a gradient
    assert net.mlp[0].in_features == 4 + 3 * 16


def _samples(n, adv, start=0):
    return Samples(torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, 2).clone(),
                   torch.zeros(n, 3, 4, 4), [f"c{start + i}" for i in range(n)],
                   torch.arange(start, start + n, dtype=torch.float64), torch.tensor(adv, dtype=torch.float64))


def test_replay_is_fifo_with_uniform_draws():
    buf = ReplayBuffer(capacity=5)
    with pytest.raises(FCRMDataError, match="empty"):
        buf.draw(2, torch.Generator())
    assert buf.insert(_samples(3, [1.0, -1.0, 0.5])) == 3
    assert buf.insert(_samples(4, [0.2, -0.3, 1.0, -2.0], start=3)) == 4
    assert len(buf) == 5 and buf.evicted == 2
    assert buf.data.captions == ["c2", "c3", "c4", "c5", "c6"]  # the two oldest went first
    counts = torch.zeros(7)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        for r in buf.draw(2, g).rewards.long().tolist():
            counts[r] += 1
    assert counts[:2].sum() == 0 and (counts[2:] / 4000 - 0.2).abs().max() < 0.03
    state = buf.state_dict()
    other = ReplayBuffer(capacity=5)
    other.load_state_dict(state)
    assert other.data.captions == buf.data.captions and other.evicted == 2


@pytest.mark.parametrize("kind,kept", [("positive", ["c0", "c2", "c3"]), ("negative", ["c1", "c4"]),
                                       ("all", ["c0", "c1", "c2", "c3", "c4"])])
def test_replay_filters(kind, kept):
    buf = ReplayBuffer(capacity=10, filter=kind)
    buf.insert(_samples(5, [1.0, -1.0, 0.5, 0.1, -0.2]))
    buf.insert(_samples(1, [0.0], start=9))  # a zero advantage is neither positive nor negative
    assert buf.data.captions == kept + (["c9"] if kind == "all" else [])
    with pytest.raises(FCRMDataError, match="allowed"):
        ReplayBuffer(capacity=3, filter="best")
