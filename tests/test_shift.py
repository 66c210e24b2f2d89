"""The shift trainer: Eq. 12 by hand, advantages, noise alignment, the discriminators' EMA,
bad input (missing weights, a diverging discriminator), resume, and the outer loop."""

import io

import numpy as np
import pytest
import torch

from harness.config import load_preset, parse_override
from harness.models.tiny_wan import TinyWanAdapter
from trainers.shift import ShiftConfig, ShiftError, ShiftTrainer, fake_centred_advantages, shift_loss

SMALL = {"batch_size": 2, "buffer": {"prompts": 2, "rollouts_per_prompt": 2, "passes": 2},
         "real": {"count": 8}, "warmup_steps": 0}


@pytest.fixture(scope="module")
def preset():
    return load_preset("tiny", [parse_override("sampler.num_steps=2")])


def _trainer(preset, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = ShiftConfig(**{**SMALL, **overrides})
    return ShiftTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, seed)


def test_advantages_are_centred_on_the_fakes_and_clipped_without_std_normalisation():
    r = torch.tensor([1.0, 2.0, 3.0, 30.0], dtype=torch.float64)  # mean 9
    adv, clipped = fake_centred_advantages(r, 10.0)
    assert torch.equal(adv, torch.tensor([-8.0, -7.0, -6.0, 10.0], dtype=torch.float64))
    assert clipped.tolist() == [False, False, False, True]
    small = fake_centred_advantages(torch.tensor([0.1, 0.3], dtype=torch.float64), 10.0)[0]
    assert torch.allclose(small, torch.tensor([-0.1, 0.1], dtype=torch.float64))  # not rescaled to unit std


def test_loss_by_hand():
    """Eq. 12: lambda_sft * mean ||.||^2 (real) + lambda_awr * mean A ||.||^2 (fake)."""
    l_real = torch.tensor([0.5, 1.5])
    l_fake = torch.tensor([2.0, 4.0])
    adv = torch.tensor([1.0, -0.5], dtype=torch.float64)
    terms = shift_loss(l_real, l_fake, adv, lambda_sft=1.0, lambda_awr=0.1)
    assert terms["sft"].item() == pytest.approx(1.0)
    assert terms["awr"].item() == pytest.approx(0.1 * (1.0 * 2.0 - 0.5 * 4.0) / 2)  # = 0
    assert shift_loss(l_real, l_fake, torch.zeros(2), 1.0, 0.1)["awr"].item() == 0.0  # A = 0: plain SFT


