"""SHIFT's pixel-motion features and discriminators: Eq. 6's residual, flow confidence, the
flow-chaining tracker, the LMR descriptor, the reward metrics and missing weights."""

import numpy as np
import pytest
import torch

from harness.scorers.backends.flow import fb_confidence, sample_points, warp
from harness.scorers.backends.tracking import get_tracker, list_trackers
from harness.scorers.motion_features import (
    LMR_STEP_DIM,
    lmr_features,
    lmr_input_dim,
    random_queries,
    transport_residual,
)

H = W = 32
T = 6


def _translating(speed: float, wavelength: float = 32.0) -> torch.Tensor:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    frames = [0.5 + 0.25 * np.sin(2 * np.pi * (xx - speed * t) / wavelength) * np.cos(2 * np.pi * yy / wavelength)
              for t in range(T)]
    return torch.tensor(np.stack(frames), dtype=torch.float32)


def test_residual_of_a_known_translation_with_exact_flow_is_near_zero_and_grows_with_flicker():
    intensity = _translating(0.5)
    flow = torch.zeros(T - 1, H, W, 2)
    flow[..., 0] = 0.5  # the exact flow: 0.5 px/frame to the right
    dt = intensity[1:] - intensity[:-1]
    inner = (slice(None), slice(1, -1), slice(1, -1))  # the replicated border has no true gradient
    clean = transport_residual(intensity, flow)[inner]
    assert float(clean.norm() / dt[inner].norm()) < 0.05  # advection cancels dI/dt up to Sobel's discretisation
    wrong = transport_residual(intensity, torch.zeros_like(flow))
    assert torch.allclose(wrong, dt)  # without flow the residual is dI/dt itself
    g = torch.Generator().manual_seed(0)
    ratios = []
    for amp in (0.01, 0.03, 0.1):  # per-frame global brightness flicker
        flick = intensity + amp * torch.randn(T, 1, 1, generator=g)
        ratios.append(float(transport_residual(flick, flow)[inner].norm() / dt[inner].norm()))
    assert ratios[0] > 0.1 and ratios[0] < ratios[1] < ratios[2]


