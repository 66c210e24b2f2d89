import hashlib
import json
import warnings

import cv2
import numpy as np
import pytest

from harness.data.preferences import PairsError, import_pairs
from harness.data.video_io import write_video


def frames(seed: int, t: int = 4, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3), dtype=np.uint8)


def video(tmp_path, name: str, seed: int, **kw) -> np.ndarray:
    arr = frames(seed, **kw)
    write_video(tmp_path / name, arr, fps=8)
    return arr


def image(tmp_path, name: str, seed: int, size: int = 16) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_jsonl_pair_rows(tmp_path):
    v = {i: video(tmp_path, f"v{i}.mp4", i) for i in range(4)}
    img = image(tmp_path, "cond.png", 99)
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [
        {"caption": "a red ball", "chosen": "v0.mp4", "rejected": "v1.mp4", "chosen_score": 0.9,
         "rejected_score": 0.1},
        {"caption": "a blue cube", "chosen": str(tmp_path / "v2.mp4"), "rejected": "v3.mp4", "image": "cond.png"},
    ])
    pairs = import_pairs(path)
    assert len(pairs) == 2 and not pairs.latents
    assert pairs.chosen.shape == pairs.rejected.shape == (2, 4, 16, 16, 3)
    assert pairs.captions == ["a red ball", "a blue cube"]
    assert pairs.sources == ["pairs.jsonl:1", "pairs.jsonl:2"]
    np.testing.assert_array_equal(pairs.chosen[0], v[0])  # lossless round trip
    np.testing.assert_array_equal(pairs.rejected[1], v[3])
    np.testing.assert_array_equal(pairs.first_frames[0], pairs.chosen[0, 0])  # no image: chosen's first frame
    np.testing.assert_array_equal(pairs.first_frames[1], img)
    np.testing.assert_allclose(pairs.chosen_score, [0.9, np.nan])
    np.testing.assert_allclose(pairs.rejected_score, [0.1, np.nan])
    prov = pairs.provenance
    assert prov["source"] == "file" and prov["rows"] == 2 and prov["pairs"] == 2 and prov["skipped"] == []
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_labelled_rows(tmp_path):
    v = {i: video(tmp_path, f"v{i}.mp4", i) for i in range(4)}
    path = tmp_path / "labels.csv"
    path.write_text("caption,video_a,video_b,label,score_a,score_b\n"
                    "first,v0.mp4,v1.mp4,a,0.8,0.2\n"
                    "second,v2.mp4,v3.mp4,b,0.3,0.7\n")
    pairs = import_pairs(path, resolution=16, num_frames=4)
    assert pairs.sources == ["labels.csv:2", "labels.csv:3"]
    np.testing.assert_array_equal(pairs.chosen[0], v[0])
    np.testing.assert_array_equal(pairs.rejected[0], v[1])
    np.testing.assert_array_equal(pairs.chosen[1], v[3])  # label b: video_b is preferred
    np.testing.assert_array_equal(pairs.rejected[1], v[2])
    np.testing.assert_array_equal(pairs.first_frames[1], v[3][0])
    np.testing.assert_allclose(pairs.chosen_score, [0.8, 0.7])
    np.testing.assert_allclose(pairs.rejected_score, [0.2, 0.3])


