"""The shipped base model produces videos of the tiny world (judged by the oracle)."""

import numpy as np
import pytest
import torch

from harness.config import load_preset
from harness.data.batches import split_batch
from harness.data.oracle import judge
from harness.data.video_io import tensor_to_frames
from harness.models.tiny_wan import TinyWanAdapter
from harness.sampling import sample

N = 24
# Measured on the first 24 eval conditions with the preset's sampler (2-core CPU):
#   integrity          samples 0.613, real clips 0.866, pure noise 0.047
#   motion adherence   samples 0.413, real clips 0.935, pure noise 0.112
# Samples keep the sprites' colour and rough shape and start moving the right way, but
# smear and drift over the clip: adherence is far from real clips. The margins below
# pin that state so a regression in the model or the sampler fails this test.
ABOVE_NOISE_INTEGRITY, ABOVE_NOISE_ADHERENCE = 0.45, 0.2
MARGIN_INTEGRITY, MARGIN_ADHERENCE = 0.3, 0.6


@pytest.fixture(scope="module")
def setup():
    preset = load_preset("tiny")
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    adapter.model.eval()
    batch = split_batch(preset.world, "eval", range(N))
    cond = adapter.encode_condition(batch.first_frames, batch.captions)
    seeds = [preset.eval.seed + i for i in range(N)]
    videos = sample(adapter, cond, seeds, preset.sampler)
    return preset, adapter, batch, cond, seeds, videos


def _means(frames_list, batch, world):
    js = [judge(f, s, world) for f, s in zip(frames_list, batch.specs, strict=True)]
    return np.nanmean([j.integrity for j in js]), np.nanmean([j.motion_adherence for j in js])


def test_samples_look_like_the_world(setup):
    preset, _, batch, _, _, videos = setup
    samples = _means([tensor_to_frames(v) for v in videos], batch, preset.world)
    real = _means(list(batch.frames), batch, preset.world)
    rng = np.random.default_rng(0)
    noise = _means([rng.integers(0, 256, f.shape, dtype=np.uint8) for f in batch.frames], batch, preset.world)
    print(f"integrity/adherence: samples {samples}, real {real}, noise {noise}")
    assert samples[0] > noise[0] + ABOVE_NOISE_INTEGRITY and samples[1] > noise[1] + ABOVE_NOISE_ADHERENCE
    assert samples[0] > real[0] - MARGIN_INTEGRITY and samples[1] > real[1] - MARGIN_ADHERENCE


def test_same_seed_gives_bit_identical_videos(setup):
    preset, adapter, _, cond, seeds, videos = setup
    again = sample(adapter, cond, seeds, preset.sampler)
    assert torch.equal(again, videos)
    sde = preset.sampler.model_copy(update={"kind": "sde", "num_steps": 6})
    assert torch.equal(sample(adapter, cond.index(slice(0, 4)), seeds[:4], sde),
                       sample(adapter, cond.index(slice(0, 4)), seeds[:4], sde))
