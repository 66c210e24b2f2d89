"""The training probes' held-out probe set and their one yardstick for every method (issue #25):
the probe clips are disjoint from every method's training clips (a run that overlaps them is refused
before any work), and Gamma compares every method with DPO at the probes' own beta."""

from types import SimpleNamespace

import numpy as np
import pytest

import harness.probing as probing
from harness.config import load_preset, parse_override
from harness.data.preferences import PairSet
from harness.probing import ProbeRunner, probe_set_problems
from harness.runner import RunError, RunOptions, method_config, method_plan, run
from trainers.apo import APOConfig
from trainers.fcrm import FCRMConfig
from trainers.group_rl import GroupRLConfig
from trainers.preference import PreferenceConfig
from trainers.sft import SFTConfig
from trainers.shift import ShiftConfig

SEEDS = range(3)  # the seeds the benchmark reports (sft's clip walk depends on the seed)


def _configs(preset):
    """Each method's trainer config and the runner's schedule for it."""
    return {m: method_plan(preset, m, RunOptions([m])) for m in preset.methods}


def _walk(cfg, split, steps):
    """The clips an SFT-style trainer sees: seed * 1e6 + step * batch .. + batch - 1, every step and seed."""
    b = cfg.batch_size
    return {(split, s * 1_000_000 + step * b + i) for s in SEEDS for step in range(steps) for i in range(b)}


def _trained_clips(cfg, steps) -> set[tuple[str, int]]:
    """Every (split, clip index) the method's trainer draws, written out from its config as each
    trainer indexes its clips (trainers/sft.py, preference.py, apo.py, fcrm.py + fcrm_data.py, shift.py,
    group_rl.py's trainers)."""
    out: set[tuple[str, int]] = set()

    def pairs(p):
        if p is not None and p.source != "file":  # build_rollout_pairs: clips 0 .. conditions - 1
            out.update((p.split, i) for i in range(p.conditions))

    if isinstance(cfg, SFTConfig):
        out |= _walk(cfg, cfg.split, steps)
    elif isinstance(cfg, PreferenceConfig):
        pairs(cfg.pairs)
    elif isinstance(cfg, APOConfig):
        for stage in cfg.stages:
            pairs(stage.pairs)
            if stage.kind in ("online", "distill"):  # randint(stage.conditions)
                out.update((stage.split, i) for i in range(stage.conditions))
    elif isinstance(cfg, FCRMConfig):
        if cfg.behaviour != "none":  # policy_rollouts: randint(condition_pool)
            out.update((cfg.split, i) for i in range(cfg.condition_pool))
        if cfg.offline is not None and cfg.offline.source == "world":
            out.update((cfg.offline.split, cfg.offline.start + i) for i in range(cfg.offline.count))
    elif isinstance(cfg, GroupRLConfig):  # flow-grpo, diffusionnft, awm: randint(condition_pool)
        out.update((cfg.split, i) for i in range(cfg.condition_pool))
    elif isinstance(cfg, ShiftConfig):
        out.update((cfg.split, i) for i in range(cfg.condition_pool))
        out.update((cfg.real.split, cfg.real.start + i) for i in range(cfg.real.count))
        out |= _walk(cfg, cfg.anchor_split, steps)
    else:
        raise AssertionError(f"the test does not know the clips of {type(cfg).__name__}")
    return out


@pytest.mark.parametrize("name", ["tiny", "tiny-long"])
def test_the_probe_set_is_disjoint_from_every_methods_training_clips(name):
    preset = load_preset(name)
    probe = {(preset.probes.split, preset.probes.start + i) for i in range(preset.probes.pairs)}
    configs = _configs(preset)
    assert {"sft", "dpo", "pgdpo", "apo", "fcrm", "shift"} <= set(configs)
    for method, (cfg, schedule) in configs.items():
        trained = _trained_clips(cfg, schedule.steps)
        assert trained, method
        assert not probe & trained, f"{method} trains on probe clips {sorted(probe & trained)[:4]}"
    # the evaluator's videos (eval clips 0 .. final_num_videos - 1) are apart from the probe clips too
    assert not probe & {("eval", i) for i in range(preset.eval.size(final=True))}
    assert probe_set_problems({m: cfg for m, (cfg, _) in configs.items()}, preset) == []


@pytest.mark.parametrize(("overrides", "methods", "named"), [
    (["probes.split=prompts", "probes.start=0"], ["sft", "dpo"], "methods.dpo.pairs: prompts clips 0..95"),
    (["probes.split=prompts", "probes.start=100100"], ["fcrm"], "methods.fcrm.offline: prompts clips 100000..100255"),
    (["probes.split=finetune"], ["shift"], "methods.shift.anchor_split (clips seed * 1000000"),
    (["probes.start=0", "methods.apo.stages=[{kind: online, steps: 2, split: eval}]"], ["apo"],
     "methods.apo.stages[0] (online conditions): eval clips 0..95"),
])
def test_a_probe_set_that_overlaps_training_clips_is_refused_before_any_work(tmp_path, overrides, methods, named):
    preset = load_preset("tiny", [parse_override(s) for s in overrides])
    with pytest.raises(RunError) as err:
        run(preset, tmp_path / "run", RunOptions(methods, [0], steps=2, show_progress=False))
    msg = str(err.value)
    assert f"the held-out probe set (probes.split='{preset.probes.split}'" in msg and named in msg
    assert "move the probes to clips no method trains on (probes.split, probes.start)" in msg
    assert not (tmp_path / "run").exists()  # refused before the run directory, the base eval or any training


