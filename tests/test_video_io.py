import numpy as np
import pytest
import torch

from harness.data.video_io import VideoReadError, frames_to_tensor, read_video, tensor_to_frames, write_video
from harness.data.world import make_clip


def test_lossless_round_trip(tmp_path, world):
    clip = make_clip(world, "eval", 1)
    path = write_video(tmp_path / "a.mp4", clip.frames, fps=world.fps)
    assert np.array_equal(read_video(path), clip.frames)
    assert not list(tmp_path.glob("*.partial"))


def test_lossy_mode_is_close(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 4, axis=0)
    back = read_video(write_video(tmp_path / "b.mp4", frames, lossless=False))
    assert back.shape == frames.shape


def test_tensor_round_trip(world):
    frames = make_clip(world, "eval", 2).frames
    x = frames_to_tensor(frames)
    assert x.shape == (3, world.num_frames, world.resolution, world.resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(tensor_to_frames(x), frames)
    assert tensor_to_frames(torch.full_like(x, 5.0)).max() == 255  # out-of-range values clamp


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.95])
def test_truncated_file_is_a_clear_error(tmp_path, world, cut):
    data = write_video(tmp_path / "a.mp4", make_clip(world, "eval", 1).frames).read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        read_video(bad)


def test_not_a_video_and_missing_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    with pytest.raises(VideoReadError, match="corrupt or truncated"):
        read_video(junk)
    with pytest.raises(VideoReadError, match="no such file"):
        read_video(tmp_path / "missing.mp4")


def test_bad_frames_rejected(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), dtype=np.float32))
