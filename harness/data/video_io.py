"""Video files <-> frame arrays, with errors that say what is wrong and what to do.

Frames are uint8 arrays (T, H, W, 3), RGB. ``write_video`` stores lossless RGB
H.264 (libx264rgb, crf 0) by default, because the tiny world's 16 px sprites
would not survive 4:2:0 chroma subsampling; ``lossless=False`` writes ordinary
yuv420p H.264 for sharing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


class VideoReadError(RuntimeError):
    """A video file could not be decoded completely."""


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, lossless: bool = True) -> Path:
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    # faststart puts the index first, so a file cut short still declares its frame count.
    with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        if lossless:
            stream = container.add_stream("libx264rgb", rate=fps)
            stream.pix_fmt = "rgb24"
            stream.options = {"crf": "0", "preset": "veryfast"}
        else:
            stream = container.add_stream("libx264", rate=fps)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)  # a crash never leaves a half-written file under the final name
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame; raise VideoReadError for missing, unreadable or truncated files."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream (not a video, or its header is truncated)")
            stream = container.streams.video[0]
            declared = stream.frames
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except VideoReadError:
        raise
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        raise VideoReadError(
            f"{path}: cannot decode ({exc.__class__.__name__}: {exc}); the file is corrupt or "
            "truncated; re-export or re-download it"
        ) from exc
    if not frames:
        raise VideoReadError(f"{path}: no decodable frames (empty or truncated file)")
    if declared and len(frames) < declared:
        raise VideoReadError(
            f"{path}: truncated: the container declares {declared} frames but only {len(frames)} "
            "decode; re-export the file"
        )
    return np.stack(frames)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1], the model's layout."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return x.permute(3, 0, 1, 2).contiguous()


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3), rounding to nearest."""
    x = video.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()
