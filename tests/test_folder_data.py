import json
import logging
import os

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from harness.data.batches import ClipBatch
from harness.data.folder import (
    ClipRef,
    RealVideoDataset,
    VideoDataConfig,
    VideoDataError,
    assign_split,
    resize_center_crop,
)
from harness.data.video_io import write_video


def _frames(n: int, h: int = 30, w: int = 40, offset: int = 0) -> np.ndarray:
    """Red channel = 10 * frame index everywhere (survives resizing); green = a moving square."""
    out = np.zeros((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        out[i, ..., 0] = (10 * i + offset) % 256
        x = (2 * i) % (w - 6)
        out[i, 10:16, x:x + 6, 1] = 255
    return out


def _index_of(frame: np.ndarray, offset: int = 0) -> int:
    return int(round((float(frame[..., 0].mean()) - offset) / 10))


def _cfg(tmp_path, **kw) -> VideoDataConfig:
    base = dict(kind="folder", root=str(tmp_path / "data"), captions="captions.csv", num_frames=4, fps=8,
                height=16, width=16, cache_dir=str(tmp_path / "cache"))
    return VideoDataConfig(**{**base, **kw})


def _write_csv(path, rows, header=("video", "caption")):
    lines = [",".join(header)] + [f"{v},{c}" for v, c in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "data"
    for name, n in [("a.mp4", 24), ("b.mp4", 24), ("sub/c.mp4", 48)]:
        write_video(data / name, _frames(n), fps=24)
    _write_csv(data / "captions.csv", [("a.mp4", "a red square"), ("b.mp4", "a blue square"),
                                       ("sub/c.mp4", "a long clip")])
    return data


def test_resample_picks_every_third_frame_and_crops(tmp_path, folder):
    ds = RealVideoDataset(_cfg(tmp_path, splits={"all": 1.0}))
    frames = ds.video_frames("a.mp4")
    assert frames.shape == (8, 16, 16, 3) and frames.dtype == np.uint8
    assert [_index_of(f) for f in frames] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert len(ds.video_frames("sub/c.mp4")) == 16
    # upsampling repeats the nearest frame; 24 -> 24 fps keeps every frame
    same = RealVideoDataset(_cfg(tmp_path, fps=24, splits={"all": 1.0}, disk_cache=False))
    assert [_index_of(f) for f in same.video_frames("a.mp4")] == list(range(24))


def test_resize_center_crop_shapes():
    img = np.zeros((30, 40, 3), dtype=np.uint8)
    img[:, 20:] = 200  # right half bright
    out = resize_center_crop(img, 16, 16)
    assert out.shape == (16, 16, 3)
    assert out[:, 0].max() == 0 and out[:, -1].min() == 200  # centre crop keeps the middle columns
    assert resize_center_crop(img, 60, 20).shape == (60, 20, 3)  # upscale, crop width
    assert resize_center_crop(img, 30, 40).shape == (30, 40, 3)


@pytest.mark.parametrize("stride,expected", [(None, 2 + 2 + 4), (2, 3 + 3 + 7), (3, 2 + 2 + 5)])
def test_segmentation_count_is_exact(tmp_path, folder, stride, expected):
    ds = RealVideoDataset(_cfg(tmp_path, clip_stride=stride, splits={"all": 1.0}))
    # a.mp4 / b.mp4 -> 8 frames at 8 fps, c.mp4 -> 16; clips of 4: (N - 4) // stride + 1
    assert len(ds.split("all")) == expected
    starts = [c.start for c in ds.split("all") if c.video_id == "sub/c.mp4"]
    assert starts == list(range(0, 16 - 4 + 1, stride or 4))


def test_jsonl_captions_and_aliases(tmp_path, folder):
    (folder / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"path": "a.mp4", "prompt": "first"}, {"path": "b.mp4", "prompt": "second"},
        {"path": "c.mp4", "prompt": "third"}]) + "\n")  # bare file name resolves to sub/c.mp4
    ds = RealVideoDataset(_cfg(tmp_path, captions="caps.jsonl", splits={"all": 1.0}))
    assert {c.video_id: c.caption for c in ds.split("all")} == {"a.mp4": "first", "b.mp4": "second",
                                                                "sub/c.mp4": "third"}
    _write_csv(folder / "alias.csv", [("a.mp4", "x"), ("b.mp4", "y"), ("sub/c.mp4", "z")], header=("file", "text"))
    ds = RealVideoDataset(_cfg(tmp_path, captions=str(folder / "alias.csv"), splits={"all": 1.0}))
    assert ds.split("all")[0].caption == "x"


