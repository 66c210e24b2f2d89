"""Rollout pairs, the dpo / pgdpo trainers, and the training probes on the tiny model."""

import numpy as np
import pytest
import torch

from harness.config import load_preset, parse_override
from harness.data.preferences import PairsError, PairSet, build_rollout_pairs
from harness.models.tiny_wan import TinyWanAdapter
from harness.probing import ProbeRunner
from trainers import preference
from trainers import probes as probes_module
from trainers.base import trainer_settings
from trainers.probes import ChosenLogpStep, Gamma, LikelihoodDisplacement
from trainers.registry import get_trainer

FAST = ["sampler.num_steps=2", "probes.pairs=3", "probes.draws=2", "probes.per_condition=2"]


def _preset(*extra):
    return load_preset("tiny", [parse_override(s) for s in (*FAST, *extra)])


def _trainer(method, preset, tmp_path, seed=0, **overrides):
    cls = get_trainer(method)
    raw = {**trainer_settings(preset.methods[method]), "batch_size": 2, **overrides}
    if "pairs" in cls.config_class.model_fields:
        raw.setdefault("pairs", {"conditions": 4, "per_condition": 2})
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    torch.manual_seed(seed)  # LoRA initialisation, as the runner seeds it
    return cls(adapter, preset, cls.config_class(**raw), seed, workdir=tmp_path / "cache")


@pytest.fixture(scope="module")
def pairs():
    preset = _preset()
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    return build_rollout_pairs(adapter, preset.world, preset.sampler, conditions=5, per_condition=3,
                               show_progress=False)


def test_rollout_pairs_pick_best_and_worst(pairs, tmp_path):
    assert 1 <= len(pairs) <= 5 and pairs.chosen.dtype == np.uint8
    assert (pairs.chosen_score > pairs.rejected_score).all()
    assert pairs.sources[0].startswith("prompts:")
    assert pairs.chosen.shape[1:] == (8, 16, 16, 3) and pairs.first_frames.shape[1:] == (16, 16, 3)
    assert pairs.provenance["dropped_ties"] + len(pairs) == 5
    back = PairSet.load(pairs.save(tmp_path / "p.npz"))
    assert np.array_equal(back.chosen, pairs.chosen) and back.captions == pairs.captions
    assert back.provenance == pairs.provenance
    with pytest.raises(PairsError, match="at least 2"):
        build_rollout_pairs(None, _preset().world, _preset().sampler, per_condition=1)


def test_pairs_are_cached_per_run(tmp_path, monkeypatch):
    preset = _preset()
    first = _trainer("dpo", preset, tmp_path)
    assert list((tmp_path / "cache" / "pairs").glob("rollouts-*.npz"))

    def no_rebuild(*a, **k):
        raise AssertionError("pairs rebuilt instead of read from the cache")

    monkeypatch.setattr(preference, "build_rollout_pairs", no_rebuild)
    second = _trainer("pgdpo", preset, tmp_path)  # same pairs settings: the same cached set
    assert np.array_equal(first.pairs.chosen, second.pairs.chosen)


def test_pair_rollouts_come_from_the_base_weights_their_cache_key_names(tmp_path):
    """The cache key hashes the base weights only (LoRA left out), so the rollouts must be the base model's even
    when the adapters are not at their zero initialisation (e.g. a pair set first needed mid-training)."""
    preset = _preset()
    cfg = preference.PairsConfig(conditions=3, per_condition=2, judge="oracle")
    plain = preference.load_pairs(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, None)
    trained = TinyWanAdapter.load(preset.base_checkpoint_path())
    trained.add_lora(4, 4.0)
    with torch.no_grad():
        for name, p in trained.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    base = TinyWanAdapter.load(preset.base_checkpoint_path())
    moved = preference.load_pairs(trained, preset, cfg, None)
    assert np.array_equal(moved.chosen, plain.chosen) and np.array_equal(moved.rejected, plain.rejected)
    x_w, _, cond = moved.tensors(trained, [0])  # the adapters are on again afterwards
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        assert not torch.allclose(trained.predict(x_w, sigma, cond), base.predict(x_w, sigma, cond))


