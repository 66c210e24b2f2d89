"""CoTracker trackers: upstream checkpoint layouts, strict loading, predictor logic, refusals.

The models run at a small ``interp_shape`` (32x48) with few iterations so the file stays fast on
one CPU thread; real-size key shapes are checked on the ``meta`` device.
"""

import importlib
import math

import numpy as np
import pytest
import torch

import harness.scorers.backends.tracking as tracking_mod
from harness.scorers.backends.real.common import load_strict, read_state_dict
from harness.weights import ResolvedWeight, WeightsError, init_random
from metrics.synthetic import texture_video

SMALL = {"interp_shape": (32, 48)}


def _import_without_registering():
    """The module, imported (once) while the tracker registry is a throwaway copy."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking_mod, "_TRACKERS", dict(tracking_mod._TRACKERS))
        return importlib.import_module("harness.scorers.backends.real.cotracker")


@pytest.fixture(autouse=True)
def cot(monkeypatch):
    """The cotracker module, its trackers registered for this test only: the registry is a copy
    restored afterwards, so tests elsewhere that list the weights-free trackers are not affected."""
    mod = _import_without_registering()
    monkeypatch.setattr(tracking_mod, "_TRACKERS", dict(tracking_mod._TRACKERS))
    tracking_mod.register_tracker(mod.CoTracker3Tracker)
    tracking_mod.register_tracker(mod.CoTracker2Tracker)
    return mod


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Random-init files for both models, written once for the module (cotracker2.pth is ~200 MB)."""
    _import_without_registering()  # registers the random initialisers
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_WEIGHTS", str(root))
        init_random(["cotracker3", "cotracker2"], log=lambda _: None)
    yield root
    importlib.import_module("harness.scorers.backends.real.cotracker")._load.cache_clear()  # free the ~300 MB of models


@pytest.fixture
def cache(weights_dir, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(weights_dir))
    return weights_dir


def _frames(h=30, w=40, n=4, seed=0):
    return list(texture_video(np.arange(n)[:, None] * np.array([[1.0, 0.5]]), size=(h, w), sigma=2.0, seed=seed))


QUERIES = np.array([[5.0, 6.0], [20.5, 14.0], [36.0, 25.0]], np.float32)


