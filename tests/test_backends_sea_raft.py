"""SEA-RAFT flow backend: upstream checkpoint layout, strict loading, resizing, padding, batching, small frames."""

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import harness.scorers.backends.flow as flow_mod
from harness.weights import ResolvedWeight, WeightsError, init_random
from metrics.synthetic import texture_video


@pytest.fixture(autouse=True)
def sea_raft(monkeypatch):
    """The sea_raft module, registered as a flow backend for this test only: the registry is a copy
    restored afterwards, so tests elsewhere that list the registered backends are not affected."""
    monkeypatch.setattr(flow_mod, "_FLOW_BACKENDS", dict(flow_mod._FLOW_BACKENDS))
    mod = importlib.import_module("harness.scorers.backends.real.sea_raft")  # also registers its random initialiser
    flow_mod.register_flow_backend(mod.SEARAFTFlow)
    return mod


@pytest.fixture(scope="module")
def random_cache(tmp_path_factory):
    """One random-init cache for the module (writing and hashing the 80 MB file takes a second)."""
    importlib.import_module("harness.scorers.backends.real.sea_raft")  # registers the random initialiser
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_WEIGHTS", str(root))
        (weight,) = init_random(["sea_raft"], log=lambda _: None)
    return weight


@pytest.fixture
def cache(random_cache, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(random_cache.path.parents[2]))
    return random_cache


def _frames(h, w, n=3, seed=0):
    return list(texture_video(np.arange(n)[:, None] * np.array([[1.5, -1.0]]), size=(h, w), sigma=2.0, seed=seed))