@pytest.mark.parametrize("method", ["dpo", "pgdpo"])
def test_trainers_step_and_log(method, tmp_path):
    trainer = _trainer(method, _preset(), tmp_path)
    before = {k: v.clone() for k, v in trainer.adapter.lora_state_dict().items()}
    logs = [trainer.train_step(s) for s in range(2)]
    assert all(np.isfinite(v) for log in logs for v in log.values())
    assert {"loss", "implicit_acc", "reward_margin", "policy_loss_w", "ref_loss_l"} <= set(logs[0])
    if method == "pgdpo":
        # First step: the policy is the reference, every margin is 0, alpha = gamma = 1/2.
        assert logs[0]["alpha_min"] == logs[0]["alpha_max"] == pytest.approx(0.5)
        assert logs[0]["gamma_mean"] == pytest.approx(0.5)
    after = trainer.adapter.lora_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_probes_at_the_start_and_gamma_of_dpo_is_zero(tmp_path):
    preset = _preset()
    dpo = _trainer("dpo", preset, tmp_path)
    dpo.train_step(0)
    probes = ProbeRunner(preset, dpo, tmp_path / "cache")
    ld, _, gamma = probes.probes
    assert isinstance(ld, LikelihoodDisplacement) and isinstance(gamma, Gamma)
    # the held-out probe set: clips probes.start.. of probes.split, none of them a training condition
    first = preset.probes.start
    assert ld.pairs.provenance["split"] == "eval" and ld.pairs.provenance["start"] == first == 100_000
    assert ld.pairs.sources and all(first <= int(s.removeprefix("eval:")) < first + 3 for s in ld.pairs.sources)
    g = gamma.measure(dpo, 1)
    # DPO against DPO at the same beta: the two updates coincide.
    assert g["gamma"] == pytest.approx(0.0, abs=1e-12) and g["dlogp_dpo"] != 0.0
    fresh = _trainer("sft", preset, tmp_path)
    start = LikelihoodDisplacement(ld.pairs, draws=2).measure(fresh, 0)
    assert start["chosen_displacement"] == 0.0 and start["logp_chosen"] == start["ref_logp_chosen"]
    # chosen rollouts fit the base model better on the pairs of prompts conditions 0-2 (the probe set before
    # it was held out; a property of these pairs, which the held-out set's three pairs do not share)
    prompts = build_rollout_pairs(fresh.adapter, preset.world, preset.sampler, conditions=3, per_condition=2,
                                  show_progress=False)
    on_prompts = LikelihoodDisplacement(prompts, draws=2).measure(fresh, 0)
    assert on_prompts["logp_chosen"] > on_prompts["logp_rejected"]


def test_the_start_of_likelihood_displacement_is_measured_once_for_every_method(tmp_path, monkeypatch):
    """At step 0 every method's policy is the untrained starting model (LoRA B = 0 adds exactly zero), so its
    step-0 values are measured once per process and shared. They equal each method's own measurement bit for
    bit, and a policy that is not untrained, or any later step, is measured afresh."""
    preset = _preset()
    monkeypatch.setattr(probes_module, "_AT_START", {})
    dpo, sft = _trainer("dpo", preset, tmp_path, seed=0), _trainer("sft", preset, tmp_path, seed=1)
    ld_dpo = ProbeRunner(preset, dpo, tmp_path / "cache").probes[0]
    ld_sft = ProbeRunner(preset, sft, tmp_path / "cache").probes[0]
    own = LikelihoodDisplacement(ld_sft.pairs, draws=ld_sft.draws, seed=ld_sft.seed)._measure(sft)  # sft's own
    first = ld_dpo.measure(dpo, 0)
    assert len(probes_module._AT_START) == 1 and first["chosen_displacement"] == 0.0

    def no_forward(self, trainer):
        raise AssertionError("measured again")

    with monkeypatch.context() as m:
        m.setattr(LikelihoodDisplacement, "_measure", no_forward)
        shared = ld_sft.measure(sft, 0)
    assert shared == first == own  # exactly: sft's own forward passes give these very numbers
    sft.train_step(0)  # later steps are measured, against the shared reference
    later = ld_sft.measure(sft, 1)
    assert later["ref_logp_chosen"] == own["ref_logp_chosen"] and later["logp_chosen"] != own["logp_chosen"]
    moved = _trainer("sft", preset, tmp_path, seed=2)
    with torch.no_grad():  # a policy whose adapters are not at zero is not the starting model
        next(p for n, p in moved.adapter.model.named_parameters() if "lora_B" in n).add_(0.1)
    fresh = LikelihoodDisplacement(ld_sft.pairs, draws=ld_sft.draws, seed=ld_sft.seed).measure(moved, 0)
    assert fresh["chosen_displacement"] != 0.0


