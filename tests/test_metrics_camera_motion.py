"""camera_motion: VBench-I2V's label rule on hand-built tracks, the label sources, the aggregate,
and an end-to-end check with the weights-free flow_chain tracker on tiny-world pans."""

import dataclasses

import cv2
import numpy as np
import pytest

from harness.data.world import WorldCondition, WorldConfig, render, sample_spec
from harness.scorers.backends.tracking import Tracker, Tracks
from metrics import VideoSample, get_metric
from metrics.camera_motion import (
    CAMERA_LABELS,
    camera_target,
    cotracker_grid,
    edge_points,
    predict_camera_motion,
)

cv2.setNumThreads(1)

SIZE = 64  # threshold = 0.005 * 64 = 0.32 px
EDGE_CELL = {"top": 5, "down": 95, "left": 50, "right": 59}  # row * 10 + column of VBench's edge points


class EdgeTracker(Tracker):
    """Moves each edge midpoint by a given (dx, dy) between the first and the last frame (linearly;
    unlisted edges stay put) and every other grid point by ``rest``."""

    name = "edge-fake"

    def __init__(self, moves: dict[str, tuple[float, float]], rest: tuple[float, float] = (0.0, 0.0)):
        self.moves, self.rest = moves, rest
        self.calls: list[np.ndarray] = []

    @property
    def identity(self) -> str:
        return "edge-fake"

    def track(self, frames, queries, fields=None) -> Tracks:
        self.calls.append(np.asarray(queries))
        t = len(frames)
        shift = np.tile(np.asarray(self.rest, np.float32), (len(queries), 1))
        for edge, cell in EDGE_CELL.items():
            shift[cell] = self.moves.get(edge, (0.0, 0.0))
        ramp = np.linspace(0.0, 1.0, t, dtype=np.float32)[:, None, None]
        xy = (queries[None] + ramp * shift[None]).astype(np.float32)
        ones = np.ones((t, len(queries)), np.float32)
        return Tracks(xy, ones, ones)


class FunctionTracker(Tracker):
    """Last-frame positions = f(first-frame positions)."""

    name = "fn-fake"

    def __init__(self, fn):
        self.fn = fn

    @property
    def identity(self) -> str:
        return "fn-fake"

    def track(self, frames, queries, fields=None) -> Tracks:
        xy = np.stack([queries] * (len(frames) - 1) + [self.fn(queries)]).astype(np.float32)
        ones = np.ones(xy.shape[:2], np.float32)
        return Tracks(xy, ones, ones)


def _video(video_id="v", caption="", condition=None, t=4, size=SIZE):
    return VideoSample(
        video_id=video_id, frames=np.zeros((t, size, size, 3), np.uint8), fps=8.0, caption=caption, condition=condition
    )


def _uniform(dx, dy):
    return {e: (dx, dy) for e in EDGE_CELL}


# -- the grid and the edge points -----------------------------------------------------------------


def test_grid_is_cotrackers_grid():
    # At CoTracker's own resolution (384x512) the grid is get_points_on_a_grid(10, (384, 512)):
    # margin 512/64 = 8, x = 8 + j*496/9, y = 8 + i*368/9, row-major (x varies fastest).
    g = cotracker_grid(384, 512)
    assert g.shape == (100, 2)
    np.testing.assert_allclose(g[0], [8, 8])
    np.testing.assert_allclose(g[1], [8 + 496 / 9, 8], rtol=1e-6)
    np.testing.assert_allclose(g[10], [8, 8 + 368 / 9], rtol=1e-6)
    np.testing.assert_allclose(g[99], [504, 376])
    # Other sizes: scaled by (W-1)/511, (H-1)/383 (corner-aligned), e.g. 16x16: x0 = 8*15/511.
    np.testing.assert_allclose(cotracker_grid(16, 16)[0], [8 * 15 / 511, 8 * 15 / 383], rtol=1e-6)


def test_edge_points_are_index_5_of_the_outer_rows_and_columns():
    assert edge_points() == {"top": [(0, 5)], "down": [(9, 5)], "left": [(5, 0)], "right": [(5, 9)]}
    assert {e: r * 10 + c for e, [(r, c)] in edge_points().items()} == EDGE_CELL


# -- the label rule on constructed tracks --------------------------------------------------------


