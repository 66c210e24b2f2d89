"""AMT-S interpolation backend: upstream checkpoint layout, strict loading, padding, batching, motion_smoothness."""

import numpy as np
import pytest
import torch

import harness.scorers.backends.real.amt as amt  # registers the amt_s random initialiser and the amt-s backend
from harness.scorers.backends.interpolation import get_interpolation_backend, list_interpolation_backends
from harness.scorers.backends.real.common import load_strict, read_state_dict
from harness.weights import WeightsError, init_random, resolve
from metrics import VideoSample, get_metric
from metrics.synthetic import translating_texture

SIZE = (118, 131)  # not multiples of 16: padded to 128x144, the smallest AMT-S handles (see MIN_PADDED_SIDE)


@pytest.fixture
def random_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path))
    init_random(["amt_s"], log=lambda _: None)
    return tmp_path


def _video(num_frames=5, seed=0):
    return translating_texture((1.5, 0.5), num_frames=num_frames, size=SIZE, sigma=3.0, seed=seed)


def test_random_file_has_upstream_layout_and_loads_strictly(random_cache):
    raw = torch.load(random_cache / "amt" / "amt-s.pth", map_location="cpu", weights_only=True)
    assert list(raw) == ["state_dict"]  # VBench loads ckpt['state_dict']
    sd = read_state_dict(resolve("amt_s"))
    assert len(sd) == 213 and sum(v.numel() for v in sd.values()) == 2_990_543  # AMT-S: "3.0M parameters"
    # Hand-checked against networks/AMT-S.py and networks/blocks/{feat_enc,ifrnet,multi_flow,raft}.py.
    expected = {
        "feat_encoder.conv1.weight": (32, 3, 7, 7),
        "feat_encoder.layer2.0.downsample.0.weight": (64, 32, 1, 1),
        "feat_encoder.layer3.1.conv2.weight": (24, 24, 3, 3),
        "feat_encoder.conv2.weight": (84, 96, 1, 1),
        "encoder.pyramid1.0.0.weight": (20, 3, 3, 3),
        "encoder.pyramid4.1.1.weight": (56,),  # PReLU
        "decoder4.convblock.0.0.weight": (112, 113, 3, 3),  # f0, f1 at 1/16 and the time map
        "decoder4.convblock.1.conv2.0.weight": (20, 20, 3, 3),
        "decoder4.convblock.2.weight": (112, 48, 4, 4),  # ConvTranspose2d: 44 features + 2 flows
        "decoder3.convblock.0.0.weight": (132, 136, 3, 3),
        "decoder1.convblock.1.prelu.weight": (60,),
        "decoder1.convblock.2.weight": (60, 24, 4, 4),  # 3 flows x (2 + 2 + mask 1 + residual 3)
        "update4.convc1.weight": (64, 392, 1, 1),  # 2 directions x 4 levels x 7x7 window
        "update4.gru.0.weight": (76, 116, 3, 3),
        "update3.feat_head.2.weight": (32, 76, 3, 3),
        "update2.flow_head.2.bias": (4,),
        "comb_block.0.weight": (18, 9, 3, 3),
        "comb_block.1.weight": (18,),
        "comb_block.2.weight": (3, 18, 3, 3),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert not any("norm" in k for k in sd)  # instance norm without affine parameters
    load_strict(amt.AMTS(), sd, "amt-s")


def test_renamed_key_or_wrong_shape_is_named(random_cache):
    sd = read_state_dict(resolve("amt_s"))
    renamed = dict(sd)
    renamed["update4.convc1.weightx"] = renamed.pop("update4.convc1.weight")
    with pytest.raises(WeightsError, match=r"update4\.convc1\.weight'.*update4\.convc1\.weightx"):
        load_strict(amt.AMTS(), renamed, "amt-s")
    reshaped = {**sd, "comb_block.0.weight": torch.zeros(18, 6, 3, 3)}
    with pytest.raises(WeightsError, match=r"comb_block\.0\.weight: file \(18, 6, 3, 3\) vs model \(18, 9, 3, 3\)"):
        load_strict(amt.AMTS(), reshaped, "amt-s")


def test_output_shape_range_and_padding(random_cache):
    interp = get_interpolation_backend("amt-s")
    assert isinstance(interp, amt.AMTInterpolator) and "amt-s" in list_interpolation_backends()
    assert interp.identity == "amt-s(scale=1)/random-weights"
    frames = _video(3)
    mid = interp(frames[0], frames[2])
    assert mid.shape == (*SIZE, 3) and mid.dtype == np.float32
    assert np.isfinite(mid).all() and mid.min() >= 0 and mid.max() <= 255
    with pytest.raises(ValueError, match="at least 128x128"):
        interp(frames[0, :48, :64], frames[2, :48, :64])  # upstream gives NaN (1 px at 1/64) or fails


def test_batched_equals_one_pair_at_a_time(random_cache, monkeypatch):
    interp = amt.AMTInterpolator(batch=3)
    frames = _video(5)
    a, c = frames[:-1], frames[1:]

    def both():
        batched = interp.interpolate_pairs(a, c)  # chunks of 3 and 1
        return batched, np.stack([interp(x, y) for x, y in zip(a, c, strict=True)])

    # oneDNN picks conv kernels by batch size (~1e-8 apart, amplified ~100x by the network); torch's own
    # kernels are batch-invariant, so there batching (padding, chunks, per-sample mean and time) must be exact.
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    batched, single = both()
    monkeypatch.undo()
    assert batched.shape == (4, *SIZE, 3)
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-4)
    batched, single = both()
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-2)


def test_motion_smoothness_with_amt(random_cache):
    metric = get_metric("motion_smoothness", interp="amt-s")
    assert "amt-s(scale=1)/random-weights" in metric.identity
    out = metric.update(VideoSample(video_id="v", frames=_video(5), fps=8.0))
    assert 0.0 <= out["value"] <= 1.0 and len(out["extras"]["frame_mae"]) == 2
    assert "random-weights" in out["extras"]["interp"]


def test_missing_weights_name_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match=r"amt/amt-s\.pth.*harness weights prefetch amt_s"):
        get_interpolation_backend("amt-s")
