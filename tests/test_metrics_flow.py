"""Flow backends and motion_score against textures translating at a known speed."""

import os

import cv2
import numpy as np
import pytest

from harness.scorers.backends.flow import DISFlow, FarnebackFlow, get_flow_backend
from metrics import VideoSample, get_metric
from metrics.synthetic import translating_texture

cv2.setNumThreads(1)


def _sample(frames, vid="v", fps=8.0):
    return VideoSample(video_id=vid, frames=frames, fps=fps)


@pytest.mark.parametrize("backend", ["dis", "farneback"])
@pytest.mark.parametrize("size,sigma", [(16, 1.5), (64, 2.0)])
@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_motion_score_measures_known_translation(backend, size, sigma, speed):
    frames = translating_texture(speed, num_frames=8, size=size, sigma=sigma, seed=3)
    metric = get_metric("motion_score", flow=backend)
    record = metric.update(_sample(frames))
    assert record["value"] == pytest.approx(speed, rel=0.10)
    assert metric.compute() == record["value"]
    assert record["extras"]["stat"] == "mean" and record["extras"]["flow"] == backend


def test_flow_direction_and_units():
    frames = translating_texture((1.0, -2.0), num_frames=2, size=16, seed=1)
    for name in ("dis", "farneback"):  # the weights-free backends (RAFT has its own tests)
        flow = get_flow_backend(name)(frames[0], frames[1])
        assert flow.shape == (16, 16, 2) and flow.dtype == np.float32
        inner = flow[4:-4, 4:-4].reshape(-1, 2).mean(axis=0)
        assert inner == pytest.approx([1.0, -2.0], abs=0.2), name


def test_auto_upscale_only_for_small_frames():
    assert DISFlow().upscale_for(16, 16) == 8 and DISFlow().upscale_for(480, 832) == 1
    assert FarnebackFlow().upscale_for(16, 16) == 4 and FarnebackFlow().upscale_for(64, 80) == 1
    assert DISFlow(upscale=2).upscale_for(480, 832) == 2


def test_backend_identity_names_changed_options():
    assert DISFlow().identity == "dis"
    assert DISFlow(preset="fast", upscale=1).identity == "dis(preset=fast,upscale=1)"
    assert FarnebackFlow(gain=1.0).identity == "farneback(gain=1.0)"
    with pytest.raises(ValueError, match="allowed: preset="):
        DISFlow(patch=8)
    with pytest.raises(KeyError, match="dis, farneback"):
        get_flow_backend("no-such-flow")


def test_motion_score_options_change_the_numbers_as_expected():
    frames = translating_texture(2.0, num_frames=9, size=64, sigma=2.0, seed=5)
    base = get_metric("motion_score").update(_sample(frames))["value"]
    half = get_metric("motion_score", resize=32).update(_sample(frames))
    assert half["value"] == pytest.approx(base / 2, rel=0.05)
    assert half["extras"]["eval_hw"] == [32, 32]
    stride = get_metric("motion_score", stride=2).update(_sample(frames))
    assert stride["value"] == pytest.approx(2 * base, rel=0.05)
    assert stride["extras"]["px_per_second"] == pytest.approx(base * 8.0, rel=0.05)
    fps = get_metric("motion_score", target_fps=8.0).update(_sample(frames, fps=16.0))
    assert fps["extras"]["step"] == 2 and fps["value"] == pytest.approx(2 * base, rel=0.05)
    # A uniform translation has the same top-5 % and mean magnitude.
    top5 = get_metric("motion_score", stat="top5").update(_sample(frames))["value"]
    assert top5 == pytest.approx(base, rel=0.10)


def test_motion_score_is_zero_for_a_static_video():
    frames = np.repeat(translating_texture(0.0, num_frames=1, size=16), 6, axis=0)
    assert get_metric("motion_score").update(_sample(frames))["value"] == 0.0


def test_shared_flows_computes_each_pair_once_with_identical_results(monkeypatch):
    from harness.scorers.backends.flow import shared_flows

    videos = [translating_texture(s, num_frames=6, size=16, seed=k) for k, s in enumerate((1.0, 2.0))]
    names = ["motion_score", "dynamic_degree", "temporal_flickering", "motion_smoothness"]

    def records():
        return [get_metric(n).update(_sample(v, f"v{i}")) for n in names for i, v in enumerate(videos)]

    plain = records()
    calls = []
    original = DISFlow.compute_flows

    def counting(self, frames, pairs):
        calls.append(len(pairs))
        return original(self, frames, pairs)

    monkeypatch.setattr(DISFlow, "compute_flows", counting)
    with shared_flows() as cache:
        shared = records()
        computed = sum(calls)
        again = records()
    assert shared == plain == again  # the same numbers, bit for bit
    # the static filter's and dynamic degree's consecutive pairs are motion_score's
    assert cache.hits > 0 and cache.misses == computed == len(cache)
    assert sum(calls) == computed  # the second pass computed nothing


