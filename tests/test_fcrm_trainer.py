"""The fcrm trainer on the tiny model: behaviour distributions, bad input, resume; the rewards."""

import io

import numpy as np
import pytest
import torch

from harness.config import load_preset, parse_override
from harness.models.tiny_wan import TinyWanAdapter
from harness.scorers.errors import RewardError
from trainers.fcrm import FCRMConfig, FCRMTrainer
from trainers.fcrm_data import FCRMDataError
from trainers.rewards import REWARDS, Reward, RewardInputs, build_reward, register_reward

SMALL = {"conditions": 2, "group_size": 2, "batch_size": 2, "inner_steps": 2, "offline": {"count": 6}}


@pytest.fixture(scope="module")
def preset():
    return load_preset("tiny", [parse_override("sampler.num_steps=2")])


def _trainer(preset, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = FCRMConfig(**{**SMALL, **overrides})
    return FCRMTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, seed)


@pytest.mark.parametrize("behaviour", ["on_policy", "ema", "replay", "none"])
def test_every_behaviour_trains(preset, behaviour):
    tr = _trainer(preset, behaviour=behaviour, offline=SMALL["offline"] if behaviour == "none" else None)
    logs = [tr.train_step(s) for s in range(3)]
    assert all(np.isfinite(v) for row in logs for v in row.values())
    branch = "offline" if behaviour == "none" else "online"
    assert f"{branch}/residual_sq" in logs[-1]
    if behaviour == "replay":
        assert logs[-1]["replay/size"] == 8  # two rounds of 2 x 2 rollouts, unfiltered
    if behaviour == "ema":  # the behaviour weights trail the policy: eta * old + (1 - eta) * new
        assert any(not torch.equal(e, p) for e, p in zip(tr.ema, tr.params, strict=True))


def test_first_step_residual_is_minus_beta_advantage(preset):
    """At step 0 the policy is the reference (LoRA B = 0) and b_phi = 0, so with common random
    numbers g = -beta * A exactly: residual_sq = mean(A^2) = 1 for normalised groups of two."""
    tr = _trainer(preset, behaviour="on_policy", offline=None, beta=1.0)
    logs = tr.train_step(0)
    assert logs["online/loss_gap"] == 0.0 and logs["online/b"] == 0.0
    assert logs["online/residual_sq"] == pytest.approx(1.0, abs=1e-6)


def test_resume_gives_the_same_numbers(preset):
    a = _trainer(preset, behaviour="replay", offline=SMALL["offline"])
    for s in range(3):
        a.train_step(s)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as the runner's checkpoint does (the live state keeps changing)
    after = [a.train_step(s) for s in range(3, 5)]
    b = _trainer(preset, behaviour="replay", offline=SMALL["offline"])
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    again = [b.train_step(s) for s in range(3, 5)]
    assert after == again


def test_empty_or_mismatched_offline_source_fails_at_start(preset, tmp_path):
    empty = tmp_path / "empty.npz"
    np.savez(empty, captions=np.array([], dtype=str), latents=np.zeros((0, 3, 8, 16, 16), np.float32),
             first_frames=np.zeros((0, 16, 16, 3), np.uint8))
    with pytest.raises(FCRMDataError, match="is empty"):
        _trainer(preset, offline={"source": str(empty)})
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, captions=np.array(["red circle moves left"]), latents=np.zeros((1, 4, 8, 32, 32), np.float32),
             first_frames=np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(FCRMDataError, match=r"shape \(4, 8, 32, 32\).*\(3, 8, 16, 16\)"):
        _trainer(preset, offline={"source": str(wrong)})
    with pytest.raises(FCRMDataError, match="does not exist"):
        _trainer(preset, offline={"source": str(tmp_path / "missing.npz")})
    with pytest.raises(ValueError, match="needs an `offline` source"):
        FCRMConfig(behaviour="none", offline=None)