@pytest.mark.parametrize(
    "moves,expected",
    [
        (_uniform(3, 0), ["pan_left"]),  # content slides right: the camera pans left
        (_uniform(-3, 0), ["pan_right"]),
        (_uniform(0, 3), ["tilt_up"]),  # content slides down: the camera tilts up
        (_uniform(0, -3), ["tilt_down"]),
        ({"top": (0, -3), "down": (0, 3), "left": (-3, 0), "right": (3, 0)}, ["zoom_in"]),
        ({"top": (0, 3), "down": (0, -3), "left": (3, 0), "right": (-3, 0)}, ["zoom_out"]),
        (_uniform(0, 0), ["static"]),
        # Diagonal: both edges "right"+"down"; right_right -> pan_left and down_down -> tilt_up.
        (_uniform(3, 3), ["pan_left", "tilt_up"]),
        # Top/down agree on pan_left, left/right say nothing the table knows ("None" is dropped).
        ({"top": (3, 0), "down": (3, 0), "left": (-3, 0), "right": (0, 0)}, ["pan_left"]),
        # top right + down left is no table entry, left/right static: {None, static} -> static goes first.
        ({"top": (3, 0), "down": (-3, 0)}, ["None"]),
        # Only the edge midpoints count: every other point moving does not change the label.
        ({}, ["static"]),
    ],
)
def test_label_rule(moves, expected):
    tracker = EdgeTracker(moves, rest=(5.0, 5.0) if not moves else (0.0, 0.0))
    metric = get_metric("camera_motion", tracker=tracker)
    record = metric.update(_video(caption="camera pans left"))
    assert record["extras"]["predicted"] == expected
    assert record["value"] == float("pan_left" in expected)
    np.testing.assert_allclose(tracker.calls[0], cotracker_grid(SIZE, SIZE))


def test_threshold_is_strict_and_scales_with_the_shorter_side():
    # 64x128 video: threshold 0.32 px from the shorter side; positions are truncated to integers
    # first, so a whole-pixel move of 1 exceeds it and the grid's fractional start does not matter.
    grid = cotracker_grid(64, 128)
    xy = np.stack([grid, grid + np.array([1.0, 0.0])])
    pred = predict_camera_motion(xy, 64, 128)
    assert pred["threshold"] == pytest.approx(0.32) and pred["predicted"] == ["pan_left"]
    # With threshold 0.005 * 200 = 1.0, a 1-px move is not above it.
    grid = cotracker_grid(200, 200)
    assert predict_camera_motion(np.stack([grid, grid + np.array([1.0, 0.0])]), 200, 200)["predicted"] == ["static"]


def test_positions_are_truncated_like_upstream_long():
    # On 100x100 (threshold 0.5): 10.9 -> 11.2 is +0.3 px but trunc(11.2) - trunc(10.9) = 1 ("right");
    # 10.1 -> 10.9 is +0.8 px but truncates to 0 ("static").
    grid = cotracker_grid(100, 100)
    first, last = grid.copy(), grid.copy()
    for cell in EDGE_CELL.values():
        first[cell], last[cell] = (10.9, 50.0), (11.2, 50.0)
    assert predict_camera_motion(np.stack([first, last]), 100, 100)["predicted"] == ["pan_left"]
    for cell in EDGE_CELL.values():
        first[cell], last[cell] = (10.1, 50.0), (10.9, 50.0)
    assert predict_camera_motion(np.stack([first, last]), 100, 100)["predicted"] == ["static"]


def test_first_and_last_frame_only():
    # Content goes right then comes back: no net motion between the first and last frame.
    grid = cotracker_grid(SIZE, SIZE)
    xy = np.stack([grid, grid + np.array([6.0, 0.0]), grid])
    assert predict_camera_motion(xy, SIZE, SIZE)["predicted"] == ["static"]


