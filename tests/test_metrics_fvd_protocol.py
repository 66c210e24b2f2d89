"""fvd's named protocols (issue #27): stylegan-v is StyleGAN-V's fvd2048_16f (2048/2048 clips of 16 frames,
seeded random real offsets, the TorchScript detector's own rescale/resize on raw uint8, biased covariance);
harness is the earlier behaviour; the protocol is recorded with every value and keys the reference cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import weights
from harness.data.video_io import write_video
from metrics import fvd as fvd_mod
from metrics.base import VideoSample
from metrics.frechet import FeatureStats, frechet_distance, frechet_from_stats
from metrics.fvd import FVD, cache_dir, random_offsets

QUIET = {"log": lambda _msg: None}


class _SpyDetector(torch.nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt: reports how it was called, plus content features."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 400)
        out[:, 0], out[:, 1], out[:, 2] = float(rescale), float(resize), float(return_features)
        out[:, 3], out[:, 4], out[:, 5] = float(x.shape[1]), float(x.shape[2]), float(x.shape[3])
        out[:, 6] = float(x.shape[4])
        out[:, 7] = 1.0 if x.dtype == torch.uint8 else 0.0
        xf = x.float()
        out[:, 8], out[:, 9] = xf.flatten(1).min(1).values, xf.flatten(1).max(1).values
        out[:, 10], out[:, 11] = xf.flatten(1).mean(1), xf[:, 0].flatten(1).std(1)
        return out


@pytest.fixture
def spy(tmp_path, monkeypatch):
    """A pinned TorchScript detector in a fresh weight cache, and a fresh reference cache."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    torch.jit.save(torch.jit.script(_SpyDetector()), str(tmp_path / "src" / "i3d_torchscript.pt"))
    (fetched,) = weights.prefetch(["i3d_torchscript"], source_dir=tmp_path / "src", **QUIET)
    weights.pin("i3d_torchscript", fetched.sha256, **QUIET)
    return tmp_path


def _video(rng, n: int, h: int = 40, w: int = 48) -> np.ndarray:
    base = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    return np.stack([np.roll(base, 3 * t, axis=1) for t in range(n)])


@pytest.fixture
def real_folder(spy):
    rng = np.random.default_rng(0)
    root = spy / "real"
    for i, n in enumerate((24, 30, 20)):
        write_video(root / f"r{i}.mp4", _video(rng, n), fps=8)
    return root