def test_the_step0_probe_gradients_are_computed_once_for_methods_with_the_same_start(tmp_path, monkeypatch):
    """At step 0 the gradients of the held-out chosen log-likelihood (chosen_logp_step, Gamma) and of Gamma's DPO
    step depend only on the starting weights, the probe's draws and the trainable parameters' values: a second
    method with the same ones reuses them, and its probe values equal its own computation bit for bit. Other
    LoRA initialisations (another seed), other settings or a trained policy are computed afresh."""
    preset = _preset()
    monkeypatch.setattr(probes_module, "_GRADS_AT_START", {})
    dpo, pgdpo = _trainer("dpo", preset, tmp_path, seed=0), _trainer("pgdpo", preset, tmp_path, seed=0)
    assert probes_module.params_digest(dpo.params) == probes_module.params_digest(pgdpo.params)
    pairs = ProbeRunner(preset, dpo, tmp_path / "cache").probes[0].pairs

    def probes():
        return ChosenLogpStep(pairs, draws=2, seed=3), Gamma(pairs, beta=100.0)

    (step_d, gamma_d), (step_p, gamma_p) = probes(), probes()
    own = step_p.measure(pgdpo, 0), gamma_p.measure(pgdpo, 0)  # pgdpo's own gradients
    probes_module._GRADS_AT_START.clear()
    first = step_d.measure(dpo, 0), gamma_d.measure(dpo, 0)  # the memo now holds dpo's
    assert len(probes_module._GRADS_AT_START) == 2

    calls = []
    real = probes_module._flat_grad

    def counted(loss, params, retain_graph=False):
        calls.append(1)
        return real(loss, params, retain_graph)

    with monkeypatch.context() as m:
        m.setattr(probes_module, "_flat_grad", counted)
        shared = step_p.measure(pgdpo, 0), gamma_p.measure(pgdpo, 0)
    assert len(calls) == 2  # only each probe's method gradient; g_logp and g_dpo came from dpo's step 0
    assert shared == own and shared[1]["dlogp_dpo"] == first[1]["dlogp_dpo"]
    other_seed = _trainer("pgdpo", preset, tmp_path, seed=1)  # another LoRA A: another gradient
    assert probes_module.params_digest(other_seed.params) != probes_module.params_digest(pgdpo.params)
    step_p.measure(other_seed, 0)
    ChosenLogpStep(pairs, draws=1, seed=3).measure(pgdpo, 0)  # other draws
    assert len(probes_module._GRADS_AT_START) == 4
    pgdpo.train_step(0)  # a trained policy, and a later step, are never shared
    step_p.measure(pgdpo, 0), step_p.measure(pgdpo, 1)
    assert len(probes_module._GRADS_AT_START) == 4


def test_gamma_matches_the_first_order_change_of_the_chosen_likelihood(tmp_path):
    preset = _preset()
    trainer = _trainer("pgdpo", preset, tmp_path, lr=1e-3)
    trainer.train_step(0)  # move off the reference so every term is non-zero
    probe = Gamma(ProbeRunner(preset, trainer, tmp_path / "cache").probes[0].pairs, beta=trainer.config.beta)
    g = probe.measure(trainer, 1)
    x_w, x_l, cond, sigma, noise = probe.fixed_draws(trainer.adapter, 1)
    params = trainer.params
    theta = [p.detach().clone() for p in params]

    def logp_after(loss_fn, lr=1e-3):
        grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
        with torch.no_grad():
            for p, t, gr in zip(params, theta, grads, strict=True):
                p.copy_(t - lr * (torch.zeros_like(p) if gr is None else gr))
            e = preference.pair_errors(trainer.adapter, x_w, x_l, cond, sigma, noise, with_reference=False)
            value = -e.per_sample(e.err_w).mean().item()
            for p, t in zip(params, theta, strict=True):
                p.copy_(t)
        return value

    from trainers.preference_losses import dpo_loss
    method = logp_after(lambda: trainer.pair_loss(x_w, x_l, cond, sigma, noise)[0])
    dpo = logp_after(lambda: dpo_loss(preference.pair_errors(trainer.adapter, x_w, x_l, cond, sigma, noise),
                                      trainer.config.beta)[0].mean())
    assert g["gamma"] == pytest.approx(method - dpo, rel=0.1, abs=1e-9)


SMALL = {  # a few-second trainer of each family; fcrm and shift as in their own tests
    "sft": {}, "pgdpo": {"pairs": {"conditions": 4, "per_condition": 2}},
    "apo": {"stages": [{"kind": "offline", "steps": 3, "pairs": {"conditions": 4, "per_condition": 2}}]},
    "fcrm": {"conditions": 2, "group_size": 2, "inner_steps": 2, "offline": {"count": 6}},
    "shift": {"buffer": {"prompts": 2, "rollouts_per_prompt": 2, "passes": 2}, "real": {"count": 8},
              "warmup_steps": 0},
}


@pytest.mark.parametrize("method", sorted(SMALL))
def test_probes_do_not_change_training(method, tmp_path):
    """Probed at every step (FCRM's rollout rounds, SHIFT's buffer refills, APO's windows included),
    a trainer takes the same steps as without probes: same logs, same weights."""
    preset = _preset()
    plain = _trainer(method, preset, tmp_path, **SMALL[method])
    probed = _trainer(method, preset, tmp_path, **SMALL[method])
    probes = ProbeRunner(preset, probed, tmp_path / "cache")
    for step in range(3):
        expected = plain.train_step(step)
        probes.measure(probed, step)
        assert probed.train_step(step) == expected
    a, b = plain.adapter.lora_state_dict(), probed.adapter.lora_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_probe_is_named(tmp_path):
    preset = _preset("probes.names=[likelihood_displacement, vibes]")
    with pytest.raises(KeyError, match="vibes"):
        ProbeRunner(preset, _trainer("sft", preset, tmp_path), tmp_path / "cache")


def test_pairs_file_with_no_good_row_refuses_to_start(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"caption": "x", "chosen": "missing.mp4", "rejected": "gone.mp4"}\n')
    with pytest.raises(PairsError, match="line 1"):
        _trainer("dpo", _preset(), tmp_path, pairs={"source": "file", "path": str(bad)})