def test_zoom_about_the_centre_also_reads_as_pan_and_tilt():
    # The edge "midpoints" are cell 5 of 0..9, half a cell past the centre: on 64x64 at
    # x5 = (8 + 5*496/9) * 63/511 = 34.96 (centre 31.5). Scaling by 1.1 about the centre moves
    # the top point from x 34.96 to 35.31: truncated 34 -> 35, +1 px > 0.32, so "right" as well as
    # "up"; likewise the left point moves "down". Upstream's product of directions then adds
    # right_right (pan_left) and down_down (tilt_up) to zoom_in. Zooming in still scores 1.
    # Zooming out by 1/1.1 moves the top point x 34.96 -> 34.65 (truncated: 34 -> 34, no x move), y
    # 1.32 -> 4.06 (+3, "down"); bottom y 61.85 -> 59.09 (-2, "up"); left x 0.99 -> 3.76 (+3), right
    # x 62.14 -> 59.35 (-3): exactly zoom_out.
    centre = (SIZE - 1) / 2
    metric = get_metric("camera_motion", tracker=FunctionTracker(lambda q: centre + 1.1 * (q - centre)))
    record = metric.update(_video(caption="..., camera zooms in"))
    assert record["extras"]["predicted"] == ["pan_left", "tilt_up", "zoom_in"]
    assert record["value"] == 1.0
    out = get_metric("camera_motion", tracker=FunctionTracker(lambda q: centre + (q - centre) / 1.1))
    assert out.update(_video(caption="camera zooms out"))["extras"]["predicted"] == ["zoom_out"]


def test_a_tracker_with_a_grid_call_is_asked_for_the_grid():
    # CoTracker's track_grid is upstream's predictor(video, grid_size=10) (no support grid): use it.
    class GridTracker(EdgeTracker):
        def track(self, frames, queries, fields=None):
            raise AssertionError("track_grid should have been used")

        def track_grid(self, frames, grid_size):
            assert grid_size == 10
            return EdgeTracker.track(self, frames, cotracker_grid(*frames[0].shape[:2]))

    record = get_metric("camera_motion", tracker=GridTracker(_uniform(0, -3))).update(
        _video(caption="camera tilts down")
    )
    assert record["extras"]["grid_call"] == "track_grid" and record["extras"]["predicted"] == ["tilt_down"]
    assert record["value"] == 1.0


# -- where the target label comes from ------------------------------------------------------------


def test_labels_from_prompt_phrases_condition_and_file_name():
    assert camera_target(_video(caption="a red fox, camera tilts down")) == ("tilt_down", "caption")
    assert camera_target(_video(caption="A Fox, Camera Zooms Out")) == ("zoom_out", "caption")
    # Upstream reads the file name; `harness eval --videos` names videos by file.
    assert camera_target(_video(video_id="a cat, camera static-0.mp4")) == ("static", "video_id")
    # The caption comes before the file name; the first phrase in upstream's order wins.
    assert camera_target(_video(video_id="camera pans left.mp4", caption="camera zooms in"))[0] == "zoom_in"
    assert camera_target(_video(caption="camera zooms in, camera pans right"))[0] == "pan_right"
    assert camera_target(_video(condition={"camera": "tilt_up"}, caption="camera pans left")) == (
        "tilt_up",
        "condition:camera",
    )
    with pytest.raises(ValueError, match="not one of"):
        camera_target(_video(condition={"camera": "pan left"}))


def test_world_labels_follow_the_pan_direction():
    # The world slides the texture right when the camera pans left (pan_velocity), which is
    # what VBench calls pan_left; up/down pans are VBench's tilts.
    cfg = WorldConfig()
    base = sample_spec(cfg, "eval", 0)
    expected = {"left": "pan_left", "right": "pan_right", "up": "tilt_up", "down": "tilt_down", None: "static"}
    for pan, label in expected.items():
        spec = dataclasses.replace(base, pan=pan, caption_detail="full")
        assert camera_target(_video(condition=WorldCondition(spec, cfg))) == (label, "world:pan")
    # An appearance-only caption does not ask for any camera motion: no label.
    spec = dataclasses.replace(base, pan="left", caption_detail="appearance")
    label, reason = camera_target(_video(condition=WorldCondition(spec, cfg)))
    assert label is None and "does not state the camera motion" in reason


def test_unlabelled_videos_are_skipped_with_a_reason():
    tracker = EdgeTracker(_uniform(3, 0))
    metric = get_metric("camera_motion", tracker=tracker)
    record = metric.update(_video(video_id="clip.mp4", caption="a dog runs"))
    assert record["value"] is None and record["extras"]["label"] is None
    assert "no camera label" in record["extras"]["skipped"]
    assert tracker.calls == []  # not tracked at all
    metric.update(_video(video_id="b", caption="camera pans left"))
    assert metric.compute() == 1.0
    extras = metric.compute_extras
    assert extras["n_videos"] == 2 and extras["n_included"] == 1 and extras["n_unlabelled"] == 1


# -- aggregate, identity, merging ------------------------------------------------------------------


