"""Flow-GRPO: the SDE transition, its log-density and KL, and the clipped objective, each against
numbers worked out by hand from the paper's equations on a toy linear velocity v = w x; then the
trainer on the tiny model (rollout trajectories, Fast window, gradient to the LoRA, resume)."""

import io
import math

import pytest
import torch

from harness.config import load_preset, parse_override
from harness.models.tiny_wan import TinyWanAdapter
from harness.sampling import SamplerConfig, sample_latents, sigma_schedule
from trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer, flow_grpo_loss
from trainers.flow_sde import gaussian_kl, gaussian_logprob, sde_trajectories, transition

# One step from sigma s = 0.5 to 0.25 (dt = -0.25) with a = 0.7, at x = 1, v = w x, w = 0.8:
#   sigma_t = 0.7 sqrt(0.5 / 0.5) = 0.7; the transition's std = 0.7 sqrt(0.25) = 0.35
#   the repo's expanded form of the mean, x (1 + sigma_t^2 dt / (2 s)) + v (1 + sigma_t^2 (1 - s) / (2 s)) dt
#   = 1 (1 - 0.1225) + 0.8 (1.245)(-0.25) = 0.8775 - 0.249 = 0.6285
# log N(0.5; 0.6285, 0.35^2) = -(0.1285^2) / 0.245 - ln 0.35 - ln sqrt(2 pi) = 0.0634867
S, S_NEXT, ETA, X, W, X_NEXT = 0.5, 0.25, 0.7, 1.0, 0.8, 0.5


def _toy(w: torch.Tensor):
    x = torch.full((1, 1), X)
    return transition(x, w * x, torch.tensor(S), torch.tensor(S_NEXT), ETA, 0.98)


def test_transition_and_log_density_by_hand():
    mean, std = _toy(torch.tensor(W))
    assert float(std) == pytest.approx(0.35)
    assert float(mean) == pytest.approx(0.6285)
    logp = gaussian_logprob(torch.full((1, 1), X_NEXT), mean, std)
    assert float(logp) == pytest.approx(0.0634867, abs=1e-6)


def test_kl_is_the_papers_velocity_form():
    """The paper writes the same KL as (dt / 2) (sigma_t (1 - s) / (2 s) + 1 / sigma_t)^2 ||v_a - v_b||^2
    (an independent form): 0.125 (0.35 + 1 / 0.7)^2 0.09 = 0.0355872."""
    mean_a, std = _toy(torch.tensor(0.8))
    mean_b, _ = _toy(torch.tensor(0.5))
    expected = 0.25 / 2 * (0.7 * 0.5 / 1.0 + 1 / 0.7) ** 2 * 0.3**2
    assert expected == pytest.approx(0.0355872, abs=1e-6)
    assert float(gaussian_kl(mean_a, mean_b, std)) == pytest.approx(expected, rel=1e-6)


def test_clipped_objective_by_hand():
    """Rows: ratio 1.5 with A = 2 (clipped to 1.2: -2.4), ratio 1.5 with A = -1 (unclipped: 1.5),
    ratio 1 with A = 7 clipped to adv_clip 5 (-5); mean -1.9667; plus 0.5 x mean KL (0.1, 0.2, 0.3)."""
    logp = torch.tensor([math.log(1.5), math.log(1.5), 0.0], requires_grad=True)
    kl = torch.tensor([0.1, 0.2, 0.3])
    loss, parts = flow_grpo_loss(logp, torch.zeros(3), torch.tensor([2.0, -1.0, 7.0]), 0.2, 5.0, kl, 0.5)
    assert float(parts["policy"]) == pytest.approx((-2.4 + 1.5 - 5.0) / 3)
    assert float(loss) == pytest.approx((-2.4 + 1.5 - 5.0) / 3 + 0.5 * 0.2)
    assert float(parts["clipfrac"]) == pytest.approx(2 / 3)
    loss.backward()
    # d/dlogp of -A exp(logp - old) / 3 where the unclipped branch is the max; 0 where the clipped one is
    assert logp.grad.tolist() == pytest.approx([0.0, 1.5 / 3, -5.0 / 3])


def test_gradient_through_the_toy_velocity_by_hand():
    """On-policy (ratio 1), A = 1: L = -rho, so dL/dw = -dlogp/dw = -(x' - mu) / std^2 * dmu/dw with
    dmu/dw = x (1 + sigma_t^2 (1 - s) / (2 s)) dt = -0.31125: -(-0.1285 / 0.1225)(-0.31125) = -0.326495."""
    w = torch.tensor(W, requires_grad=True)
    mean, std = _toy(w)
    logp = gaussian_logprob(torch.full((1, 1), X_NEXT), mean, std)
    loss, _ = flow_grpo_loss(logp, logp.detach(), torch.ones(1), 0.2, 5.0, torch.zeros(1), 0.0)
    loss.backward()
    assert float(w.grad) == pytest.approx(-0.326495, abs=1e-6)


@pytest.fixture(scope="module")
def preset():
    return load_preset("tiny", [parse_override("sampler.num_steps=2")])


def _trainer(preset, **overrides):
    cfg = FlowGRPOConfig(**{"conditions": 2, "group_size": 2, "batch_size": 2, "rollout_steps": 3, **overrides})
    return FlowGRPOTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0)


def test_trajectory_sampler_is_the_harness_sde_sampler(preset):
    """With every step stochastic the trajectory ends where harness/sampling.py's SDE sampler does
    (same per-video noise streams), and its last step adds no noise (2 trained steps of 3)."""
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    cfg = SamplerConfig(kind="sde", num_steps=3, eta=0.7)
    cond = adapter.encode_condition(torch.zeros(2, 3, 16, 16), ["a", "b"])
    x0, traj = sde_trajectories(adapter, cond, [5, 6], sigma_schedule(cfg), 0.7, cfg.sigma_max_sde, range(3))
    assert torch.allclose(x0, sample_latents(adapter, cond, [5, 6], cfg), atol=1e-5)
    assert traj.logp.shape == (2, 2) and torch.equal(traj.x[:, 1], traj.x_next[:, 0])


def test_trains_on_policy_and_the_gradient_reaches_the_lora(preset):
    tr = _trainer(preset)
    loss, logs = tr.compute_loss(0)
    assert torch.isfinite(loss) and logs["ratio"] == pytest.approx(1.0, abs=1e-4)  # the sampling policy itself
    tr.optimizer.zero_grad()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.params)
    assert all(math.isfinite(v) for v in tr.train_step(1).values())


def test_fast_trains_only_its_window(preset):
    tr = _trainer(preset, rollout_steps=4, sde_window=1, sde_window_range=2)
    tr.train_step(0)
    assert tr.traj.logp.shape[1] == 1 and float(tr.traj.sigma[0]) in {1.0, 0.75}
    with pytest.raises(ValueError, match="exceeds"):
        FlowGRPOConfig(rollout_steps=3, sde_window=3)


def test_resume_gives_the_same_numbers(preset):
    a = _trainer(preset, inner_steps=3)
    a.train_step(0)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    after = [a.train_step(s) for s in (1, 2)]
    b = _trainer(preset, inner_steps=3)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert [b.train_step(s) for s in (1, 2)] == after
