"""Each trainer's logged compute (trainers/base.py: ``compute/passes``, ``compute/samples``) against a hand
count of its first two steps, at tiny settings: rollouts x sampler steps, one reward-backbone forward
per scored rollout, a trained forward as 3 (forward + backward), and one pass per reference, old or EMA
prediction. Step 0 opens a rollout round (where there is one); step 1 reuses it."""

from __future__ import annotations

import pytest
import torch
from tiny_runs import fast_preset, run_cache  # noqa: F401  (run_cache: autouse fixture)

from harness.models.base import counting_passes, uncounted
from harness.models.tiny_wan import TinyWanAdapter
from trainers.base import trainer_settings
from trainers.registry import trainer_for

B = 2  # batch size of every method here
S = 2  # the fast preset's sampler steps (rollouts of fcrm, shift, diffusionnft and awm)
N = 4  # rollouts per round: 2 conditions x 2 samples
PAIRS = {"source": "rollouts", "split": "prompts", "conditions": 2, "per_condition": 2, "judge": "latent_rm"}
SMALL = {
    "sft": {},
    "dpo": {"pairs": PAIRS},
    "pgdpo": {"pairs": PAIRS},
    "apo": {"stages": [{"kind": "offline", "steps": 2, "pairs": PAIRS}]},
    "fcrm": {"conditions": 2, "group_size": 2, "inner_steps": 2,
             "offline": {"source": "world", "split": "prompts", "start": 100000, "count": 4}},
    "shift": {"buffer": {"prompts": 2, "rollouts_per_prompt": 2, "passes": 1},
              "real": {"split": "prompts", "start": 300000, "count": 16}},
    "flow-grpo": {"conditions": 2, "group_size": 2, "inner_steps": 2, "rollout_steps": 3},
    "diffusionnft": {"conditions": 2, "group_size": 2, "inner_steps": 2, "train_timesteps": 2},
    "awm": {"conditions": 2, "group_size": 2, "inner_steps": 2, "train_timesteps": 2},
}


def hand_count(method: str, cfg) -> list[tuple[int, int]]:
    """(passes, samples) of steps 0 and 1, counted from the methods' equations, not from the code."""
    trained = 3 * B  # a batch through the policy with its backward
    if method == "sft":
        return [(trained, B)] * 2
    if method in ("dpo", "pgdpo"):  # both videos of each pair: policy with backward + reference
        return [(2 * trained + 2 * B, 2 * B)] * 2
    if method == "apo":  # the DPO step at every timestep of its window
        window = cfg.timesteps.n_high + cfg.timesteps.n_low
        return [(window * (2 * trained + 2 * B), 2 * B)] * 2
    round_ = N * S + N  # rollouts x sampler steps, then one latent-reward backbone pass per rollout
    if method == "fcrm":  # 2 branches (online, offline) x 2 draws (double sampling) x (policy + reference)
        train = 2 * 2 * (trained + B)
        return [(round_ + train, N + B), (train, B)]
    if method == "shift":  # SFT anchor and rollout term, each through the policy; rewards are discriminators'
        train = 2 * trained
        return [(N * S + train, N + B), (train, B)]
    if method == "flow-grpo":  # SDE rollouts; each trained transition (all but the last) policy + reference
        steps = cfg.rollout_steps
        train = (steps - 1) * (trained + B)
        return [(N * steps + N + train, N), (train, 0)]
    if method == "diffusionnft":  # per timestep: policy, old policy, reference
        train = cfg.train_timesteps * (trained + 2 * B)
        return [(round_ + train, N), (train, 0)]
    if method == "awm":  # per timestep: policy, old policy, EMA, reference
        train = cfg.train_timesteps * (trained + 3 * B)
        return [(round_ + train, N), (train, 0)]
    raise AssertionError(method)


@pytest.mark.parametrize("method", list(SMALL))
def test_logged_compute_matches_a_hand_count(method):
    preset = fast_preset()
    section = {**trainer_settings(preset.methods[method]), "batch_size": B, **SMALL[method]}
    cls = trainer_for(method, section)
    cfg = cls.config_class(**section)
    trainer = cls(TinyWanAdapter.load(preset.base_checkpoint_path()), preset, cfg, 0)
    want = hand_count(method, cfg)
    passes = samples = 0
    for step, (p, s) in enumerate(want):
        logs = trainer.counted_step(step)
        passes, samples = passes + p, samples + s
        assert (logs["compute/passes"], logs["compute/samples"]) == (passes, samples), (method, step)
    assert trainer.compute == {"passes": passes, "samples": samples}
    # Carried by the trainer's state, so a resumed run continues the count.
    state = trainer.state_dict()
    trainer.compute = {"passes": 0, "samples": 0}
    trainer.load_state_dict(state)
    assert trainer.compute == {"passes": passes, "samples": samples}


def test_a_probe_replay_is_not_counted_and_old_checkpoints_are_refused():
    preset = fast_preset()
    cls = trainer_for("sft")
    trainer = cls(TinyWanAdapter.load(preset.base_checkpoint_path()), preset,
                  cls.config_class(**{**trainer_settings(preset.methods["sft"]), "batch_size": B}), 0)
    trainer.coming_loss(0)  # a probe's replay outside a step: not training compute
    logs = trainer.counted_step(0)
    assert (logs["compute/passes"], logs["compute/samples"]) == (3 * B, B)
    state = trainer.state_dict()
    del state["compute"]
    with pytest.raises(ValueError, match="predates compute counting"):
        trainer.load_state_dict(state)


def test_counts_follow_rows_backwards_and_uncounted_blocks():
    adapter = TinyWanAdapter.load(fast_preset().base_checkpoint_path())
    adapter.add_lora(2, 2.0)
    x = torch.zeros(adapter.latent_shape(3))
    cond = adapter.encode_condition(torch.zeros(3, 3, 16, 16), ["a"] * 3)
    with counting_passes() as count:
        out = adapter.predict(x, torch.full((3,), 0.5), cond)
        out.sum().backward(retain_graph=True)
        out.mean().backward()  # a second backward through the same prediction is more work
        with torch.no_grad():
            adapter.predict(x[:1], torch.full((1,), 0.5), cond.index(slice(0, 1)))
        with uncounted():
            adapter.predict(x, torch.full((3,), 0.5), cond).sum().backward()
    assert (count.forward, count.backward, count.passes) == (4, 6, 16)