def test_shared_flows_keys_on_backend_identity_and_content_and_stays_bounded():
    from harness.scorers.backends.flow import shared_flows

    frames = translating_texture(1.0, num_frames=3, size=16, seed=0)
    with shared_flows(max_bytes=3 * 16 * 16 * 2 * 4) as cache:
        medium = DISFlow().flows(list(frames), [(0, 1), (1, 2)])
        fast = DISFlow(preset="fast").flows(list(frames), [(0, 1)])
        assert cache.misses == 3 and cache.hits == 0  # another identity is another flow
        moved = frames.copy()
        moved[1, 0, 0] ^= 1  # one pixel changed: another frame
        DISFlow().flows(list(moved), [(0, 1)])
        assert cache.misses == 4 and len(cache) == 3 and cache.nbytes <= cache.max_bytes  # the oldest dropped
        assert not medium[0].flags.writeable and not fast[0].flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            medium[0] += 1
    assert DISFlow().flows(list(frames), [(0, 1)])[0].flags.writeable  # closed: nothing cached


def test_lru_cache_bounds():
    from harness.lru import LRUCache

    c = LRUCache(max_entries=2)
    c.put("a", 1), c.put("b", 2), c.get("a"), c.put("c", 3)  # "b" is the least recently used
    assert c.get("b") is None and c.get("a") == 1 and len(c) == 2 and (c.hits, c.misses) == (2, 1)
    sized = LRUCache(max_bytes=10, size=len)
    sized.put("x", "12345"), sized.put("x", "123456"), sized.put("y", "1234")
    assert len(sized) == 2 and sized.nbytes == 10  # a replaced value is not counted twice
    sized.put("z", "12345678901")  # larger than the bound: kept alone
    assert len(sized) == 1 and sized.get("z")
    off = LRUCache(max_entries=0)
    off.put("k", 1)
    assert len(off) == 0 and off.get("k") is None
    with pytest.raises(ValueError, match="size function"):
        LRUCache(max_bytes=1)


@pytest.mark.parametrize("name", ["dis", "farneback"])
def test_pairs_estimated_side_by_side_are_the_same_bits_as_one_by_one(name, monkeypatch):
    """compute_flows spreads a video's pairs over a thread pool (each thread with its own DIS object); the flows
    must equal estimating the pairs one by one, and a copied backend must work the same."""
    import copy

    from harness.scorers.backends import flow as flow_module

    backend = get_flow_backend(name)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(8)]
    pairs = [(t, t + 1) for t in range(7)] + [(t + 1, t) for t in range(7)]
    pooled = backend.compute_flows(frames, pairs)
    if (os.cpu_count() or 1) > 1:  # the pairs were spread (CI has 2 cores)
        assert flow_module._POOL is not None
    monkeypatch.setattr(flow_module, "_estimate_pool", lambda: None)
    single = backend.compute_flows(frames, pairs)
    assert all(np.array_equal(a, b) for a, b in zip(pooled, single, strict=True))
    monkeypatch.undo()
    copied = copy.deepcopy(backend).compute_flows(frames, pairs)
    assert all(np.array_equal(a, b) for a, b in zip(copied, single, strict=True))


def test_a_forked_child_estimates_flows_with_a_pool_of_its_own():
    """The parent's pool threads do not survive a fork; a child that reused the pool would wait forever."""
    if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs fork and two cores")
    backend = get_flow_backend("dis")
    frames = [np.random.default_rng(k).integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for k in range(4)]
    pairs = [(0, 1), (1, 2), (2, 3)]
    expected = backend.compute_flows(frames, pairs)  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when its flows come back, and equal
        ok = all(np.array_equal(a, b) for a, b in zip(backend.compute_flows(frames, pairs), expected, strict=True))
        os._exit(0 if ok else 1)
    deadline = 30
    import time

    start = time.monotonic()
    while time.monotonic() - start < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child never got its flows")