def test_latent_rows(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(tmp_path / f"z{i}.npy", rng.standard_normal((4, 2, 4, 4)))
    image(tmp_path, "c0.png", 10)
    image(tmp_path, "c1.png", 11)
    path = tmp_path / "latents.jsonl"
    write_jsonl(path, [{"caption": "x", "chosen": "z0.npy", "rejected": "z1.npy", "image": "c0.png"},
                       {"caption": "y", "video_a": "z2.npy", "video_b": "z3.npy", "label": "b", "image": "c1.png"}])
    pairs = import_pairs(path)
    assert pairs.latents and pairs.chosen.dtype == np.float32
    assert pairs.chosen.shape == (2, 4, 2, 4, 4) and pairs.first_frames.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(pairs.chosen[1], np.load(tmp_path / "z3.npy").astype(np.float32))


def test_bad_rows_are_skipped_with_one_warning(tmp_path):
    for i in range(3):
        video(tmp_path, f"v{i}.mp4", i)
    video(tmp_path, "copy.mp4", 0)  # same content as v0.mp4
    video(tmp_path, "short.mp4", 5, t=2)
    (tmp_path / "broken.mp4").write_bytes((tmp_path / "v2.mp4").read_bytes()[:100])
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [
        {"caption": "good", "chosen": "v0.mp4", "rejected": "v1.mp4"},  # line 1
        {"caption": "gone", "chosen": "v0.mp4", "rejected": "missing.mp4"},  # 2
        {"caption": "same", "chosen": "v1.mp4", "rejected": "./v1.mp4"},  # 3
        {"caption": "dup", "chosen": "v0.mp4", "rejected": "copy.mp4"},  # 4
        {"caption": "shapes", "chosen": "v0.mp4", "rejected": "short.mp4"},  # 5
        {"caption": "truncated", "chosen": "v0.mp4", "rejected": "broken.mp4"},  # 6
        {"caption": "label", "video_a": "v0.mp4", "video_b": "v1.mp4", "label": "c"},  # 7
        {"chosen": "v0.mp4", "rejected": "v1.mp4"},  # 8
        "{not json",  # 9
        {"caption": "good too", "video_a": "v1.mp4", "video_b": "v2.mp4", "label": "a"},  # 10
    ])
    with pytest.warns(UserWarning) as record:
        pairs = import_pairs(path)
    assert len(record) == 1
    message = str(record[0].message)
    for line in range(2, 10):
        assert f"line {line}:" in message
    assert "line 1:" not in message and "line 10:" not in message
    assert "missing.mp4" in message and "broken.mp4" in message
    assert message.count("identical chosen and rejected") == 2
    assert pairs.captions == ["good", "good too"]
    assert pairs.sources == ["pairs.jsonl:1", "pairs.jsonl:10"]
    skipped = pairs.provenance["skipped"]
    assert [s["line"] for s in skipped] == list(range(2, 10))
    assert "caption" in skipped[6]["reason"]  # line 8: missing required column
    assert pairs.provenance["rows"] == 10 and pairs.provenance["pairs"] == 2


def test_mismatched_image_and_requested_size(tmp_path):
    for i in range(2):
        video(tmp_path, f"v{i}.mp4", i)
    image(tmp_path, "big.png", 3, size=32)
    path = tmp_path / "pairs.csv"
    path.write_text("caption,chosen,rejected,image\nok,v0.mp4,v1.mp4,\nbig,v0.mp4,v1.mp4,big.png\n")
    with pytest.warns(UserWarning, match="line 3:"):
        assert import_pairs(path).sources == ["pairs.csv:2"]
    with pytest.raises(PairsError, match="line 2:.*expected 8"):
        import_pairs(path, num_frames=8)
    with pytest.raises(PairsError, match="line 2:.*expected 32x32"):
        import_pairs(path, resolution=32)
    with pytest.raises(PairsError, match="line 2:.*expected 16x24"):  # a real preset's (height, width)
        import_pairs(path, resolution=(16, 24))


def test_only_bad_rows_refuses(tmp_path):
    video(tmp_path, "v0.mp4", 0)
    path = tmp_path / "pairs.csv"
    path.write_text("caption,chosen,rejected\nsame,v0.mp4,v0.mp4\ngone,v0.mp4,nope.mp4\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PairsError, match="refuses to start") as exc:
            import_pairs(path)
    assert "line 2:" in str(exc.value) and "line 3:" in str(exc.value)


def test_mixing_frames_and_latents_refuses(tmp_path):
    video(tmp_path, "v0.mp4", 0)
    video(tmp_path, "v1.mp4", 1)
    np.save(tmp_path / "z0.npy", np.zeros((2, 2), np.float32))
    np.save(tmp_path / "z1.npy", np.ones((2, 2), np.float32))
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [{"caption": "f", "chosen": "v0.mp4", "rejected": "v1.mp4"},
                       {"caption": "l", "chosen": "z0.npy", "rejected": "z1.npy", "image": "x.png"}])
    with pytest.raises(PairsError, match="latent"):
        import_pairs(path)


def test_empty_file_and_wrong_extension(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PairsError, match="empty"):
        import_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "header.csv").write_text("caption,chosen,rejected\n")
    with pytest.raises(PairsError, match="empty"):
        import_pairs(tmp_path / "header.csv")
    (tmp_path / "pairs.txt").write_text("x")
    with pytest.raises(PairsError, match=r"\.jsonl.*\.csv"):
        import_pairs(tmp_path / "pairs.txt")