def _scored_metric(videos):
    metric = get_metric("camera_motion", tracker=EdgeTracker(_uniform(3, 0)))  # always predicts pan_left
    return metric, [metric.update(v) for v in videos]


LABELLED = [
    _video("a", "camera pans left"),
    _video("b", "camera pans right"),
    _video("c", "camera pans left"),
    _video("d", "camera static"),
    _video("e", "no label"),
]


def test_aggregate_is_the_mean_of_matches_with_per_label_means():
    metric, records = _scored_metric(LABELLED)
    assert [r["value"] for r in records] == [1.0, 0.0, 1.0, 0.0, None]
    assert metric.compute() == pytest.approx(2 / 4)
    extras = metric.compute_extras
    assert extras["per_label"] == {"pan_left": 1.0, "pan_right": 0.0, "static": 0.0}
    assert extras["n_per_label"] == {"pan_left": 2, "pan_right": 1, "static": 1}


def test_the_evaluators_batched_path_keeps_the_labels_aligned():
    """Before: only ``update`` recorded the label, and the evaluator's ``update_many`` left the labels empty,
    so every evaluation with camera_motion failed at its aggregate (zip of 0 labels with N values)."""
    one, _ = _scored_metric(LABELLED)
    batched = get_metric("camera_motion", tracker=EdgeTracker(_uniform(3, 0)))
    batched.update_many(LABELLED[:3])
    batched.update_many(LABELLED[3:])
    assert batched.compute() == one.compute()
    assert batched.compute_extras == one.compute_extras


def test_merged_states_equal_single_process():
    single, _ = _scored_metric(LABELLED)
    first, _ = _scored_metric(LABELLED[:2])
    second, _ = _scored_metric(LABELLED[2:])
    merged = get_metric("camera_motion", tracker=EdgeTracker(_uniform(3, 0)))
    merged.merge([second.state(), first.state()])
    assert merged.compute() == single.compute()
    assert merged.compute_extras == single.compute_extras


def test_identity_names_the_tracker():
    assert get_metric("camera_motion").identity == "camera_motion[tracker=flow_chain(flow=dis)]"
    assert (
        get_metric("camera_motion", tracker_options={"flow": "farneback"}).identity
        == "camera_motion[tracker=flow_chain(flow=farneback)]"
    )
    assert get_metric("camera_motion", tracker=EdgeTracker({})).identity == "camera_motion[tracker=edge-fake]"
    with pytest.raises(ValueError, match="tracker_options"):
        get_metric("camera_motion", tracker=EdgeTracker({}), tracker_options={"flow": "dis"})
    with pytest.raises(KeyError, match="unknown tracker"):
        get_metric("camera_motion", tracker="no-such-tracker")
    # A folder of videos (no condition) can be scored: labels come from the file names.
    assert get_metric("camera_motion").needs_condition is False
    assert set(CAMERA_LABELS) == {"pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "static"}


# -- end to end: tiny-world renders through flow_chain --------------------------------------------


def _world_sample(cfg, spec, frames_spec=None, video_id="w"):
    clip = render(frames_spec or spec, cfg)
    return VideoSample(
        video_id=video_id, frames=clip.frames, fps=cfg.fps, caption=spec.caption, condition=WorldCondition(spec, cfg)
    )


def test_world_pans_end_to_end_with_flow_chain():
    # Sprite-free clips at 32 px: the pan moves the texture 7 px over 8 frames (threshold 0.16 px).
    cfg = WorldConfig(resolution=32)
    base = dataclasses.replace(sample_spec(cfg, "eval", 0), sprites=(), caption_detail="full")
    metric = get_metric("camera_motion")
    expected = {"left": "pan_left", "right": "pan_right", "up": "tilt_up", "down": "tilt_down", None: "static"}
    for pan, label in expected.items():
        record = metric.update(_world_sample(cfg, dataclasses.replace(base, pan=pan), video_id=f"pan-{pan}"))
        assert record["extras"]["label"] == label
        assert record["extras"]["predicted"] == [label], (pan, record["extras"]["edge_vectors"])
        assert record["value"] == 1.0
    # A video that ignores the requested pan (rendered without it) scores 0.
    record = metric.update(
        _world_sample(
            cfg,
            dataclasses.replace(base, pan="left"),
            frames_spec=dataclasses.replace(base, pan=None),
            video_id="ignored",
        )
    )
    assert record["extras"]["predicted"] == ["static"] and record["value"] == 0.0
    assert metric.compute() == pytest.approx(5 / 6)
