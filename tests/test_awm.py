"""AWM: the flow-matching log-likelihood surrogate and the clipped advantage-weighted objective
against numbers worked out by hand, its on-policy gradient against the advantage-weighted matching
loss written out separately, and the trainer on the tiny model (gradient to the LoRA, resume)."""

import io
import math

import pytest
import torch

from harness.config import load_preset, parse_override
from harness.models.tiny_wan import TinyWanAdapter
from trainers.awm import AWMConfig, AWMTrainer, awm_policy_loss, matching_logp


def test_matching_log_likelihood_by_hand():
    """v_theta = 0.8 against v = 0.6: m = 0.04; t = 1/2. uniform -0.04; t-weighted -0.02; ghuber p = 1/4:
    -t ((m + 1e-10)^(1/4) - 1e-10^(1/4)) / (1/4) = -2 (sqrt(0.2) - 10^-2.5) = -0.8881026."""
    v, target, t = torch.full((1, 1), 0.8), torch.full((1, 1), 0.6), torch.tensor([0.5])
    assert float(matching_logp(v, target, t, "uniform", 0.25)) == pytest.approx(-0.04)
    assert float(matching_logp(v, target, t, "t", 0.25)) == pytest.approx(-0.02)
    assert float(matching_logp(v, target, t, "ghuber", 0.25)) == pytest.approx(-0.8881026, abs=1e-6)


def test_clipped_objective_by_hand():
    """Row 1: A = 10 clipped to 5, A' = 1; rho = e^0.5 = 1.6487 clipped to 1.2: max(-1.6487, -1.2) = -1.2.
    Row 2: A' = -2.5 / 5 = -0.5; rho = e^-1 = 0.3679, clipped 0.8: max(0.1839, 0.4) = 0.4. Mean -0.4."""
    loss, ratio = awm_policy_loss(torch.tensor([0.5, -1.0]), torch.zeros(2), torch.tensor([10.0, -2.5]), 5.0, 1.0,
                                  0.2)
    assert float(loss) == pytest.approx(-0.4)
    assert ratio.tolist() == pytest.approx([math.exp(0.5), math.exp(-1.0)])


def test_on_policy_gradient_is_advantage_weighted_matching():
    """At rho = 1 the gradient of -A' rho is A' times that of ||v_theta - v||^2: toy v_theta = w x
    (x = 1, w = 0.8, v = 0.6), A' = 2.5 / 5 = 0.5: 0.5 x 2 (0.8 - 0.6) = 0.2."""
    w = torch.tensor(0.8, requires_grad=True)
    logp = matching_logp((w * torch.ones(1, 1)), torch.full((1, 1), 0.6), torch.tensor([0.5]), "uniform", 0.25)
    loss, _ = awm_policy_loss(logp, logp.detach(), torch.tensor([2.5]), 5.0, 1.0, 1.0)
    loss.backward()
    assert float(w.grad) == pytest.approx(0.2)


@pytest.fixture(scope="module")
def preset():
    return load_preset("tiny", [parse_override("sampler.num_steps=3")])


def _trainer(preset):
    cfg = AWMConfig(conditions=2, group_size=2, batch_size=2, train_timesteps=2, inner_steps=3)
    return AWMTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0)


def test_trains_and_the_gradient_reaches_the_lora(preset):
    tr = _trainer(preset)
    loss, logs = tr.compute_loss(0)
    assert torch.isfinite(loss) and logs["ratio"] == pytest.approx(1.0)  # the round's own policy
    tr.optimizer.zero_grad()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.params)
    idx = tr.timestep_indices()  # strata of 1 .. int(3 x 0.9) = 2: never the first sigma (= 1)
    assert idx.min() >= 1 and idx.max() <= 2


def test_resume_gives_the_same_numbers(preset):
    a = _trainer(preset)
    a.train_step(0)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    after = [a.train_step(s) for s in (1, 2, 3)]  # step 3 starts a round: EMA and old policy updates
    b = _trainer(preset)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert [b.train_step(s) for s in (1, 2, 3)] == after
