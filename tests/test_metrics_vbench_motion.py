"""temporal_flickering, dynamic_degree and motion_smoothness against hand-computed cases."""

import math
from typing import ClassVar

import cv2
import numpy as np
import pytest

from harness.scorers.backends.flow import FlowBackend
from metrics import VideoSample, get_metric
from metrics.dynamic_degree import dynamic_check
from metrics.synthetic import texture_video, translating_texture
from metrics.temporal_flickering import static_filter

cv2.setNumThreads(1)


def _sample(frames, vid="v", fps=8.0):
    return VideoSample(video_id=vid, frames=frames, fps=fps)


def _static(num_frames=8, size=16):
    return np.repeat(translating_texture(0.0, num_frames=1, size=size, seed=2), num_frames, axis=0)


class ScriptedFlow(FlowBackend):
    """Uniform flow whose length is looked up by (frame value of a, frame value of b)."""

    name = "scripted"
    version = "test"
    defaults: ClassVar[dict] = {"upscale": 1}
    AUTO_MIN_SIDE = 1

    def __init__(self, speeds):
        super().__init__()
        self.speeds = speeds

    def _prepare(self, frame, factor):
        return frame

    def _estimate(self, a, b):
        flow = np.zeros(a.shape[:2] + (2,), np.float32)
        flow[..., 0] = self.speeds.get((int(a[0, 0, 0]), int(b[0, 0, 0])), 0.0)
        return flow


def _indexed(num_frames, size=16):
    """Frame k is constant k, so ScriptedFlow knows which pair it is given."""
    values = np.repeat(np.arange(num_frames, dtype=np.uint8), size * size * 3)
    return values.reshape(num_frames, size, size, 3)


# ---- temporal flickering ---------------------------------------------------------------------------


def test_flickering_of_alternating_constant_frames():
    d = 7
    frames = np.where(np.arange(8)[:, None, None, None] % 2 == 0, 100, 100 + d).astype(np.uint8)
    frames = np.broadcast_to(frames, (8, 16, 16, 3)).copy()
    metric = get_metric("temporal_flickering")
    record = metric.update(_sample(frames))
    assert record["extras"]["static"] is True  # uniform frames have no flow
    assert record["value"] == pytest.approx((255 - d) / 255, abs=1e-12)
    assert metric.compute() == pytest.approx((255 - d) / 255, abs=1e-12)


def test_static_filter_passes_a_still_texture_and_rejects_a_moving_one():
    metric = get_metric("temporal_flickering")
    still = metric.update(_sample(_static(), "still"))
    moving = metric.update(_sample(translating_texture(1.0, num_frames=8, size=16), "moving"))
    assert still["value"] == 1.0 and still["extras"]["static"] is True
    assert moving["value"] is None and moving["extras"]["static"] is False
    assert metric.compute() == 1.0
    assert metric.compute_extras["n_static"] == 1 and metric.compute_extras["n_not_static"] == 1


def test_flickering_is_nan_with_a_warning_when_nothing_is_static():
    metric = get_metric("temporal_flickering")
    metric.update(_sample(translating_texture(1.0, num_frames=8, size=16)))
    with pytest.warns(UserWarning, match="static filter"):
        assert math.isnan(metric.compute())


def test_static_filter_rule_on_scripted_flows():
    # T = 16: thres = 3 * 16 / 256 = 0.1875, count_num = round(2) = 2, wrap limit 0.1875 * 2 * 2 = 0.75.
    frames = _indexed(16)
    two_moving = {(0, 1): 1.0, (5, 6): 1.0, (0, 15): 0.7, (15, 0): 0.7}
    check = static_filter(frames, ScriptedFlow(two_moving))
    assert (check.thres, check.count_num, check.n_above, check.static) == (0.1875, 2, 2, True)
    assert not static_filter(frames, ScriptedFlow({**two_moving, (9, 10): 1.0})).static  # 3 > count_num
    assert not static_filter(frames, ScriptedFlow({**two_moving, (15, 0): 0.76})).static  # wrap pair too big
    # T = 4: count_num = round(0.5) = 0, so any first<->last motion fails the wrap test.
    assert not static_filter(_indexed(4), ScriptedFlow({(0, 3): 0.01})).static


# ---- dynamic degree --------------------------------------------------------------------------------


def test_dynamic_degree_static_is_0_and_translation_is_1():
    metric = get_metric("dynamic_degree")
    assert metric.update(_sample(_static(), "still"))["value"] == 0.0
    moving = metric.update(_sample(translating_texture(1.0, num_frames=8, size=16), "moving"))
    assert moving["value"] == 1.0
    # thres = 6 * 16 / 256 = 0.375 px; every pair's top-5 % flow is ~1 px.
    assert moving["extras"]["thres"] == 0.375 and moving["extras"]["count_num"] == 2
    assert moving["extras"]["n_above"] == 7
    assert metric.compute() == 0.5


def test_dynamic_degree_samples_by_fps_and_counts_pairs():
    # 24 frames at 24 fps -> every 3rd frame -> N = 8 sampled, count_num = round(2) = 2, thres 0.375.
    frames = _indexed(24)
    one = dynamic_check(frames, 24.0, ScriptedFlow({(0, 3): 1.0}))
    assert (one["interval"], one["n_sampled"], one["count_num"], one["dynamic"]) == (3, 8, 2, False)
    two = dynamic_check(frames, 24.0, ScriptedFlow({(0, 3): 1.0, (9, 12): 0.4}))
    assert two["n_above"] == 2 and two["dynamic"]
    assert not dynamic_check(frames, 24.0, ScriptedFlow({(0, 3): 1.0, (9, 12): 0.375}))["dynamic"]
    assert dynamic_check(frames, 8.0, ScriptedFlow({}))["interval"] == 1


# ---- motion smoothness -----------------------------------------------------------------------------


def test_motion_smoothness_static_is_1():
    assert get_metric("motion_smoothness").update(_sample(_static()))["value"] > 0.99


def test_motion_smoothness_prefers_linear_motion_to_jitter():
    t = np.arange(9, dtype=np.float64)
    linear = texture_video(np.stack([t, 0 * t], 1), size=16, seed=4)
    jitter_x = t + np.where(t % 2 == 1, np.where(t % 4 == 1, 1.5, -1.5), 0.0)  # odd frames off the path
    jittery = texture_video(np.stack([jitter_x, 0 * t], 1), size=16, seed=4)
    metric = get_metric("motion_smoothness")
    smooth = metric.update(_sample(linear, "linear"))
    rough = metric.update(_sample(jittery, "jitter"))
    assert smooth["value"] > 0.97
    assert smooth["value"] > rough["value"] + 0.02
    assert len(smooth["extras"]["frame_mae"]) == 4  # 5 even frames -> 4 interpolated odd frames
