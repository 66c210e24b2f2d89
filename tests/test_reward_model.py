"""`harness build latent-rm` on the tiny world (oracle scores): the head trains, its record names the
backbone and the held-out fit, and it loads back as FCRM's `latent_rm` (the shipped one is built
the same way with more data and steps)."""

from __future__ import annotations

import json
import math

import torch

from harness.build.latent_rm import train_reward_model
from harness.config import load_preset
from harness.scorers.latent_rm import HEAD_FILE, RECORD_FILE, load_reward_model


def test_tiny_reward_model_trains_records_and_loads(tmp_path):
    preset = load_preset("tiny", [{"sampler": {"num_steps": 2}}])
    record = train_reward_model(preset, tmp_path, conditions=8, steps=3, batch_size=8, show_progress=False)
    assert (tmp_path / HEAD_FILE).is_file() and json.loads((tmp_path / RECORD_FILE).read_text()) == record
    assert record["data"]["videos"] == {"sampled": 16, "sampled_4_steps": 8, "real": 8}
    assert record["held_out"]["videos"] > 0 and math.isfinite(record["held_out"]["rmse"])
    rm = load_reward_model(tmp_path)
    assert not rm.shared and rm.digest != load_reward_model().digest  # not the shipped head
    x0 = torch.rand(2, *rm.backbone.latent_shape(1)[1:]) * 2 - 1
    cond = rm.backbone.encode_condition(x0[:, :, 0], ["a", "b"])
    assert torch.isfinite(rm.score(x0, cond)).all()


def test_pairwise_reward_model_on_the_tiny_world(tmp_path):
    """`build latent-rm --pairs rollouts` on the tiny preset (oracle-judged pairs): the record names the
    tiny backbone, and the head loads onto the base model it was fitted on, read through the policy."""
    from harness.build.latent_rm import train_reward_on_pairs
    from harness.models.starting import base_adapter

    preset = load_preset("tiny", [{"sampler": {"num_steps": 2}}])
    record = train_reward_on_pairs(preset, "rollouts", tmp_path, conditions=6, steps=3, batch_size=4,
                                   show_progress=False)
    assert record["family"] == "tiny" and record["backbone"] == preset.base_checkpoint
    assert record["data"]["count"] == 6 and record["held_out"]["pairs"] == 1
    adapter = base_adapter(preset)
    rm = load_reward_model(tmp_path, adapter)
    assert rm.shared and rm.backbone is adapter