# -- layouts -----------------------------------------------------------------------------------------
def test_cotracker3_state_dict_matches_upstream_names_and_shapes(cot):
    with torch.device("meta"):
        sd = cot.CoTrackerThreeOffline().state_dict()
    # Written by hand from co-tracker cotracker3_online.py (CoTrackerThreeBase), blocks.py and
    # cotracker.py (EfficientUpdateFormer with linear_layer_for_vis_conf=True, depth 3).
    expected = {
        "time_emb": (1, 60, 1110),
        "fnet.conv1.weight": (64, 3, 7, 7),
        "fnet.layer2.0.downsample.0.weight": (96, 64, 1, 1),
        "fnet.layer4.1.conv2.weight": (128, 128, 3, 3),
        "fnet.conv2.weight": (256, 416, 3, 3),
        "fnet.conv3.weight": (128, 256, 1, 1),
        "updateformer.virual_tracks": (1, 64, 1, 384),
        "updateformer.input_transform.weight": (384, 1110),
        "updateformer.flow_head.weight": (2, 384),
        "updateformer.vis_conf_head.weight": (2, 384),
        "updateformer.time_blocks.2.attn.to_kv.weight": (768, 384),
        "updateformer.space_virtual_blocks.1.mlp.fc1.weight": (1536, 384),
        "updateformer.space_point2virtual_blocks.0.cross_attn.to_q.bias": (384,),
        "updateformer.space_virtual2point_blocks.2.norm_context.weight": (384,),
        "corr_mlp.fc1.weight": (384, 2401),
        "corr_mlp.fc2.weight": (256, 384),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # Instance norms and the attention blocks' LayerNorms have no tensors; no position embedding in v3.
    assert not [k for k in sd if k.startswith("fnet.") and ".norm" in k]
    assert not [k for k in sd if ".norm1." in k or ".norm2." in k] and "pos_emb" not in sd
    assert "updateformer.time_blocks.3.attn.to_q.weight" not in sd
    assert len(sd) == 188 and sum(v.numel() for v in sd.values()) == 25_452_300


def test_cotracker2_state_dict_matches_upstream_names_and_shapes(cot):
    with torch.device("meta"):
        sd = cot.CoTracker2().state_dict()
    # Written by hand from co-tracker v2.0 (fac2798) cotracker.py CoTracker2(stride=4, window_len=8).
    expected = {
        "time_emb": (1, 8, 456),
        "pos_emb": (1, 456, 96, 128),
        "fnet.layer3.0.downsample.0.weight": (128, 96, 1, 1),
        "fnet.conv2.weight": (256, 416, 3, 3),
        "updateformer.virual_tracks": (1, 64, 1, 384),
        "updateformer.input_transform.weight": (384, 456),
        "updateformer.flow_head.weight": (130, 384),
        "updateformer.time_blocks.5.mlp.fc2.weight": (384, 1536),
        "updateformer.space_virtual2point_blocks.5.cross_attn.to_out.weight": (384, 384),
        "updateformer.space_point2virtual_blocks.3.norm_context.bias": (384,),
        "norm.weight": (128,),
        "track_feat_updater.0.weight": (128, 128),
        "vis_predictor.0.weight": (1, 128),
        "vis_predictor.0.bias": (1,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert "updateformer.vis_conf_head.weight" not in sd and "corr_mlp.fc1.weight" not in sd
    assert len(sd) == 321 and sum(v.numel() for v in sd.values()) == 51_065_763


def test_fixed_embeddings_follow_the_upstream_formulas(cot):
    v2 = cot.CoTracker2()
    t, p = v2.time_emb[0], v2.pos_emb[0]  # (8, 456), (456, 96, 128)
    assert torch.equal(t[0], torch.cat([torch.zeros(228), torch.ones(228)]))  # sin(0), cos(0)
    assert t[3, 1].item() == pytest.approx(math.sin(3 * 10000 ** (-1 / 228)), abs=1e-6)
    # 2-D: channels 0..227 encode x (the column), 228..455 y; each half is [sin (114), cos (114)].
    assert torch.equal(p[:228, 0, 5], p[:228, 40, 5]) and torch.equal(p[228:, 7, 0], p[228:, 7, 90])
    assert p[1, 0, 5].item() == pytest.approx(math.sin(5 * 10000 ** (-1 / 114)), abs=1e-6)
    assert p[228 + 114 + 2, 7, 0].item() == pytest.approx(math.cos(7 * 10000 ** (-2 / 114)), abs=1e-6)
    # CoTracker2's displacement embedding (linear frequencies 2k * 1000 / C, sin/cos interleaved).
    emb = cot.flow_embedding(torch.tensor([[0.5, 2.0]]), 4)[0]
    want = [0.5, 2.0, 0.0, 1.0, math.sin(250), math.cos(250), 0.0, 1.0, math.sin(1000), math.cos(1000)]
    torch.testing.assert_close(emb, torch.tensor(want), rtol=0, atol=1e-4)
    # CoTracker3's motion encoding: [x, sin(x 2^k) (scale-major), sin(x 2^k + pi/2)].
    enc = cot.posenc(torch.tensor([[0.1, 0.3]]), 0, 2)[0]
    xb = [0.1, 0.3, 0.2, 0.6]
    want = [0.1, 0.3, *(math.sin(v) for v in xb), *(math.cos(v) for v in xb)]
    torch.testing.assert_close(enc, torch.tensor(want), rtol=0, atol=1e-6)


def test_window_sampling_is_x_major_with_border_padding(cot):
    h, w = 12, 10
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    img = (xs + 100 * ys)[None, None]
    got = cot.sample_xy(img, torch.tensor([5.0, 6.0]) + cot.window_offsets(1)[None])[0, 0]
    # Entry [i, j] is x offset i - 1, y offset j - 1 (upstream's meshgrid(dy, dx) added to (x, y)).
    want = torch.tensor([[(5 + i) + 100 * (6 + j) for j in (-1, 0, 1)] for i in (-1, 0, 1)]).float()
    torch.testing.assert_close(got, want)
    outside = cot.sample_xy(img, torch.tensor([[[[-3.0, 20.0], [2.5, 0.0]]]]))[0, 0, 0]
    torch.testing.assert_close(outside, torch.tensor([0.0 + 100 * 11, 2.5]))  # border, bilinear


def test_grid_points_and_sliding_windows(cot):
    g = cot.grid_points(3, (32, 48))  # margin 48 / 64 = 0.75 on every side, row-major (x, y)
    want = [[x, y] for y in (0.75, 16.0, 31.25) for x in (0.75, 24.0, 47.25)]
    torch.testing.assert_close(g, torch.tensor(want))
    assert cot.grid_points(1, (32, 48)).tolist() == [[24.0, 16.0]]
    v2 = cot.CoTracker2.__new__(cot.CoTracker2)
    v2.window_len = 8
    starts = {t: v2.window_starts(t) for t in (4, 5, 8, 9, 12, 13, 17)}
    assert starts == {4: [], 5: [0], 8: [0], 9: [0, 4], 12: [0, 4], 13: [0, 4, 8], 17: [0, 4, 8, 12]}


# -- weights -----------------------------------------------------------------------------------------
def test_random_weights_load_strictly(cot, cache):
    for name, file in (("cotracker3", "scaled_offline.pth"), ("cotracker2", "cotracker2.pth")):
        raw = torch.load(cache / "cotracker" / file, map_location="cpu", weights_only=True)
        assert raw and not [k for k in raw if k.startswith("module.")]  # a plain state dict, as upstream's
        model = cot.load_cotracker(name)
        assert model is cot.load_cotracker(name)  # loaded once per process
        key = "updateformer.flow_head.weight"
        assert torch.equal(model.state_dict()[key], raw[key]) and not model.training


@pytest.mark.parametrize(
    "kind,change,named",
    [
        ("cotracker3", "rename", "corr_mlp.fc1.weight"),
        ("cotracker2", "shape", "time_emb: file (1, 16, 456) vs model (1, 8, 456)"),  # a window-16 (v2.1) file
    ],
)
def test_mismatched_checkpoint_fails_naming_the_key(cot, cache, tmp_path, kind, change, named):
    file = {"cotracker3": "scaled_offline.pth", "cotracker2": "cotracker2.pth"}[kind]
    sd = torch.load(cache / "cotracker" / file, map_location="cpu", weights_only=True)
    if change == "rename":
        sd["corr_mlp.fc1.weights"] = sd.pop("corr_mlp.fc1.weight")
    else:
        sd["time_emb"] = torch.zeros(1, 16, 456)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with torch.device("meta"):
        model = cot.MODELS[kind]()
    with pytest.raises(WeightsError, match="does not match the architecture") as err:
        load_strict(model, read_state_dict(ResolvedWeight(kind, bad, "-", "random-init")), kind)
    assert named in str(err.value)
    if change == "rename":
        assert "corr_mlp.fc1.weights" in str(err.value)


def test_missing_weights_name_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path))
    for name, path in (("cotracker3", "cotracker/scaled_offline.pth"), ("cotracker2", "cotracker/cotracker2.pth")):
        tracker = tracking_mod.get_tracker(name, **SMALL)  # constructing needs no file
        assert name in repr(tracker)
        with pytest.raises(WeightsError) as err:
            tracker.track(_frames(n=5), QUERIES)
        assert path in str(err.value) and f"harness weights prefetch {name}" in str(err.value)
        with pytest.raises(WeightsError):
            _ = tracker.identity  # no identity without knowing whether the file is random-init


# -- inference ---------------------------------------------------------------------------------------
def _check(tracks, t_len, m, queries, atol=0.0):
    assert tracks.xy.shape == (t_len, m, 2) and tracks.visible.shape == tracks.confidence.shape == (t_len, m)
    assert all(a.dtype == np.float32 for a in (tracks.xy, tracks.visible, tracks.confidence))
    assert np.isfinite(tracks.xy).all() and np.isfinite(tracks.confidence).all()
    assert set(np.unique(tracks.visible)) <= {0.0, 1.0} and tracks.visible[0].all()
    assert ((tracks.confidence >= 0) & (tracks.confidence <= 1)).all()
    np.testing.assert_allclose(tracks.xy[0], queries, rtol=0, atol=atol)  # the query frame holds the query


def test_cotracker3_tracks_and_support_grid(cot, cache):
    tracker = tracking_mod.get_tracker("cotracker3", **SMALL)
    frames = _frames(n=4)
    tracks = tracker.track(frames, QUERIES)
    _check(tracks, 4, 3, QUERIES)
    assert (tracks.confidence[0] == 1).all()
    assert np.abs(tracks.xy[1:] - QUERIES).max() > 0  # the model moved the points
    # The 6x6 support grid is tracked jointly (space attention): without it the tracks differ.
    alone = cot.CoTracker3Tracker(support_grid=0, **SMALL).track(frames, QUERIES)
    _check(alone, 4, 3, QUERIES)
    assert np.abs(alone.xy - tracks.xy).max() > 1e-6


def test_cotracker2_tracks_over_sliding_windows(cot, cache):
    frames = _frames(n=9)  # windows start at frames 0 and 4
    tracks = cot.CoTracker2Tracker(iters=2, **SMALL).track(frames, QUERIES)
    _check(tracks, 9, 3, QUERIES)
    np.testing.assert_array_equal(tracks.confidence, tracks.visible)  # no confidence output in v2


def test_grid_queries_as_vbench_camera_motion(cot, cache):
    h, w = 30, 40
    tracks = cot.CoTracker2Tracker(iters=1, **SMALL).track_grid(_frames(h, w, n=5), 3)
    grid = cot.grid_points(3, (32, 48)).numpy() * np.array([(w - 1) / 47, (h - 1) / 31], np.float32)
    _check(tracks, 5, 9, grid, atol=1e-5)
    with pytest.raises(ValueError, match="grid_size"):
        cot.CoTracker2Tracker(**SMALL).track_grid(_frames(n=5), 0)


def test_short_small_or_malformed_inputs_are_refused(cot):
    # All refused before any weight file is needed.
    v2, v3 = cot.CoTracker2Tracker(**SMALL), cot.CoTracker3Tracker(**SMALL)
    with pytest.raises(ValueError, match="4 frames, at least 5"):  # upstream: no window, all-zero tracks
        v2.track(_frames(n=4), QUERIES)
    with pytest.raises(ValueError, match="1 frames, at least 2"):
        v3.track(_frames(n=1), QUERIES)
    thin = [np.zeros((1, 40, 3), np.uint8)] * 5
    with pytest.raises(ValueError, match="too small"):
        v3.track(thin, np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="one size"):
        v3.track(_frames(n=2) + _frames(h=32, n=1), QUERIES)
    for bad in (np.zeros((0, 2)), np.zeros((3, 3)), np.array([[1.0, np.nan]])):
        with pytest.raises(ValueError, match="queries"):
            v3.track(_frames(n=3), bad)
    with pytest.raises(ValueError, match="uint8"):
        v3.track([f.astype(np.float32) for f in _frames(n=3)], QUERIES)


def test_identity_and_options(cot, cache):
    assert {"cotracker2", "cotracker3", "flow_chain"} <= set(tracking_mod.list_trackers())
    assert tracking_mod.get_tracker("cotracker3").identity == "cotracker3/random-weights"
    assert cot.CoTracker2Tracker(interp_shape=[32, 48]).identity == "cotracker2(interp_shape=32x48)/random-weights"
    assert cot.CoTracker3Tracker(iters=4, support_grid=0).identity == (
        "cotracker3(iters=4,support_grid=0)/random-weights"
    )
    bad_options = (
        {"interp_shape": (30, 48)},
        {"interp_shape": (28, 48)},
        {"interp_shape": 384},
        {"iters": 0},
        {"iters": True},
        {"support_grid": -1},
        {"visibility_threshold": 1.5},
        {"window": 8},
    )
    for bad in bad_options:
        with pytest.raises(ValueError):
            cot.CoTracker3Tracker(**bad)
    with pytest.raises(WeightsError, match="no weight file named"):
        cot.CoTracker2Tracker(weights="cotracker_nope")