def test_file_offline_source_trains(preset, tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 8, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "offline.npz"
    np.savez(path, captions=np.array(["red circle moves left"] * 4), frames=frames)
    tr = _trainer(preset, behaviour="none", offline={"source": str(path)}, reward={"name": "luminance"})
    assert tr.offline.rewards.tolist() == pytest.approx(
        [float((f / 255.0 @ np.array([0.299, 0.587, 0.114])).mean()) for f in frames], abs=1e-6)
    assert np.isfinite(tr.train_step(0)["loss"])


@register_reward
class _HalfNaN(Reward):
    name, space = "test-half-nan", "latent"

    def __call__(self, x0, inputs):
        r = x0.flatten(1).mean(1).double()
        r[::2] = float("nan")
        return r


def test_non_finite_rewards_are_dropped_and_counted(preset):
    tr = _trainer(preset, behaviour="on_policy", offline=None, reward={"name": "test-half-nan"}, conditions=2,
                  group_size=4)
    logs = tr.train_step(0)
    assert logs["reward/dropped"] == 4 and len(tr.round) == 4
    assert np.isfinite(logs["loss"])


def test_rewards_by_hand(preset):
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    x0 = torch.full((2, 3, 8, 16, 16), -1.0)
    x0[1] = 1.0
    lum = build_reward("luminance", adapter, preset)
    assert lum(x0, RewardInputs(None)).tolist() == pytest.approx([0.0, 1.0])
    from harness.data.batches import split_batch

    batch = split_batch(preset.world, "eval", range(2))
    cond = adapter.encode_condition(batch.first_frames, batch.captions)
    oracle = build_reward("oracle", adapter, preset)
    real, noise = oracle(batch.videos, RewardInputs(cond, batch.specs)), oracle(torch.rand_like(batch.videos) * 2 - 1,
                                                                                RewardInputs(cond, batch.specs))
    assert (real > 0.85).all() and (noise < real - 0.3).all()
    with pytest.raises(RewardError, match="needs tiny-world conditions"):
        oracle(batch.videos, RewardInputs(cond, None))
    rm = build_reward("latent_rm", adapter, preset)
    scores = rm(torch.cat([batch.videos, torch.rand_like(batch.videos) * 2 - 1]), RewardInputs(cond.cat([cond, cond])))
    assert torch.isfinite(scores).all() and scores[:2].min() > scores[2:].max()  # real clips over noise
    with pytest.raises(RewardError, match="unknown reward"):
        build_reward("hps", adapter, preset)
    assert {"latent_rm", "oracle", "luminance"} <= set(REWARDS)


class _FakeL14:
    """Stands in for CLIP ViT-L/14 (a 1.2 GB file): each frame's mean colour through a fixed matrix, normalised."""

    device, identity, cache_key = "cpu", "clip-vitl14+random-weights", "fake-l14"
    proj = np.random.default_rng(0).standard_normal((3, 768))

    def embed_many(self, videos):
        feats = [f.reshape(len(f), -1, 3).mean(1) / 255 @ self.proj for f in videos]
        return [f / np.linalg.norm(f, axis=1, keepdims=True) for f in feats]


def test_aesthetic_reward_by_hand(preset, tmp_path, monkeypatch):
    """The real-footage reward: LAION's linear head on each frame's CLIP embedding, averaged over frames;
    its weights come from the cache, and missing ones fail before any training with the prefetch command."""
    from harness import weights
    from harness.scorers.backends.real import vit

    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path))
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    with pytest.raises(weights.WeightsError, match=r"(?s)clip_vit_l14.*prefetch clip_vit_l14.*laion_aesthetic_l14"):
        build_reward("aesthetic", adapter, preset)
    weights.init_random(["laion_aesthetic_l14"], log=lambda _: None)
    vit._aesthetic_from.cache_clear()
    monkeypatch.setattr("trainers.rewards.resolve_all", lambda names: ())
    monkeypatch.setattr("metrics.quality.get_embedder", lambda name: _FakeL14())
    reward = build_reward("aesthetic", adapter, preset)
    assert reward.identity == "aesthetic[clip-vitl14+laion-linear+random-weights]"
    x0 = torch.rand(2, 3, 8, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = reward(x0, RewardInputs(None))
    w, b = (p.detach().double().numpy() for p in reward.model.head.parameters())
    for video, value in zip(x0, got, strict=True):
        frames = ((video.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        per_frame = _FakeL14().embed_many([frames])[0] @ w[0] + b[0]
        assert value.item() == pytest.approx(per_frame.mean(), rel=1e-5)
    assert got.dtype == torch.float64 and got[0] != got[1]
    tr = _trainer(preset, behaviour="on_policy", offline=None, reward={"name": "aesthetic"})
    assert np.isfinite(tr.train_step(0)["loss"])
    vit._aesthetic_from.cache_clear()


def test_missing_reward_model_names_the_file_and_the_command(preset, tmp_path):
    with pytest.raises(RewardError, match=r"head.safetensors.*harness build latent-rm"):
        build_reward("latent_rm", TinyWanAdapter.load(preset.base_checkpoint_path()), preset, path=str(tmp_path))


def test_variants_run_through_the_outer_loop_with_their_own_base_and_sampler(tmp_path):
    from harness.runner import RunError, RunOptions, method_config, run
    from harness.store import ResultStore
    from reports.render import render_report

    sets = ["eval.num_videos=4", "eval.final_num_videos=null",
            "sampler.num_steps=2", "probes.pairs=2", "probes.draws=1", "probes.every=2",
            "methods.fcrm.conditions=2", "methods.fcrm.group_size=2", "methods.fcrm.batch_size=2",
            "methods.fcrm.offline.count=4"]
    preset = load_preset("tiny", [parse_override(s) for s in sets])
    opts = RunOptions(methods=["fcrm-fewstep", "fcrm-replay-neg"], steps=2, eval_every=2,
                      metrics=["distortion_rate", "latent_reward", "luminance"], show_progress=False)
    cfg = method_config(preset, "fcrm-replay-neg", opts)
    assert cfg.trainer == "fcrm" and cfg.replay.filter == "negative" and cfg.offline is None
    assert cfg.conditions == 2 and cfg.batch_size == 2  # inherited from the fcrm section
    out = tmp_path / "run"
    run(preset, out, opts)
    with ResultStore(out / "results.sqlite") as store:
        ck = store.checkpoints()
        got = sorted(zip(ck["method"], ck["step"], strict=True))
        assert got == [("base", 0), ("fcrm-fewstep", 0), ("fcrm-fewstep", 2), ("fcrm-replay-neg", 2)]
        few = ck[ck["method"] == "fcrm-fewstep"]
        assert all([float(t) for t in s["timesteps"]] == [1000, 757, 522] for s in few["sampler"])
        agg = store.aggregates()
        assert agg["metric"].str.startswith("latent_reward[").any()
    render_report(out)
    text = (out / "report" / "fcrm.md").read_text()
    assert "Replay: negative-only" in text and "Generator: few-step (3 NFE): its base (step 0)" in text
    bad = load_preset("tiny", [parse_override("methods.fcrm-x.trainer=nope")])
    with pytest.raises(RunError, match="unknown method 'nope'"):
        method_config(bad, "fcrm-x", opts)


def test_cli_smoke_run_of_fcrm(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(app, ["run", "--smoke", "--methods", "fcrm", "--out", str(tmp_path / "r"),
                                   "--no-progress", "--no-report", "--metrics", "latent_reward,luminance"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["run", "--smoke", "--methods", "fcrm-nope", "--out", str(tmp_path / "s")])
    assert res.exit_code != 0 and "variants in preset 'tiny'" in res.output
    listed = CliRunner().invoke(app, ["list", "methods"]).output
    assert "fcrm-replay-neg\tvariant of fcrm" in listed


def test_ema_rollouts_use_the_ema_weights_and_restore_the_policy(preset):
    tr = _trainer(preset, behaviour="ema", offline=None)
    tr.train_step(0)
    tr.train_step(1)
    policy = [p.detach().clone() for p in tr.params]
    assert any(not torch.equal(e, p) for e, p in zip(tr.ema, policy, strict=True))
    with tr._behaviour_weights():
        assert all(torch.equal(p, e) for p, e in zip(tr.params, tr.ema, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(tr.params, policy, strict=True))


@register_reward
class _AllNaN(Reward):
    name, space = "test-all-nan", "latent"

    def __call__(self, x0, inputs):
        return torch.full((x0.shape[0],), float("nan"), dtype=torch.float64)


def test_a_run_whose_rewards_are_all_non_finite_stops_with_the_step(tmp_path):
    from harness.runner import RunError, RunOptions, run

    sets = ["eval.num_videos=2", "eval.final_num_videos=null",
            "sampler.num_steps=2", "probes.names=[]", "methods.fcrm.conditions=2",
            "methods.fcrm.group_size=2", "methods.fcrm.batch_size=2", "methods.fcrm.behaviour=on_policy",
            "methods.fcrm.offline=null", "methods.fcrm.reward.name=test-all-nan"]
    preset = load_preset("tiny", [parse_override(s) for s in sets])
    with pytest.raises(RunError, match=r"fcrm seed 0 stopped at step 0: .*no sample to train on.*base model"):
        run(preset, tmp_path / "r", RunOptions(methods=["fcrm"], steps=2, eval_every=2,
                                               metrics=["luminance"], show_progress=False))