def test_state_dict_matches_upstream_names_and_shapes(sea_raft):
    sd = sea_raft.SEARAFT().state_dict()
    # Written by hand from princeton-vl/SEA-RAFT core/raft.py, core/extractor.py, core/layer.py and
    # core/update.py with config/eval/spring-M.json (dim 128, resnet34 stages, block_dims 64/128/256).
    expected = {
        "cnet.conv1.weight": (64, 6, 7, 7),
        "cnet.conv1.bias": (64,),
        "fnet.conv1.weight": (64, 3, 7, 7),
        "cnet.bn1.running_var": (64,),
        "fnet.layer1.2.conv2.weight": (64, 64, 3, 3),
        "fnet.layer2.0.conv1.weight": (128, 64, 3, 3),
        "fnet.layer2.3.bn2.weight": (128,),
        "cnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cnet.layer2.0.bn3.running_mean": (128,),
        "cnet.layer2.0.downsample.1.running_mean": (128,),
        "fnet.layer3.5.conv2.bias": (256,),
        "fnet.layer3.0.downsample.0.weight": (256, 128, 1, 1),
        "cnet.final_conv.weight": (256, 256, 1, 1),
        "fnet.final_conv.weight": (256, 256, 1, 1),
        "init_conv.weight": (256, 256, 3, 3),
        "upsample_weight.0.weight": (256, 128, 3, 3),
        "upsample_weight.2.weight": (576, 256, 1, 1),
        "flow_head.0.weight": (256, 128, 3, 3),
        "flow_head.2.weight": (6, 256, 3, 3),
        "flow_head.2.bias": (6,),
        "update_block.encoder.convc1.weight": (256, 324, 1, 1),
        "update_block.encoder.convc2.weight": (192, 256, 3, 3),
        "update_block.encoder.convf1.weight": (128, 2, 7, 7),
        "update_block.encoder.conv.weight": (126, 256, 3, 3),
        "update_block.refine.0.dwconv.weight": (384, 1, 7, 7),
        "update_block.refine.0.norm.weight": (384,),
        "update_block.refine.1.pwconv1.weight": (512, 384),
        "update_block.refine.1.pwconv2.weight": (384, 512),
        "update_block.refine.1.gamma": (384,),
        "update_block.refine.1.final.weight": (128, 384, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert not [k for k in sd if "layer4" in k or "refine.2" in k or "layer1.3" in k or "layer2.4" in k]
    assert "fnet.layer1.0.downsample.0.weight" not in sd  # 64 -> 64 at stride 1: no shortcut conv
    # Per encoder: stem 2 + 5 BN, 13 blocks x (4 conv + 10 BN), 2 shortcuts x (2 conv + bn3 5 + its alias
    # downsample.1 5), head 2. Then heads 10, motion encoder 10, two ConvNeXt blocks 2 x 11.
    assert len(sd) == 2 * (7 + 13 * 14 + 2 * 12 + 2) + 10 + 10 + 22 == 472
    params = sum(v.numel() for k, v in sd.items() if ".downsample.1." not in k and "num_batches" not in k)
    assert params == 19_683_588  # the paper's SEA-RAFT(M): 19.7M


def test_random_weights_are_upstreams_safetensors_layout_and_load_strictly(sea_raft, cache):
    assert cache.is_random and cache.path.name == "model.safetensors"
    raw = load_file(str(cache.path))
    # PyTorchModelHubMixin (safetensors save_model) keeps one name per shared tensor: bn3, not downsample.1.
    assert "fnet.layer3.0.bn3.weight" in raw and not [k for k in raw if ".downsample.1." in k]
    assert len(raw) == 452
    model = sea_raft.load_sea_raft("sea_raft")
    assert model is sea_raft.load_sea_raft("sea_raft")  # loaded once per process
    sd = model.state_dict()
    assert torch.equal(sd["update_block.refine.1.gamma"], raw["update_block.refine.1.gamma"])
    assert torch.equal(sd["cnet.layer2.0.downsample.1.running_var"], raw["cnet.layer2.0.bn3.running_var"])


def test_a_file_with_both_aliases_or_only_downsample_loads(sea_raft, cache, tmp_path):
    full = sea_raft.load_sea_raft().state_dict()  # as torch.save writes it (the Google Drive .pth)
    both = tmp_path / "both.pth"
    torch.save(full, both)
    sea_raft.load_checkpoint(ResolvedWeight("sea_raft", both, "-", "random-init"))
    only_ds = tmp_path / "ds.safetensors"
    save_file({k: v.contiguous() for k, v in full.items() if ".bn3." not in k}, str(only_ds))
    model = sea_raft.load_checkpoint(ResolvedWeight("sea_raft", only_ds, "-", "random-init"))
    assert torch.equal(model.state_dict()["fnet.layer2.0.bn3.bias"], full["fnet.layer2.0.downsample.1.bias"])


@pytest.mark.parametrize(
    "change,named",
    [
        ("rename", "update_block.refine.0.gamma"),
        ("shape", "flow_head.2.weight: file (4, 256, 3, 3) vs model (6, 256, 3, 3)"),
        ("missing", "cnet.layer3.5.bn2.running_mean"),
        ("aliases differ", "cnet.layer2.0.bn3.weight and cnet.layer2.0.downsample.1.weight"),
    ],
)
def test_mismatched_checkpoint_fails_naming_the_key(sea_raft, cache, tmp_path, change, named):
    sd = load_file(str(cache.path))
    if change == "rename":
        sd["update_block.refine.0.gammas"] = sd.pop("update_block.refine.0.gamma")
    elif change == "shape":
        sd["flow_head.2.weight"] = sd["flow_head.2.weight"][:4].contiguous()
    elif change == "missing":
        del sd["cnet.layer3.5.bn2.running_mean"]
    else:
        sd["cnet.layer2.0.downsample.1.weight"] = sd["cnet.layer2.0.bn3.weight"] + 1
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(WeightsError) as err:
        sea_raft.load_checkpoint(ResolvedWeight("sea_raft", bad, "-", "random-init"))
    assert named in str(err.value) and str(bad) in str(err.value)
    if change == "rename":
        assert "update_block.refine.0.gammas" in str(err.value)


def test_default_output_shape_and_upstream_resizing(sea_raft, cache):
    backend = flow_mod.get_flow_backend("sea-raft")
    assert backend.options["iters"] == 4 and backend.options["scale"] == -1  # upstream's spring-M eval config
    frames = _frames(242, 251, n=2)  # halved to 121x125, padded to 128x128: every pyramid level >= 2 px
    flow = backend(frames[0], frames[1])
    assert flow.shape == (242, 251, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    # Back from the half-resolution flow: upstream's x2 bilinear resize (times 2); an odd side's last
    # column (upstream returns one short) replicates its neighbour.
    low = torch.randn(1, 2, 121, 125)
    up = sea_raft.restore_flow(low, -1, 242, 251)
    torch.testing.assert_close(
        up[..., :250], 2 * F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
    )
    assert up.shape == (1, 2, 242, 251) and torch.equal(up[..., 250], up[..., 249])
    assert torch.equal(sea_raft.restore_flow(low, 0, 121, 125), low)


def test_batched_flows_equal_per_pair_calls(cache):
    frames = _frames(120, 136, n=3, seed=1)
    pairs = [(0, 1), (1, 2), (2, 0)]
    batched = flow_mod.get_flow_backend("sea-raft", batch=2, iters=2).flows(frames, pairs)
    single = flow_mod.get_flow_backend("sea-raft", batch=1, iters=2)
    for (i, j), got in zip(pairs, batched, strict=True):
        ref = single(frames[i], frames[j])
        # Random weights give flows of hundreds of px: float rounding is judged relative to their size.
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=5e-5 * np.abs(ref).max())


def test_small_frames_refused_and_one_pixel_level_finite(sea_raft, cache):
    backend = flow_mod.get_flow_backend("sea-raft", iters=1)
    assert sea_raft.min_frame_side(-1) == 114 and sea_raft.min_frame_side(0) == 57
    with pytest.raises(ValueError, match="at least 114 px"):  # 113 -> 56 -> padded 56: a level would be empty
        backend(*_frames(113, 200, n=2))
    # 115 -> 57 -> padded 64: the coarsest level is one pixel (upstream fails there; we sample it).
    frames = _frames(115, 131, n=2)
    flow = backend(frames[0], frames[1])
    assert flow.shape == (115, 131, 2) and np.isfinite(flow).all()
    gray = backend(frames[0][..., 0], frames[1][..., 0])  # gray frames are repeated to 3 channels
    assert gray.shape == (115, 131, 2)
    # scale 0 runs at full resolution: 57 px pads to 64.
    assert flow_mod.get_flow_backend("sea-raft", iters=1, scale=0)(*_frames(57, 60, n=2)).shape == (57, 60, 2)


def test_sampler_is_bilinear_with_zeros_outside_also_on_one_pixel_maps(sea_raft):
    torch.manual_seed(0)
    for h, w in ((5, 7), (1, 6), (4, 1), (1, 1)):
        img = torch.randn(3, 2, h, w)
        xy = torch.rand(3, 4, 5, 2) * torch.tensor([w + 2.0, h + 2.0]) - 1.5
        # The same rule with align_corners=False: pixel x is at (2x + 1) / side - 1, defined for side 1 too.
        grid = torch.stack([(2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1], -1)
        ref = F.grid_sample(img, grid, align_corners=False)
        torch.testing.assert_close(sea_raft._sample(img, xy), ref, rtol=1e-5, atol=1e-5)


def test_correlation_pyramid_follows_a_shift(sea_raft):
    torch.manual_seed(0)
    fmap1 = torch.randn(1, 64, 16, 16)
    dx, dy = 2, -1
    fmap2 = torch.roll(fmap1, shifts=(dy, dx), dims=(2, 3))
    coords0 = sea_raft.coords_grid(1, 16, 16, fmap1.device)
    corr_fn = sea_raft.CorrBlock(fmap1, fmap2)
    assert [c.shape[-1] for c in corr_fn.pyramid] == [16, 8, 4, 2]  # fmap2 halved per level
    idx = corr_fn(coords0)[0, :81, 4:-4, 4:-4].argmax(0)
    assert ((idx // 9 - 4 == dx) & (idx % 9 - 4 == dy)).all()  # channel i * 9 + j: x offset i - 4, y offset j - 4
    x, y = 5, 6  # exact values at integer offsets: dot products scaled by 1/sqrt(dim)
    window = corr_fn(coords0)[0, :81, y, x].view(9, 9)
    manual = (
        torch.stack(
            [torch.stack([fmap1[0, :, y, x] @ fmap2[0, :, y + j - 4, x + i - 4] for j in range(9)]) for i in range(9)]
        )
        / 8.0
    )
    torch.testing.assert_close(window, manual, rtol=1e-5, atol=1e-5)


def test_identity_options_and_random_marker(sea_raft, cache):
    assert flow_mod.get_flow_backend("sea-raft").identity == "sea-raft/random-weights"
    assert sea_raft.SEARAFTFlow(batch=3).identity == "sea-raft/random-weights"
    assert sea_raft.SEARAFTFlow(iters=12, scale=0).identity == "sea-raft(iters=12,scale=0)/random-weights"
    for bad in ({"upscale": 2}, {"iters": 0}, {"batch": True}, {"scale": -1.0}, {"scale": 2}, {"scale": True}):
        with pytest.raises(ValueError):
            sea_raft.SEARAFTFlow(**bad)
    with pytest.raises(WeightsError, match="no weight file named"):
        sea_raft.SEARAFTFlow(weights="sea_raft_nope")


def test_missing_weights_name_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path))
    backend = flow_mod.get_flow_backend("sea-raft")  # constructing needs no file
    assert "sea-raft" in repr(backend)
    frames = _frames(120, 128, n=2)
    with pytest.raises(WeightsError) as err:
        backend(frames[0], frames[1])
    msg = str(err.value)
    assert "sea_raft/Tartan-C-T-TSKH-spring540x960-M/model.safetensors" in msg
    assert "harness weights prefetch sea_raft" in msg
    with pytest.raises(WeightsError):
        _ = backend.identity  # no identity can be claimed without knowing whether the file is random-init