def _generated(fvd: FVD, count: int = 3, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        fvd.update(VideoSample(video_id=f"g{i}", frames=_video(rng, 16), fps=8))


def test_real_extractors_default_to_stylegan_v_and_fixed_settings_are_guarded(real_folder):
    fvd = FVD(features="i3d-torchscript", ref=str(real_folder))
    assert fvd.protocol_name == "stylegan-v" and "protocol=stylegan-v" in fvd.identity
    assert (fvd.n_gen, fvd.n_ref, fvd.clip_len, fvd.stride, fvd.offset, fvd.ddof) == (2048, 2048, 16, 1, 0, 0)
    assert FVD().protocol_name == "tiny"
    with pytest.raises(ValueError, match="protocol=harness"):
        FVD(features="i3d-torchscript", ref=str(real_folder), clip_len=9)
    with pytest.raises(ValueError, match="does not apply"):
        FVD(features="i3d-torchscript", ref=str(real_folder), protocol="tiny")
    harness = FVD(features="i3d-torchscript", ref=str(real_folder), protocol="harness")
    assert (harness.n_gen, harness.n_ref, harness.ddof, harness.detector_resize) == (None, 512, 1, False)


def test_stylegan_v_calls_the_detector_with_rescale_and_resize_on_raw_uint8(real_folder):
    fvd = FVD(features="i3d-torchscript", ref=str(real_folder))
    frames = _video(np.random.default_rng(2), 20)  # 40x48: the detector, not the harness, resizes
    feat = fvd._clip_features(frames, offset=0)
    # rescale, resize, return_features; (B, 3, T, H, W) as upstream's loader hands it; uint8 dtype
    assert feat[:8].tolist() == [1.0, 1.0, 1.0, 3.0, 16.0, 40.0, 48.0, 1.0]
    assert 0 <= feat[8] and feat[9] <= 255 and feat[9] > 1  # the 0..255 range, not [-1, 1] or [0, 1]
    np.testing.assert_allclose(feat[10], frames[:16].astype(np.float64).mean(), rtol=1e-5)
    # the harness protocol keeps its own resize and the detector's rescale/resize off
    own = FVD(features="i3d-torchscript", ref=str(real_folder), protocol="harness")._clip_features(frames)
    assert own[:8].tolist() == [0.0, 0.0, 1.0, 3.0, 16.0, 224.0, 224.0, 0.0] and own[8] >= -1 and own[9] <= 1


def test_seeded_random_offsets_reproducible_and_different_across_clips():
    lengths = [100] * 40
    a, b = random_offsets(lengths, 16, seed=0), random_offsets(lengths, 16, seed=0)
    assert a == b and len(set(a)) > 10 and all(0 <= o <= 84 for o in a)
    assert random_offsets(lengths, 16, seed=1) != a
    # upstream's range is inclusive at both ends: a 17-frame video starts at 0 or 1; a short one is discarded
    assert set(random_offsets([17] * 200, 16, seed=0)) == {0, 1}
    assert random_offsets([15, 16], 16, seed=0) == [None, 0]


def test_protocol_offsets_and_counts_recorded_and_incomplete_flagged(real_folder):
    fvd = FVD(features="i3d-torchscript", ref=str(real_folder), seed=7)
    _generated(fvd)
    with pytest.warns(UserWarning, match="incomplete"):
        value = fvd.compute()
    assert np.isfinite(value)
    ex = fvd.compute_extras
    p = ex["protocol"]
    assert p["name"] == "stylegan-v" and p["exact"] is True
    assert (p["n_gen"], p["n_ref"], p["clip_len"], p["stride"], p["offset"]) == (2048, 2048, 16, 1, 0)
    assert p["covariance"] == "biased (N)" and "seed 7" in p["real_offset"]
    assert "rescale=True, resize=True" in p["preprocess"]
    assert (ex["n"], ex["n_ref"]) == (3, 3)
    assert set(ex["incomplete"]) == {"n", "n_ref"} and "3 generated clips < 2048" in ex["incomplete"]["n"]
    # the reference offsets: StyleGAN-V's draw, seeded, in reference (sorted file) order
    assert ex["ref_offsets"] == random_offsets([24, 30, 20], 16, seed=7)
    again = FVD(features="i3d-torchscript", ref=str(real_folder), seed=7)  # from the cache: same offsets
    _generated(again)
    with pytest.warns(UserWarning):
        assert again.compute() == value
    assert again.compute_extras["ref_offsets"] == ex["ref_offsets"]


def test_reference_cache_key_changes_with_protocol_and_seed(real_folder):
    def key(m):
        return fvd_mod.hashlib.sha256(fvd_mod.json.dumps(m._reference_key(), sort_keys=True).encode()).hexdigest()

    sg = FVD(features="i3d-torchscript", ref=str(real_folder))
    hn = FVD(features="i3d-torchscript", ref=str(real_folder), protocol="harness")
    assert len({key(sg), key(hn), key(FVD(features="i3d-torchscript", ref=str(real_folder), seed=1))}) == 3
    assert key(sg) == key(FVD(features="i3d-torchscript", ref=str(real_folder)))
    sg.reference()
    hn.reference()
    assert len(list(cache_dir().glob("*.npz"))) == 2


def test_biased_covariance_by_hand_and_used_by_stylegan_v(real_folder, monkeypatch):
    x = np.array([[1.0, 2.0], [3.0, 0.0], [4.0, 5.0], [0.0, 1.0]])
    mu = x.sum(0) / 4
    d = x - mu
    biased = sum(np.outer(r, r) for r in d) / 4  # (1/N) sum (x - mu)(x - mu)^T, StyleGAN-V's get_mean_cov
    np.testing.assert_allclose(biased, [[10 / 4, 6 / 4], [6 / 4, 14 / 4]])  # by hand: mu = (2, 2)
    stats = FeatureStats(2)
    stats.update(x)
    np.testing.assert_allclose(stats.cov(ddof=0), biased, rtol=1e-12)
    np.testing.assert_allclose(stats.cov(), biased * 4 / 3, rtol=1e-12)
    y = FeatureStats(2)
    y.update(x[::-1] * 2 + 1)
    assert frechet_from_stats(stats, y, ddof=0) == pytest.approx(
        frechet_distance(mu, biased, 2 * mu + 1, 4 * biased), rel=1e-12)

    seen = []

    def spy_fd(a, b, ddof=1):
        seen.append(ddof)
        return frechet_from_stats(a, b, ddof=ddof)

    monkeypatch.setattr(fvd_mod, "frechet_from_stats", spy_fd)
    for protocol in ("stylegan-v", "harness"):
        m = FVD(features="i3d-torchscript", ref=str(real_folder), protocol=protocol)
        _generated(m)
        with pytest.warns(UserWarning):
            m.compute()
    assert seen == [0, 1]
