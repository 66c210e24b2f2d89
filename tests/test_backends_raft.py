"""RAFT flow backend: upstream checkpoint layout, strict loading, padding, batching, correlation lookup."""

import importlib

import numpy as np
import pytest
import torch

import harness.scorers.backends.flow as flow_mod
from harness.scorers.backends.real.common import load_strict, read_state_dict
from harness.weights import ResolvedWeight, WeightsError, init_random
from metrics.synthetic import texture_video


@pytest.fixture(autouse=True)
def raft(monkeypatch):
    """The raft module, registered as a flow backend for this test only: the registry is a copy
    restored afterwards, so tests elsewhere that list the weights-free backends are not affected."""
    monkeypatch.setattr(flow_mod, "_FLOW_BACKENDS", dict(flow_mod._FLOW_BACKENDS))
    mod = importlib.import_module("harness.scorers.backends.real.raft")  # also registers its random initialiser
    flow_mod.register_flow_backend(mod.RAFTFlow)
    return mod


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path))
    (weight,) = init_random(["raft_things"], log=lambda _: None)
    return weight


def _frames(h, w, n=3, seed=0):
    return list(texture_video(np.arange(n)[:, None] * np.array([[1.5, -1.0]]), size=(h, w), sigma=2.0, seed=seed))


def test_state_dict_matches_upstream_names_and_shapes(raft):
    sd = raft.RAFT().state_dict()
    # Written by hand from princeton-vl/RAFT core/extractor.py and core/update.py.
    expected = {
        "fnet.conv1.weight": (64, 3, 7, 7), "fnet.conv2.weight": (256, 128, 1, 1),
        "cnet.conv2.weight": (256, 128, 1, 1), "cnet.norm1.running_mean": (64,),
        "cnet.layer2.0.downsample.0.weight": (96, 64, 1, 1), "cnet.layer3.0.norm3.running_var": (128,),
        "cnet.layer3.0.downsample.1.running_var": (128,), "fnet.layer3.1.conv2.weight": (128, 128, 3, 3),
        "update_block.encoder.convc1.weight": (256, 324, 1, 1), "update_block.encoder.conv.weight": (126, 256, 3, 3),
        "update_block.encoder.convf1.weight": (128, 2, 7, 7), "update_block.gru.convz1.weight": (128, 384, 1, 5),
        "update_block.gru.convq2.weight": (128, 384, 5, 1), "update_block.flow_head.conv2.weight": (2, 256, 3, 3),
        "update_block.mask.0.weight": (256, 128, 3, 3), "update_block.mask.2.weight": (576, 256, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # fnet uses InstanceNorm2d without affine or running stats: no tensors; cnet's BatchNorm has all five.
    assert not [k for k in sd if ".norm" in k and k.startswith("fnet.")]
    assert {k for k in sd if k.startswith("cnet.norm1.")} == {
        f"cnet.norm1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    # fnet 32 conv tensors, cnet 32 conv + 85 batch-norm (norm3 also saved as downsample.1), update block 30.
    assert len(sd) == 179


def test_random_weights_load_strictly_with_module_prefix(raft, cache):
    assert cache.is_random and cache.path.name == "raft-things.pth"
    raw = torch.load(cache.path, map_location="cpu", weights_only=True)
    assert raw and all(k.startswith("module.") for k in raw)  # as the DataParallel-saved upstream file
    model = raft.load_raft("raft_things")
    assert model is raft.load_raft("raft_things")  # loaded once per process
    assert torch.equal(model.state_dict()["update_block.mask.2.weight"], raw["module.update_block.mask.2.weight"])


@pytest.mark.parametrize("change,named", [
    ("rename", "update_block.flow_head.conv2.weight"),
    ("shape", "update_block.mask.2.weight: file (575, 256, 1, 1) vs model (576, 256, 1, 1)"),
])
def test_mismatched_checkpoint_fails_naming_the_key(raft, cache, tmp_path, change, named):
    sd = torch.load(cache.path, map_location="cpu", weights_only=True)
    if change == "rename":
        sd["module.update_block.flow_head.conv2.weights"] = sd.pop("module.update_block.flow_head.conv2.weight")
    else:
        sd["module.update_block.mask.2.weight"] = sd["module.update_block.mask.2.weight"][:575]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(WeightsError, match="does not match the architecture") as err:
        load_strict(raft.RAFT(), read_state_dict(ResolvedWeight("raft_things", bad, "-", "random-init")), "RAFT")
    assert named in str(err.value)
    if change == "rename":
        assert "update_block.flow_head.conv2.weights" in str(err.value)


def test_backend_output_for_sizes_not_divisible_by_8(raft, cache):
    backend = flow_mod.get_flow_backend("raft")
    frames = _frames(66, 90, n=2)
    flow = backend(frames[0], frames[1])
    assert flow.shape == (66, 90, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    padder = raft.InputPadder(66, 90)
    assert padder.shape == (72, 96) and padder.pad_ == (3, 3, 3, 3)
    assert raft.InputPadder(50, 70).pad_ == (1, 1, 3, 3)  # upstream: left, right, top, bottom; odd extra at the end
    x = torch.arange(66 * 90, dtype=torch.float32).view(1, 1, 66, 90)
    padded = padder.pad(x)
    assert torch.equal(padder.unpad(padded), x) and torch.equal(padded[..., 0, 0], x[..., 0, 0])  # replicate
    with pytest.raises(ValueError, match="at least 57 px"):  # 50 pads to 56: a pyramid level would be empty
        backend(*_frames(50, 70, n=2))


def test_batched_flows_equal_per_pair_calls(cache):
    frames = _frames(64, 72, n=3, seed=1)
    pairs = [(0, 1), (1, 2), (2, 0)]
    batched = flow_mod.get_flow_backend("raft", batch=2).flows(frames, pairs)
    single = flow_mod.get_flow_backend("raft", batch=1)
    for (i, j), got in zip(pairs, batched, strict=True):
        np.testing.assert_allclose(got, single(frames[i], frames[j]), atol=1e-4, rtol=1e-4)


def test_identity_options_and_random_marker(raft, cache):
    assert flow_mod.get_flow_backend("raft").identity == "raft/random-weights"
    assert raft.RAFTFlow(batch=3).identity == "raft/random-weights"  # batching is not part of the identity
    assert raft.RAFTFlow(iters=12).identity == "raft(iters=12)/random-weights"
    for bad in ({"upscale": 2}, {"upscale": "auto"}, {"iters": 0}, {"batch": True}):
        with pytest.raises(ValueError):
            raft.RAFTFlow(**bad)
    with pytest.raises(WeightsError, match="no weight file named"):
        raft.RAFTFlow(weights="raft_nope")


def test_correlation_lookup_follows_a_shift(raft):
    torch.manual_seed(0)
    fmap1 = torch.randn(1, 64, 12, 14)
    dx, dy = 2, -1  # content moves right 2, up 1 from map 1 to map 2
    fmap2 = torch.roll(fmap1, shifts=(dy, dx), dims=(2, 3))
    coords0 = raft.coords_grid(1, 12, 14, fmap1.device)
    r, win = 4, 81
    level0 = raft.CorrBlock(fmap1, fmap1)(coords0)[:, :win]
    assert (level0[0, :, 4:-4, 4:-4].argmax(0) == win // 2).all()  # a map with itself peaks at zero offset
    idx = raft.CorrBlock(fmap1, fmap2)(coords0)[0, :win, 4:-4, 4:-4].argmax(0)
    # Channel i * 9 + j holds x offset i - r and y offset j - r (upstream's x-major window).
    assert ((idx // 9 - r == dx) & (idx % 9 - r == dy)).all()
    shifted = coords0 + torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1)
    assert (raft.CorrBlock(fmap1, fmap2)(shifted)[0, :win, 4:-4, 4:-4].argmax(0) == win // 2).all()
    # Exact values at integer offsets: dot products scaled by 1/sqrt(dim).
    x, y = 5, 6
    window = raft.CorrBlock(fmap1, fmap2)(coords0)[0, :win, y, x].view(9, 9)
    manual = torch.stack([torch.stack([fmap1[0, :, y, x] @ fmap2[0, :, y + j - r, x + i - r] for j in range(9)])
                          for i in range(9)]) / 8.0
    torch.testing.assert_close(window, manual, rtol=1e-5, atol=1e-5)


def test_missing_weights_name_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path))
    backend = flow_mod.get_flow_backend("raft")  # constructing needs no file
    assert "raft" in repr(backend)
    frames = _frames(64, 64, n=2)
    with pytest.raises(WeightsError) as err:
        backend(frames[0], frames[1])
    assert "raft/raft-things.pth" in str(err.value) and "harness weights prefetch raft_things" in str(err.value)
    with pytest.raises(WeightsError):
        _ = backend.identity  # no identity can be claimed without knowing whether the file is random-init
