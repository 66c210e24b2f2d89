"""Registry look-ups, identities and exact merging of per-process states."""

import cv2
import numpy as np
import pytest

from harness.scorers.backends.flow import DISFlow
from metrics import UnknownOptionError, VideoSample, get_metric, list_metrics
from metrics.synthetic import translating_texture

cv2.setNumThreads(1)

BUILTIN = ["dynamic_degree", "motion_score", "motion_smoothness", "temporal_flickering"]


def _videos():
    still = np.repeat(translating_texture(0.0, num_frames=1, size=16, seed=9), 8, axis=0)
    return [VideoSample(video_id=f"v{i}", frames=f, fps=8.0) for i, f in enumerate([
        still, translating_texture(1.0, seed=1), translating_texture(0.25, seed=2),
        translating_texture(2.0, seed=3), still[::-1].copy(),
    ])]


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError) as err:
        get_metric("flickering")
    for name in BUILTIN:
        assert name in str(err.value)


def test_unknown_option_lists_allowed_options():
    with pytest.raises(UnknownOptionError, match="allowed: flow='dis', flow_options=None"):
        get_metric("dynamic_degree", flwo="dis")


def test_specs_are_complete():
    specs = {s.name: s for s in list_metrics()}
    assert set(BUILTIN) <= set(specs)
    for name in BUILTIN:
        spec = specs[name]
        assert spec.weights == () and spec.kind == "per-video" and spec.departures and spec.description
        assert "frames" in spec.inputs


@pytest.mark.parametrize("name,options,identity", [
    ("dynamic_degree", {}, "dynamic_degree[flow=dis]"),
    ("dynamic_degree", {"flow": "farneback"}, "dynamic_degree[flow=farneback]"),
    ("dynamic_degree", {"flow_options": {"upscale": 1}}, "dynamic_degree[flow=dis(upscale=1)]"),
    ("dynamic_degree", {"flow": DISFlow(preset="fast")}, "dynamic_degree[flow=dis(preset=fast)]"),
    ("motion_score", {}, "motion_score[flow=dis,stat=mean]"),
    ("motion_score", {"stat": "top5", "resize": 32, "stride": 2},
     "motion_score[flow=dis,resize=32,stat=top5,stride=2]"),
    ("motion_score", {"target_fps": 8.0}, "motion_score[flow=dis,fps=8,stat=mean]"),
    ("temporal_flickering", {}, "temporal_flickering[flow=dis]"),
    ("temporal_flickering", {"static_filter": False}, "temporal_flickering[static_filter=off]"),
    ("motion_smoothness", {}, "motion_smoothness[interp=flowinterp-dis]"),
    ("motion_smoothness", {"interp": "flowinterp-farneback"},
     "motion_smoothness[interp=flowinterp-farneback]"),
])
def test_identities(name, options, identity):
    assert get_metric(name, **options).identity == identity


@pytest.mark.parametrize("name", BUILTIN)
def test_merged_states_equal_single_process(name):
    videos = _videos()
    single, first, second = (get_metric(name) for _ in range(3))
    records = [single.update(v) for v in videos]
    for v in videos[:2]:
        first.update(v)
    for v in videos[2:]:
        second.update(v)
    merged = get_metric(name)
    merged.merge([second.state(), first.state()])
    assert merged.compute() == single.compute()
    assert merged.compute_extras == single.compute_extras
    assert sorted(merged.state()["video_ids"]) == [r["video_id"] for r in records]


def test_merge_refuses_other_identities_and_duplicates():
    videos = _videos()
    a, b = get_metric("dynamic_degree"), get_metric("dynamic_degree", flow="farneback")
    a.update(videos[0])
    b.update(videos[1])
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge([b.state()])
    c = get_metric("dynamic_degree")
    c.update(videos[0])
    with pytest.raises(ValueError, match="twice"):
        a.merge([c.state()])
    with pytest.raises(ValueError, match="already scored"):
        a.update(videos[0])


def test_reset_clears_state():
    metric = get_metric("motion_score")
    metric.update(_videos()[1])
    metric.reset()
    assert metric.state()["video_ids"] == []
    with pytest.warns(UserWarning, match="no video"):
        assert np.isnan(metric.compute())


@pytest.mark.parametrize("name", BUILTIN)
def test_records_are_plain_json(name):
    import json

    metric = get_metric(name)
    record = metric.update(_videos()[1])
    assert set(record) == {"video_id", "value", "weight", "extras"}
    json.dumps(record)
    json.dumps(metric.state())


def test_vbench_i2v_group_scores_flickering_on_every_video_as_upstream():
    """VBench-I2V's temporal_flickering has no static filter (before: the group applied the T2V suite's filter,
    which leaves moving I2V videos unscored)."""
    import numpy as np

    from metrics.base import VideoSample
    from metrics.registry import expand_metrics, get_metric

    opts = dict(expand_metrics(["vbench-i2v"]))["temporal_flickering"]
    metric = get_metric("temporal_flickering", **opts)
    assert metric.identity == "temporal_flickering[static_filter=off]"
    frames = np.zeros((6, 32, 32, 3), np.uint8)
    for t in range(6):  # a square that moves 4 px a frame: never static
        frames[t, 8:16, 4 * t:4 * t + 8] = 255
    metric.reset()
    row = metric.update(VideoSample("v", frames, 8, first_frame=frames[0]))
    assert row["value"] is not None and 0 < row["value"] < 1
