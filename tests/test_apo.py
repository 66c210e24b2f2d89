"""The `apo` trainer: stage configuration, the reference hand-off between stages, resume."""

import copy

import pytest
import torch
from pydantic import ValidationError

from harness.config import load_preset, parse_override
from harness.models.tiny_wan import TinyWanAdapter
from trainers.apo import APOConfig, APOTrainer
from trainers.base import trainer_settings

FAST = ["sampler.num_steps=2"]
PAIRS = {"conditions": 4, "per_condition": 2}


def _trainer(tmp_path, stages, **kw):
    preset = load_preset("tiny", [parse_override(s) for s in FAST])
    cfg = APOConfig(**{**trainer_settings(preset.methods["apo"]), "batch_size": 2, "stages": stages, **kw})
    torch.manual_seed(0)
    return APOTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0, workdir=tmp_path / "c")


def _probe_output(trainer):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(trainer.adapter.latent_shape(2), generator=g)
    x_w, _, cond = trainer._pairs(0).tensors(trainer.adapter, [0, 0])
    with torch.no_grad():
        return trainer.adapter.predict(x, torch.full((2,), 0.7), cond)


def test_stage_config_is_checked():
    with pytest.raises(ValidationError, match="half_online stage needs labelled anchors"):
        APOConfig(stages=[{"kind": "half_online", "steps": 3}])
    with pytest.raises(ValidationError, match="needs ranker_model"):
        APOConfig(stages=[{"kind": "online", "steps": 3, "ranker": "vlm"}])
    cfg = APOConfig(stages=[{"kind": "offline", "steps": 40}, {"kind": "online", "steps": 20}])
    assert cfg.planned_steps() == 60 and cfg.stages[0].pairs is not None
    scaled = cfg.fit_steps(6)
    assert [s.steps for s in scaled.stages] == [4, 2] and scaled.planned_steps() == 6
    assert [s.steps for s in cfg.fit_steps(1).stages] == [1, 1]  # every stage keeps a step


def test_the_default_apo_is_the_papers_curriculum_and_apo_offline_is_table_1():
    """Issue #26: `apo` runs online, half-online, offline (Sec. 3.3; + distillation on a guided preset), and the
    offline-only form is the named variant that Table 1's compute-matched comparison with DPO uses."""
    from harness.runner import RunOptions, method_config

    assert [s.kind for s in APOConfig().stages] == ["online", "half_online", "offline"]
    kinds = {}
    for name in ("tiny", "tiny-long", "wan21-i2v-dpo"):
        preset = load_preset(name)
        kinds[name] = {m: [s.kind for s in method_config(preset, m, RunOptions([m])).stages]
                       for m in ("apo", "apo-offline")}
    assert kinds["tiny"] == kinds["tiny-long"] == {"apo": ["online", "half_online", "offline"],
                                                   "apo-offline": ["offline"]}
    assert kinds["wan21-i2v-dpo"] == {"apo": ["online", "half_online", "offline", "distill", "distill_dpo"],
                                      "apo-offline": ["offline"]}
    claim = {c.a: c for c in APOTrainer.claims}
    assert claim["apo-offline"].b == "dpo" and claim["apo"].b == "base"


def test_each_stage_references_the_previous_stage(tmp_path):
    stages = [{"kind": "offline", "steps": 2, "pairs": PAIRS}, {"kind": "offline", "steps": 2, "pairs": PAIRS}]
    trainer = _trainer(tmp_path, stages, stage_checkpoints=True)
    assert trainer.checkpoint_steps() == {2, 4}
    # Stage ends off the schedule are not checkpoints when asked (the tiny preset's budget): loading any
    # checkpoint rebuilds its stage (below: a state taken inside stage 1).
    assert _trainer(tmp_path, stages, stage_checkpoints=False).checkpoint_steps() == set()
    base = _probe_output(trainer)
    for step in range(2):
        logs = trainer.train_step(step)
        assert logs["stage"] == 0 and logs["pairs"] == 2 and logs["t_mean"] > 0
    end_of_stage0 = _probe_output(trainer)
    assert not torch.allclose(end_of_stage0, base)
    state0 = copy.deepcopy(trainer.state_dict())  # state dicts hold live tensors, as torch's do
    with trainer.adapter.reference():  # stage 0's reference is the base model
        assert torch.allclose(_probe_output(trainer), base, atol=1e-6)
    trainer.train_step(2)
    assert trainer.stage == 1
    with trainer.adapter.reference():  # stage 1's reference: the frozen end of stage 0
        assert torch.allclose(_probe_output(trainer), end_of_stage0, atol=1e-5)
    state = {k: v for k, v in trainer.state_dict().items()}
    after = _probe_output(trainer)
    # A fresh trainer restored from the state rebuilds the same policy and reference.
    other = _trainer(tmp_path, stages)
    other.load_state_dict(state)
    assert other.stage == 1 and torch.allclose(_probe_output(other), after, atol=1e-6)
    with other.adapter.reference():
        assert torch.allclose(_probe_output(other), end_of_stage0, atol=1e-5)
    a, b = trainer.train_step(3), other.train_step(3)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # Back to a stage-0 checkpoint in a trainer that has folded: the base weights come back.
    trainer.load_state_dict(state0)
    assert trainer.stage == 0 and torch.allclose(_probe_output(trainer), end_of_stage0, atol=1e-6)
    with trainer.adapter.reference():
        assert torch.allclose(_probe_output(trainer), base, atol=1e-6)