def test_residual_by_hand_on_a_ramp():
    """I = a x + b y + c t: Sobel of a ramp is exact, so delta = c + u a + v b."""
    yy, xx = np.mgrid[0:8, 0:8].astype(np.float32)
    a, b, c = 0.02, -0.01, 0.05
    intensity = torch.tensor(np.stack([a * xx + b * yy + c * t for t in range(3)]))
    flow = torch.zeros(2, 8, 8, 2)
    flow[..., 0], flow[..., 1] = 1.5, -2.0
    delta = transport_residual(intensity, flow)[:, 1:-1, 1:-1]  # away from the replicated border
    assert torch.allclose(delta, torch.full_like(delta, c + 1.5 * a - 2.0 * b), atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        transport_residual(intensity, flow[:1])


def test_forward_backward_confidence():
    fw = np.full((8, 8, 2), 1.0, np.float32)
    assert np.allclose(fb_confidence(fw, -fw), 1.0)  # consistent: the backward flow returns every pixel
    assert fb_confidence(fw, fw).max() < 0.01  # inconsistent by 2 px everywhere
    field = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert warp(field, np.zeros((8, 8, 2), np.float32))[3, 4] == field[3, 4]
    assert sample_points(field, np.array([[2.5, 1.0]], np.float32))[0] == pytest.approx(10.5)


def _sprite_video(vx: float, vy: float, n: int = 8, size: int = 32) -> np.ndarray:
    """A textured scene translating rigidly by (vx, vy) px per frame (brightness constancy holds)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = []
    for t in range(n):
        x, y = xx - vx * t, yy - vy * t
        scene = 0.45 + 0.2 * np.sin(2 * np.pi * x / 13.0) * np.cos(2 * np.pi * y / 11.0) \
            + 0.25 * np.exp(-((x - 10) ** 2 + (y - 12) ** 2) / (2 * 3.0**2))
        out.append(np.clip(255 * scene, 0, 255))
    gray = np.stack(out).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def test_flow_chain_tracker_follows_a_translating_scene():
    assert "flow_chain" in list_trackers()
    tracker = get_tracker("flow_chain")
    assert tracker.identity == "flow_chain(flow=dis)"
    video = _sprite_video(1.0, 0.5)
    tracks = tracker.track(list(video), np.array([[10.0, 12.0]], np.float32))
    truth = np.stack([[10 + 1.0 * t, 12 + 0.5 * t] for t in range(8)])
    assert np.abs(tracks.xy[:, 0] - truth).max() < 0.5  # over 7 chained steps
    assert tracks.visible[:, 0].all() and tracks.confidence.min() > 0.5
    with pytest.raises(KeyError, match="registered:.*flow_chain"):
        get_tracker("no_such_tracker")


def test_lmr_descriptor_layout():
    video = _sprite_video(1.0, 0.0)
    queries = random_queries(32, 32, 5, np.random.default_rng(0))
    feats = lmr_features(video, get_tracker("flow_chain"), queries)
    assert feats.shape == (5, lmr_input_dim(8)) and lmr_input_dim(8) == 7 * LMR_STEP_DIM + 2
    steps = feats[:, :-2].reshape(5, 7, LMR_STEP_DIM)
    assert ((steps[..., 2] == 0) | (steps[..., 2] == 1)).all()  # visibility is a flag
    assert (steps[..., 4:] <= 1).all() and (steps[..., 4:] >= 0).all()  # colour affinities
    assert feats[:, -2:].abs().max() <= 1  # the normalised query position
    still = lmr_features(np.repeat(video[:1], 8, axis=0), get_tracker("flow_chain"), queries)
    assert still[:, :-2].reshape(5, 7, LMR_STEP_DIM)[..., :2].abs().max() < 0.05  # no drift on a still video


def test_discriminators_score_and_missing_weights_are_named(tmp_path):
    from harness.scorers.errors import RewardError
    from harness.scorers.motion_rm import MotionDiscriminator, load_discriminator, rewards_from_logits

    for kind in ("imr", "lmr"):
        disc = load_discriminator(kind)  # the shipped, pre-trained ones
        assert disc.spec["num_frames"] == 8 and disc.digest
        video = _sprite_video(0.5, 0.0, size=16)
        logit = disc(disc.features([video], [0]))
        assert logit.shape == (1,) and torch.isfinite(logit).all()
        with pytest.raises(RewardError, match=rf"{kind} motion reward model file missing: .*model.safetensors.*"
                                              rf"harness build motion-rm"):
            load_discriminator(kind, tmp_path / "none")
    assert torch.equal(rewards_from_logits(torch.tensor([-20.0, 3.0, 30.0])), torch.tensor([-10.0, 3.0, 10.0]))
    assert torch.allclose(rewards_from_logits(torch.tensor([0.0]), "sigmoid"), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="unknown motion reward"):
        MotionDiscriminator("xyz", 8, 16)


def test_shipped_discriminators_separate_real_from_generated():
    """The training record's held-out numbers: better than chance on clips never trained on."""
    import json

    from harness.config import package_path

    for kind in ("imr", "lmr"):
        record = json.loads((package_path(f"assets/tiny/rewards/{kind}") / "record.json").read_text())
        assert record["held_out"]["auc"] > 0.6, record["held_out"]


def test_motion_reward_metrics():
    from harness.config import load_preset
    from harness.data.batches import split_batch
    from harness.data.video_io import tensor_to_frames
    from metrics.base import VideoSample
    from metrics.registry import get_metric

    preset = load_preset("tiny")
    clips = split_batch(preset.world, "eval", range(6))
    for name in ("imr_reward", "lmr_reward"):
        metric = get_metric(name)
        assert "model=" in metric.identity and "flow_chain" in metric.identity
        rows = [metric.update(VideoSample(f"v{i}", tensor_to_frames(v), fps=8)) for i, v in enumerate(clips.videos)]
        values = [r["value"] for r in rows]
        assert all(np.isfinite(values)) and len(set(values)) > 1
        again = get_metric(name).update(VideoSample("v0", tensor_to_frames(clips.videos[0]), fps=8))
        assert again["value"] == values[0]  # the LMR's random queries are fixed per video id
        with pytest.raises(ValueError, match="reads 8 frames of 16x16 px; video 'big' has 8 of 32x32"):
            metric.update(VideoSample("big", np.zeros((8, 32, 32, 3), np.uint8), fps=8))


def test_default_map_size_keeps_small_clips_native_and_scales_real_ones():
    """The working size of the motion features: native up to 32 px on the shorter side, else that side
    at 32 px with the aspect kept, sides multiples of the ViT's patch (4)."""
    from harness.scorers.motion_rm import MotionDiscriminator, default_map_size

    assert default_map_size(16, 16) is None and default_map_size(32, 48) is None
    assert default_map_size(320, 576) == (32, 56)  # 57.6 -> 56
    assert default_map_size(480, 832) == (32, 52)  # 55.47 -> 52
    assert default_map_size(704, 1280) == (32, 56)  # 58.18 -> 56
    disc = MotionDiscriminator("imr", 3, (64, 96), map_size=default_map_size(64, 96))
    frames = [np.random.default_rng(i).integers(0, 256, (3, 64, 96, 3)).astype(np.uint8) for i in range(2)]
    feats = disc.features(frames, [0, 1])
    assert feats.shape == (2, 2, 2, 32, 48) and torch.isfinite(disc(feats)).all()