def _per_sample_loss_by_hand(adapter, x0, cond, sigma, noise):
    s = sigma.reshape(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise  # rectified flow
    pred = adapter.predict(x_t, sigma, cond)
    return ((pred - (noise - x0)) ** 2).flatten(1).mean(1)


def test_trainer_loss_matches_the_equation_on_its_own_batches(preset, monkeypatch):
    import trainers.shift as shift_mod

    tr = _trainer(preset, lambda_awr=0.3)
    seen = []
    real_loss = shift_mod.denoising_loss

    def spy(adapter, x0, cond, sigma, noise):
        seen.append((x0, cond, sigma, noise))
        return real_loss(adapter, x0, cond, sigma, noise)

    monkeypatch.setattr(shift_mod, "denoising_loss", spy)
    terms, _ = tr.loss_terms(0)
    (xr, cr, sr, nr), (xf, cf, sf, nf) = seen
    with torch.no_grad():
        by_hand_real = _per_sample_loss_by_hand(tr.adapter, xr, cr, sr, nr)
        by_hand_fake = _per_sample_loss_by_hand(tr.adapter, xf, cf, sf, nf)
    adv = tr.buffer.advantages[tr.current].float()
    assert terms["sft"].item() == pytest.approx(by_hand_real.mean().item(), rel=1e-5)
    assert terms["awr"].item() == pytest.approx(0.3 * (adv * by_hand_fake).mean().item(), rel=1e-5, abs=1e-8)
    assert torch.equal(xf, tr.buffer.x0[tr.current])  # the online term trains on the buffer's rollouts


@pytest.mark.parametrize("aligned", [True, False])
def test_noise_alignment_shares_sigma_and_noise(preset, monkeypatch, aligned):
    import trainers.shift as shift_mod

    tr = _trainer(preset, noise_alignment=aligned)
    seen = []
    monkeypatch.setattr(shift_mod, "denoising_loss",
                        lambda adapter, x0, cond, sigma, noise: seen.append((sigma, noise)) or x0.new_zeros(len(x0)))
    tr.loss_terms(0)
    (s_real, n_real), (s_fake, n_fake) = seen
    assert torch.equal(s_real, s_fake) == aligned and torch.equal(n_real, n_fake) == aligned


def test_buffer_passes_and_on_policy_refill(preset):
    tr = _trainer(preset)  # 4 rollouts, batch 2: 2 steps per pass, 2 passes -> refill every 4 steps
    seen = []
    for step in range(4):
        tr.loss_terms(step)
        seen += tr.current
        if step == 0:
            first = tr.buffer.x0.clone()
    assert sorted(seen) == [0, 0, 1, 1, 2, 2, 3, 3]  # each rollout once per pass, K = 2 passes
    assert torch.equal(tr.buffer.x0, first)
    tr.loss_terms(4)
    assert not torch.equal(tr.buffer.x0, first)  # a fresh on-policy buffer
    assert torch.allclose(tr.buffer.advantages.sum(), torch.zeros((), dtype=torch.float64), atol=1e-9)


def test_discriminator_step_and_ema_update(preset):
    tr = _trainer(preset, disc_ema=0.9)
    tr.loss_terms(0)
    before_d = [p.detach().clone() for p in tr.discs["imr"].net.parameters()]
    before_ema = [p.detach().clone() for p in tr.scorers["imr"].net.parameters()]
    logs = tr.disc_step(0)
    after_d = list(tr.discs["imr"].net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after_d, before_d, strict=True))
    for e0, d1, e1 in zip(before_ema, after_d, tr.scorers["imr"].net.parameters(), strict=True):
        assert torch.allclose(e1, 0.9 * e0 + 0.1 * d1.detach(), atol=1e-7)  # EMA with decay 0.9
    assert 0 <= logs["disc/imr_accuracy"] <= 1 and np.isfinite(logs["disc/lmr_loss"])
    static = _trainer(preset, adversarial=False)
    assert static.scorers is static.discs and not static.disc_opts


def test_train_step_logs_the_gradient_norm_of_each_term(preset):
    tr = _trainer(preset)
    logs = [tr.train_step(s) for s in range(2)]
    for row in logs:
        assert all(np.isfinite(v) for v in row.values())
        assert row["grad_norm/sft"] > 0 and row["grad_norm/awr"] >= 0
    # The first step's LoRA B is zero, so both terms' gradients sit on B only; from then on both move it.
    assert logs[1]["grad_norm/sft_over_awr"] == pytest.approx(logs[1]["grad_norm/sft"] / logs[1]["grad_norm/awr"])


def test_a_diverging_discriminator_stops_with_the_step(preset):
    tr = _trainer(preset)
    tr.train_step(0)
    with torch.no_grad():
        next(tr.discs["lmr"].net.parameters()).fill_(float("nan"))
    with pytest.raises(ShiftError, match=r"step 1: the lmr discriminator diverged \(non-finite logits\)"):
        tr.train_step(1)


def test_missing_reward_weights_refuse_to_start(preset, tmp_path):
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match=r"imr motion reward model file missing: .*none.*model\.safetensors"):
        _trainer(preset, reward_paths={"imr": str(tmp_path / "none")})


def test_resume_gives_the_same_numbers(preset):
    a = _trainer(preset)
    for s in range(3):
        a.train_step(s)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    after = [a.train_step(s) for s in range(3, 6)]  # crosses a buffer refill (step 4)
    b = _trainer(preset)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    again = [b.train_step(s) for s in range(3, 6)]
    assert after == again