def test_online_and_half_online_steps(tmp_path):
    stages = [{"kind": "online", "steps": 1, "conditions": 4},
              {"kind": "half_online", "steps": 1, "pairs": PAIRS}]
    trainer = _trainer(tmp_path, stages)
    online = trainer.train_step(0)
    assert 0 <= online["pairs"] <= 2 and online["stage"] == 0
    half = trainer.train_step(1)
    assert half["stage"] == 1 and half["pairs"] == 2 and half["loss"] > 0


def test_distortion_table_is_mean_and_std_over_seeds_with_compute():
    import pandas as pd

    from reports.distortion import distortion_markdown, distortion_table

    m = "distortion_rate[judge=oracle]"
    rows = [("base", 0, 0, 0.4)] + [("dpo", s, st, v) for s, (st, v) in
                                    enumerate([(300, 0.30), (300, 0.20), (300, 0.25)])]
    rows += [("dpo", 0, 100, 0.9)]  # an earlier checkpoint: not the final one
    rows += [("apo", s, 60, v) for s, v in enumerate([0.10, 0.20, 0.15])]
    agg = pd.DataFrame(rows, columns=["method", "seed", "step", "value"]).assign(metric=m)
    table = distortion_table(agg, {"apo": {"timesteps": {"n_high": 4, "n_low": 1}}, "dpo": {}}).set_index("method")
    assert table.loc["dpo", "mean"] == pytest.approx(0.25) and table.loc["dpo", "std"] == pytest.approx(0.05)
    compute = "compute (DPO-step equivalents)"
    assert table.loc["apo", compute] == 300 == table.loc["dpo", compute]
    assert table.loc["apo", "mean"] == pytest.approx(0.15) and table.loc["apo", "seeds"] == 3
    assert "25.0% ± 5.0%" in distortion_markdown(table.reset_index(), 48)


def test_distill_dpo_needs_a_distill_stage_first():
    with pytest.raises(ValidationError, match="needs a distilled model"):
        APOConfig(stages=[{"kind": "offline", "steps": 2}, {"kind": "distill_dpo", "steps": 2}])
    APOConfig(stages=[{"kind": "distill", "steps": 2}, {"kind": "distill_dpo", "steps": 2}])


def test_skip_guidance_by_hand(tmp_path):
    from harness.sampling import guided_velocity

    trainer = _trainer(tmp_path, [{"kind": "offline", "steps": 1, "pairs": PAIRS}])
    a = trainer.adapter
    x = torch.randn(a.latent_shape(2), generator=torch.Generator().manual_seed(1))
    s = torch.full((2,), 0.6)
    _, _, cond = trainer._pairs(0).tensors(a, [0, 0])
    with torch.no_grad():
        v = a.predict(x, s, cond)
        with a.skip_blocks([2]):
            v_skip = a.predict(x, s, cond)
        assert not torch.allclose(v, v_skip)
        assert torch.allclose(a.predict(x, s, cond), v)  # the hooks are gone after the context
        stg = guided_velocity(a, cond, 1.0, 0.5, [2])(x, s)
        assert torch.allclose(stg, v + 0.5 * (v - v_skip), atol=1e-6)
        v_u = a.predict(x, s, cond.null_text())
        both = guided_velocity(a, cond, 3.0, 0.5, [2])(x, s)
        assert torch.allclose(both, v_u + 3.0 * (v - v_u) + 0.5 * (v - v_skip), atol=1e-5)
    with pytest.raises(ValueError, match="4 blocks"):
        with a.skip_blocks([7]):
            pass


def test_distill_stage_moves_the_student_towards_the_guided_teacher(tmp_path):
    trainer = _trainer(tmp_path, [{"kind": "distill", "steps": 12, "conditions": 4}], lr=2e-3)
    first = trainer.train_step(0)["loss"]
    losses = [trainer.train_step(s)["loss"] for s in range(1, 12)]
    assert first > 0 and sum(losses[-4:]) / 4 < first