def test_missing_caption_and_missing_file_are_errors(tmp_path, folder):
    _write_csv(folder / "partial.csv", [("a.mp4", "x"), ("sub/c.mp4", "z")])
    with pytest.raises(VideoDataError, match=r"b\.mp4.*partial\.csv"):
        RealVideoDataset(_cfg(tmp_path, captions="partial.csv"))
    ds = RealVideoDataset(_cfg(tmp_path, captions="partial.csv", default_caption="a video", splits={"all": 1.0}))
    assert {c.video_id: c.caption for c in ds.split("all")}["b.mp4"] == "a video"
    _write_csv(folder / "extra.csv", [("a.mp4", "x"), ("b.mp4", "y"), ("sub/c.mp4", "z"), ("gone.mp4", "w")])
    with pytest.raises(VideoDataError, match=r"extra\.csv.*gone\.mp4"):
        RealVideoDataset(_cfg(tmp_path, captions="extra.csv"))


def test_corrupt_video_is_named(tmp_path, folder):
    (folder / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    _write_csv(folder / "captions.csv", [("a.mp4", "x"), ("b.mp4", "y"), ("sub/c.mp4", "z"), ("bad.mp4", "w")])
    with pytest.raises(VideoDataError, match=r"bad\.mp4.*ffmpeg"):
        RealVideoDataset(_cfg(tmp_path))
    data = (folder / "a.mp4").read_bytes()
    (folder / "bad.mp4").write_bytes(data[: len(data) // 2])  # truncated, not merely short
    with pytest.raises(VideoDataError, match=r"bad\.mp4: truncated"):
        RealVideoDataset(_cfg(tmp_path))


def test_short_video_is_skipped_and_reported(tmp_path, folder, caplog):
    write_video(folder / "short.mp4", _frames(9), fps=24)  # 3 frames at 8 fps < 4
    _write_csv(folder / "captions.csv", [("a.mp4", "x"), ("b.mp4", "y"), ("sub/c.mp4", "z"), ("short.mp4", "s")])
    with caplog.at_level(logging.WARNING, logger="harness.data.folder"):
        ds = RealVideoDataset(_cfg(tmp_path, splits={"all": 1.0}))
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("short.mp4") and "3 frames" in ds.skipped[0][1]
    assert "short.mp4" in caplog.text
    assert all(c.video_id != "short.mp4" for c in ds.split("all"))
    summary = ds.check()
    assert summary["videos"] == 3 and summary["clips"] == {"all": 8}
    assert summary["skipped"][0]["file"].endswith("short.mp4")


def test_splits_deterministic_and_disjoint_by_video(tmp_path):
    data = tmp_path / "data"
    rows = []
    for i in range(8):
        write_video(data / f"v{i}.mp4", _frames(24), fps=24)
        rows.append((f"v{i}.mp4", f"video {i}"))
    _write_csv(data / "captions.csv", rows)
    cfg = _cfg(tmp_path, splits={"finetune": 0.5, "eval": 0.5}, clip_stride=2)
    a, b = RealVideoDataset(cfg), RealVideoDataset(cfg)
    assert a.index.rows() == b.index.rows()
    ft = {c.video_id for c in a.split("finetune")}
    ev = {c.video_id for c in a.split("eval")}
    assert ft and ev and not ft & ev and ft | ev == {f"v{i}.mp4" for i in range(8)}
    assert len(a.split("finetune")) + len(a.split("eval")) == 8 * 3
    assert all(assign_split(v, cfg.splits, cfg.seed) == "finetune" for v in ft)
    other = [assign_split(f"v{i}.mp4", cfg.splits, 1) for i in range(8)]
    assert other != [assign_split(f"v{i}.mp4", cfg.splits, 0) for i in range(8)]  # the seed re-splits
    capped = RealVideoDataset(cfg.model_copy(update={"max_clips": 2}))
    assert all(n <= 2 for n in capped.index.counts().values())
    with pytest.raises(KeyError, match="finetune"):
        a.split("train")
    with pytest.raises(ValidationError):
        _cfg(tmp_path, splits={"a": 0.5, "b": 0.2})
    with pytest.raises(ValidationError):
        _cfg(tmp_path, unknown_field=1)


def test_batch_is_a_clip_batch(tmp_path, folder):
    ds = RealVideoDataset(_cfg(tmp_path, splits={"all": 1.0}))
    refs = ds.split("all")
    batch = ds.batch("all", [0, 1, len(refs) - 1])
    assert isinstance(batch, ClipBatch)
    assert batch.videos.shape == (3, 3, 4, 16, 16) and batch.frames.shape == (3, 4, 16, 16, 3)
    assert batch.videos.min() >= -1 and batch.videos.max() <= 1
    assert isinstance(batch.specs[0], ClipRef) and batch.captions == [r.caption for r in batch.specs]
    assert [_index_of(f) for f in batch.frames[1]] == [12, 15, 18, 21]  # a.mp4, second clip
    assert ds.stats["decoded"] == 2  # a.mp4 once for two clips, sub/c.mp4 once


def test_disk_cache_identical_and_invalidated(tmp_path, folder):
    cfg = _cfg(tmp_path, splits={"all": 1.0})
    first = RealVideoDataset(cfg)
    frames = first.video_frames("a.mp4")
    path = first.cache_path("a.mp4")
    assert path is not None and path.is_file() and first.stats["decoded"] == 1
    second = RealVideoDataset(cfg)
    again = second.video_frames("a.mp4")
    assert second.stats == {"decoded": 0, "disk_hits": 1, "memory_hits": 0}
    assert np.array_equal(frames, again)
    second.video_frames("a.mp4")
    assert second.stats["memory_hits"] == 1
    # rewrite the file with different content: new key, re-decoded, old entry removed
    write_video(folder / "a.mp4", _frames(24, offset=5), fps=24)
    st = (folder / "a.mp4").stat()
    os.utime(folder / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = RealVideoDataset(cfg)
    new = third.video_frames("a.mp4")
    assert third.stats["decoded"] == 1 and third.cache_path("a.mp4") != path and not path.exists()
    assert [_index_of(f, offset=5) for f in new] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert not np.array_equal(new, frames)


def _davis(tmp_path, sequences: dict[str, int], masks: bool = False):
    root = tmp_path / "davis"
    for name, n in sequences.items():
        d = root / "JPEGImages" / "480p" / name
        d.mkdir(parents=True)
        for i, frame in enumerate(_frames(n, h=24, w=32)):
            bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(d / f"{i:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
            if masks:
                a = root / "Annotations" / "480p" / name
                a.mkdir(parents=True, exist_ok=True)
                m = np.zeros((24, 32), np.uint8)
                m[8:16, 8:16] = 1
                cv2.imwrite(str(a / f"{i:05d}.png"), m)
    return root


def test_davis_layout(tmp_path):
    root = _davis(tmp_path, {"bmx-trees": 30, "bear": 12, "tiny": 6}, masks=True)
    cfg = VideoDataConfig(kind="davis", root=str(root), num_frames=3, fps=8, height=16, width=16,
                          splits={"all": 1.0}, cache_dir=str(tmp_path / "cache"))
    ds = RealVideoDataset(cfg)
    clips = ds.split("all")
    # 24 fps -> 8 fps: 30 frames -> 10, 12 -> 4, 6 -> 2 (skipped); clips of 3 -> 3 + 1
    assert len(clips) == 4 and [s[0].endswith("tiny") for s in ds.skipped] == [True]
    assert {c.caption for c in clips} == {"bmx trees", "bear"}
    batch = ds.batch("all", range(4))
    assert batch.videos.shape == (4, 3, 3, 16, 16)
    second = [c for c in clips if c.video_id == "bmx-trees"][1]
    assert [_index_of(f) for f in ds.clip(second)] == [9, 12, 15]
    m = ds.masks(second)
    assert m is not None and m.shape == (3, 16, 16) and set(np.unique(m)) <= {0, 1} and m.any()
    assert ds.check()["videos"] == 2


def test_davis_captions_file_and_unreadable_frame(tmp_path):
    root = _davis(tmp_path, {"bear": 12})
    _write_csv(root / "caps.csv", [("bear", "a bear walks")])
    cfg = VideoDataConfig(kind="davis", root=str(root), captions="caps.csv", num_frames=4, fps=8, height=16,
                          width=16, splits={"all": 1.0}, disk_cache=False)
    ds = RealVideoDataset(cfg)
    assert ds.split("all")[0].caption == "a bear walks"
    (root / "JPEGImages" / "480p" / "bear" / "00003.jpg").write_bytes(b"junk")
    with pytest.raises(VideoDataError, match="00003.jpg"):
        RealVideoDataset(cfg).batch("all", [0])
    assert "00003.jpg" in RealVideoDataset(cfg).check(decode=True)["errors"][0]["error"]
