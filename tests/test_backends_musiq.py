"""MUSIQ-SPAQ backend: upstream (pyiqa) checkpoint layout, multi-scale tokens, VBench resize, scoring."""

import numpy as np
import pytest
import torch

import harness.scorers.backends.real.musiq as musiq  # registers the musiq_spaq random initialiser
from harness.scorers.backends.real.common import read_state_dict
from harness.weights import WeightsError, init_random, resolve


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    init_random(["musiq_spaq"], root=root, log=lambda _: None)
    return root


@pytest.fixture(scope="module")
def scorer(cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_WEIGHTS", str(cache))
        return musiq.MusiqScorer()


def test_random_file_has_upstream_layout_and_loads_strictly(cache, scorer):
    assert scorer.identity == "musiq-spaq/random-weights"
    raw = torch.load(cache / "musiq/musiq_spaq_ckpt-358bb6af.pth", weights_only=True)
    assert "conv_root.weight" in raw  # flat: pyiqa loads the file without a wrapper key
    sd = read_state_dict(resolve("musiq_spaq", root=cache))
    assert set(sd) == set(scorer.model.state_dict())
    block = "transformer_encoder.transformer.encoderblock_13."
    expected = {
        "conv_root.weight": (64, 3, 7, 7),
        "gn_root.bias": (64,),
        "block1.conv2.weight": (64, 64, 3, 3),
        "block1.conv_proj.weight": (256, 64, 1, 1),
        "block1.gn3.weight": (256,),
        "embedding.weight": (384, 256 * 8 * 8),
        "transformer_encoder.cls": (1, 1, 384),
        "transformer_encoder.posembed_input.position_emb": (1, 100, 384),
        "transformer_encoder.scaleembed_input.scale_emb": (3, 384),
        "transformer_encoder.encoder_norm.weight": (384,),
        block + "attention.query.weight": (384, 384),
        block + "attention.out.bias": (384,),
        block + "mlp.fc1.weight": (1152, 384),
        block + "norm2.bias": (384,),
        "head.weight": (1, 384),
        "head.bias": (1,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # stem 15, embedding 2, cls/position/scale 3, encoder_norm 2, 14 blocks of 16, head 2
    assert not any("encoderblock_14" in k for k in sd) and len(sd) == 15 + 2 + 3 + 2 + 14 * 16 + 2


def test_multiscale_tokens_by_hand():
    x = torch.rand(2, 3, 64, 96) * 2 - 1  # H 64, W 96
    tokens = musiq.multiscale_patches(x)
    # 224: 149x224 -> 5x7 patches padded to 49; 384: 256x384 -> 8x12 padded to 144; native 2x3 = 6
    assert tokens.shape == (2, 49 + 144 + 6, 3 * 32 * 32 + 3)
    pos, scale, mask = tokens[0, :, -3], tokens[0, :, -2], tokens[0, :, -1]
    grid = [r * 10 + c for r in (0, 2, 4, 6, 8) for c in (0, 1, 2, 4, 5, 7, 8)]
    grid += [r * 10 + c for r in (0, 1, 2, 3, 5, 6, 7, 8) for c in (0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9)]
    grid += [0, 3, 6, 50, 53, 56]
    valid = torch.cat([torch.arange(35), 49 + torch.arange(96), 193 + torch.arange(6)])
    assert pos[valid].tolist() == grid
    assert scale[valid].tolist() == [0] * 35 + [1] * 96 + [2] * 6
    assert mask.tolist() == [1] * 35 + [0] * 14 + [1] * 96 + [0] * 48 + [1] * 6
    padded = mask == 0
    assert (pos[padded] == 0).all() and (scale[padded] == 0).all() and (tokens[0, padded, :-3] == 0).all()
    # native patch (row 1, col 2) holds the pixels in (channel, row, col) order
    assert torch.equal(tokens[1, 193 + 5, :-3].reshape(3, 32, 32), x[1, :, 32:64, 64:96])
    assert torch.equal(tokens, torch.cat([musiq.multiscale_patches(x[i:i + 1]) for i in range(2)]))


def test_native_patches_use_tf_same_padding():
    x = torch.rand(1, 3, 40, 40) + 0.5
    native = musiq.multiscale_patches(x)[0, -4:, :-3].reshape(4, 3, 32, 32)  # 2x2 patches, 24 px padding
    assert native[0, :, :12].abs().sum() == 0 and native[0, :, :, :12].abs().sum() == 0
    assert torch.equal(native[0, :, 12:, 12:], x[0, :, :20, :20])
    assert torch.equal(native[3, :, :20, :20], x[0, :, 20:, 20:]) and native[3, :, 20:].abs().sum() == 0


def test_vbench_longer_side_512_rule():
    tall = torch.randint(0, 256, (2, 3, 600, 300)).float()
    out = musiq.vbench_resize(tall)
    assert out.shape == (2, 3, 512, 256)
    # upstream's load_video gives float32 frames, which torchvision does not round after resizing
    assert not torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
    wide = torch.randint(0, 256, (1, 3, 300, 600)).float()
    assert musiq.vbench_resize(wide).shape == (1, 3, 256, 512)
    small = torch.randint(0, 256, (1, 3, 240, 320)).float()
    assert musiq.vbench_resize(small) is small
    assert musiq.vbench_resize(torch.zeros(1, 3, 512, 100)).shape == (1, 3, 512, 100)


def test_scores_finite_input_dependent_and_batch_invariant(scorer):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    frames[1] = 128
    frames[2] = frames[0] // 4
    scores = scorer.score_frames(frames)
    assert scores.shape == (3,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert len(np.unique(scores.round(6))) == 3
    scorer.batch = 1
    try:
        one_by_one = scorer.score_frames(frames)
    finally:
        scorer.batch = 16
    np.testing.assert_allclose(scores, one_by_one, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        scorer.score_frames(frames.astype(np.float32))


def test_missing_weights_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        musiq.MusiqScorer()
    assert "musiq/musiq_spaq_ckpt-358bb6af.pth" in str(err.value)
    assert "harness weights prefetch musiq_spaq" in str(err.value)