def test_rankers(tmp_path):
    import numpy as np

    from harness.data.world import WorldConfig, make_clip
    from trainers.rankers import LabelRanker, OracleRanker

    world = WorldConfig()
    clip = make_clip(world, "prompts", 0)
    noise = np.random.default_rng(0).integers(0, 256, clip.frames.shape, dtype=np.uint8)
    oracle = OracleRanker(world)
    assert oracle.prefer(clip.frames, noise, clip.spec) == 1 and oracle.prefer(noise, clip.frames, clip.spec) == -1
    trainer = _trainer(tmp_path, [{"kind": "offline", "steps": 1, "pairs": PAIRS}])
    pairs = trainer._pairs(0)
    labels = LabelRanker(pairs)
    assert labels.prefer(pairs.chosen[0], pairs.rejected[0], None) == 1
    assert labels.prefer(pairs.rejected[0], pairs.chosen[0], None) == -1
    assert labels.prefer(noise, pairs.chosen[0], None) == 0 and labels.unknown == 1


def test_gamma_of_apo_uses_its_window_objective_on_the_probe_pairs(tmp_path):
    from trainers.probes import Gamma

    trainer = _trainer(tmp_path, [{"kind": "offline", "steps": 2, "pairs": PAIRS}])
    trainer.train_step(0)
    probe = Gamma(trainer._pairs(0), beta=trainer.config.beta)
    first, again = probe.measure(trainer, 1), probe.measure(trainer, 1)
    assert first == again  # fixed draws and a fixed window: a probe is deterministic
    assert first["dlogp_method"] != first["dlogp_dpo"] and all(abs(v) < 1 for v in first.values())


def test_method_sampler_sets_the_anchors_and_the_rollouts(tmp_path, monkeypatch):
    """A method-level sampler, not the preset's, gives the trajectory anchors and samples the rollouts."""
    import trainers.apo as apo
    from harness.sampling import SamplerConfig, sigma_schedule

    own = SamplerConfig(num_steps=5, shift=3.0)
    stages = [{"kind": "online", "steps": 1, "conditions": 4}, {"kind": "half_online", "steps": 1, "pairs": PAIRS}]
    trainer = _trainer(tmp_path, stages, sampler=own.model_dump())
    assert trainer.timesteps.sampler == own != trainer.preset.sampler
    want = torch.round(sigma_schedule(own.model_copy(update={"shift": 4.0}))[:-1] * 1000).long()
    assert torch.equal(trainer.timesteps.anchors(4.0), want) and len(want) == 5
    seen = []
    real = apo.sample

    def spy(adapter, cond, seeds, cfg, *a, **kw):
        seen.append(cfg)
        return real(adapter, cond, seeds, cfg, *a, **kw)

    monkeypatch.setattr(apo, "sample", spy)
    trainer.train_step(0)  # online: two rollouts per condition
    trainer.train_step(1)  # half-online: one rollout per anchor
    assert len(seen) == 3 and all(cfg == own for cfg in seen)


def test_after_distillation_rollouts_and_evaluation_drop_guidance(tmp_path):
    from harness.sampling import SamplerConfig

    guided = SamplerConfig(num_steps=2, guidance_scale=4.0, stg_scale=0.5, stg_blocks=[1])
    preset = load_preset("tiny", [parse_override(s) for s in FAST])
    preset = preset.model_copy(update={"sampler": guided})
    cfg = APOConfig(**{**trainer_settings(preset.methods["apo"]), "batch_size": 2,
                       "stages": [{"kind": "offline", "steps": 1, "pairs": PAIRS},
                                  {"kind": "distill", "steps": 1, "conditions": 4},
                                  {"kind": "half_online", "steps": 1, "pairs": PAIRS}]})
    trainer = APOTrainer(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0, workdir=tmp_path / "c")
    plain = guided.model_copy(update={"guidance_scale": 1.0, "stg_scale": 0.0})
    assert [trainer.eval_sampler(s) for s in (0, 1, 2, 3)] == [guided, guided, plain, plain]
    assert trainer._sampler_after(0) == guided and trainer._sampler_after(2) == plain  # rollouts of stage 2


def test_a_missing_vlm_ranker_directory_is_refused_before_any_work(tmp_path, monkeypatch):
    from harness.runner import RunError, check_methods

    monkeypatch.setenv("HARNESS_MODELS", str(tmp_path))
    preset = load_preset("tiny")
    cfg = APOConfig(**{**trainer_settings(preset.methods["apo"]),
                       "stages": [{"kind": "online", "steps": 2, "ranker": "vlm", "ranker_model": "my-ranker"}]})
    with pytest.raises(RunError, match=rf"VLM ranker's directory '{tmp_path}/my-ranker' does not exist; place"):
        check_methods({"apo": cfg}, preset)
    (tmp_path / "my-ranker").mkdir()
    check_methods({"apo": cfg}, preset)  # found under $HARNESS_MODELS