def test_on_footage_any_draw_from_the_probe_split_overlaps():
    """A real split is finite and every index wraps around it: SFT walks all of finetune."""
    def footage(split):
        return load_preset("tiny", [{"data": {"kind": "folder", "root": "/nowhere", "captions": "captions.csv",
                                              "num_frames": 8, "fps": 8, "height": 16, "width": 16,
                                              "splits": {"finetune": 0.9, "eval": 0.1}},
                                     "probes": {"split": split, "start": 5_000_000}}])

    configs = {"sft": method_config(footage("finetune"), "sft", RunOptions(["sft"]))}
    (problem,) = probe_set_problems(configs, footage("finetune"))
    assert "overlaps methods.sft.split" in problem and "on footage every index wraps around the split" in problem
    assert probe_set_problems(configs, footage("eval")) == []


def _fake_pairs(n=3):
    frames = np.zeros((n, 8, 16, 16, 3), np.uint8)
    return PairSet(frames[:, 0], ["c"] * n, frames, frames + 1, np.ones(n), np.zeros(n),
                   [f"eval:{100_000 + i}" for i in range(n)])


def test_gamma_has_one_identity_for_every_method(monkeypatch):
    """Gamma is measured against DPO at probes.beta (FCRM's own beta, its reward temperature 1, used to
    be taken), on the held-out set, which its identity names; only for the pairwise preference methods,
    and with one identity for all of them. The cross-method probes have one identity for all six."""
    from trainers.registry import get_trainer

    monkeypatch.setattr(probing, "load_pairs", lambda *a, **k: _fake_pairs())
    preset = load_preset("tiny")
    ids, not_applicable = {}, {}
    for method in ("sft", "dpo", "pgdpo", "fcrm", "shift", "apo"):
        cfg = method_config(preset, method, RunOptions([method]))
        cls = get_trainer(cfg.trainer or method)
        trainer = SimpleNamespace(adapter=None, config=cfg, pairwise_preference=cls.pairwise_preference)
        runner = ProbeRunner(preset, trainer, None)
        ids[method] = {p.spec.name: p.identity for p in runner.probes}
        not_applicable[method] = runner.not_applicable
    assert method_config(preset, "fcrm", RunOptions(["fcrm"])).beta == 1.0  # not the probes' beta
    pairwise = ("dpo", "pgdpo", "apo")
    assert len({ids[m]["gamma"] for m in pairwise}) == 1, {m: ids[m]["gamma"] for m in pairwise}
    for m in ("sft", "fcrm", "shift"):  # never measured there: no number whose meaning depends on the method
        assert "gamma" not in ids[m] and "pairwise preference" in not_applicable[m]["gamma"]
    for m in pairwise:
        assert not not_applicable[m]
    for name in ("chosen_logp_step", "likelihood_displacement"):
        assert len({i[name] for i in ids.values()}) == 1, {m: i[name] for m, i in ids.items()}
    assert ids["dpo"]["gamma"] == "gamma[beta=100,pairs=3,set=heldout-eval-100000,stat=positive_share]"
    assert ids["sft"]["likelihood_displacement"] == "likelihood_displacement[draws=4,pairs=3,set=heldout-eval-100000]"
    assert ids["fcrm"]["chosen_logp_step"] == \
        "chosen_logp_step[draws=4,pairs=3,set=heldout-eval-100000,stat=raises_share]"
    other = load_preset("tiny", [parse_override("probes.beta=10")])
    trainer = SimpleNamespace(adapter=None, config=method_config(other, "dpo", RunOptions(["dpo"])),
                              pairwise_preference=True)
    (gamma,) = [p for p in ProbeRunner(other, trainer, None).probes if p.spec.name == "gamma"]
    assert gamma.beta == 10 and "beta=10," in gamma.identity  # the probes' beta, not dpo's 100


def test_the_report_says_which_probe_set_the_probes_were_measured_on():
    from reports.probes import probe_caption

    new = ["fvd[k=1]", "gamma[beta=100,pairs=16,set=heldout-eval-100000,stat=positive_share]",
           "likelihood_displacement[draws=4,pairs=16,set=heldout-eval-100000]"]
    caption = probe_caption(new)
    assert caption.startswith("Training probes on the held-out probe set") and "`gamma[beta=100," in caption
    assert "fvd" not in caption and probe_caption(["fvd[k=1]"]) == ""
    old = probe_caption(["gamma[beta=1,pairs=16,stat=positive_share]", new[1]])
    assert old.startswith("Training probes recorded without a held-out probe set")