def test_variants_and_bad_discriminator_through_the_outer_loop(tmp_path):
    from harness.runner import RunError, RunOptions, method_config, run
    from harness.store import ResultStore

    sets = ["eval.num_videos=2", "eval.final_num_videos=null",
            "sampler.num_steps=2", "probes.names=[]", "methods.shift.batch_size=2",
            "methods.shift.buffer.prompts=2", "methods.shift.buffer.rollouts_per_prompt=2",
            "methods.shift.buffer.passes=1", "methods.shift.real.count=8"]
    preset = load_preset("tiny", [parse_override(s) for s in sets])
    opts = RunOptions(methods=["shift-a0"], steps=2, eval_every=2, metrics=["imr_reward", "motion_score"],
                      show_progress=False)
    cfg = method_config(preset, "shift-a0", opts)
    assert cfg.rewards == ["imr"] and not cfg.noise_alignment and not cfg.adversarial and cfg.batch_size == 2
    run(preset, tmp_path / "r", opts)
    with ResultStore(tmp_path / "r" / "results.sqlite") as store:
        agg = store.aggregates()
        assert {"base", "shift-a0"} <= set(agg["method"])
        assert agg["metric"].str.startswith("imr_reward[").any()
        logs = store.train_logs()
        assert {"grad_norm/sft", "grad_norm/awr", "reward/fake_mean", "reward/real_mean"} <= set(logs["key"])
    bad = load_preset("tiny", [parse_override(s) for s in [*sets, f"methods.shift.reward_paths.lmr={tmp_path}/x"]])
    with pytest.raises(RunError, match=r"methods.shift: lmr motion reward model file missing"):
        run(bad, tmp_path / "s", RunOptions(methods=["shift"], steps=2, eval_every=2, metrics=["motion_score"],
                                            show_progress=False))


def test_cli_smoke_run_of_shift(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(app, ["run", "--smoke", "--methods", "shift", "--out", str(tmp_path / "r"),
                                   "--no-progress", "--metrics", "lmr_reward,motion_score,dynamic_degree"])
    assert res.exit_code == 0, res.output
    assert "Table 1" in (tmp_path / "r" / "report" / "shift.md").read_text()
    listed = CliRunner().invoke(app, ["list", "methods"]).output
    assert "shift-a0\tvariant of shift" in listed


@pytest.mark.parametrize("kind", [None, "logit_normal"])
def test_timesteps_are_uniform_as_algorithm_1_unless_asked(preset, monkeypatch, kind):
    """Algorithm 1, line 7: t ~ U(0, T) by default; logit-normal(0, 1) only as the named option."""
    from scipy.stats import kstest, norm

    import trainers.shift as shift_mod

    cfg = ShiftConfig() if kind is None else ShiftConfig(timestep_sampling=kind)
    tr = _trainer(preset, **({} if kind is None else {"timestep_sampling": kind}))
    kinds, real = [], shift_mod.sample_sigmas
    monkeypatch.setattr(shift_mod, "sample_sigmas", lambda k, n, g: kinds.append(k) or real(k, n, g))
    monkeypatch.setattr(shift_mod, "denoising_loss", lambda adapter, x0, cond, sigma, noise: x0.new_zeros(len(x0)))
    tr.loss_terms(0)
    assert kinds and set(kinds) == {cfg.timestep_sampling}  # the trainer draws its t with the configured kind
    draws = real(cfg.timestep_sampling, 20000, torch.Generator().manual_seed(3)).double()
    uniform_p = kstest(draws.numpy(), "uniform").pvalue
    z = torch.log(draws / (1 - draws)).numpy()  # logit of a logit-normal(0, 1) draw is N(0, 1)
    normal_p = kstest(z, norm.cdf).pvalue
    if kind is None:
        assert uniform_p > 1e-3 and normal_p < 1e-6
    else:
        assert normal_p > 1e-3 and uniform_p < 1e-6
