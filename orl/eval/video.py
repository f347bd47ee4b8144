"""Episode videos: MP4 files written through imageio-ffmpeg (the ``video`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from orl.io import atomic_path


def require_video_writer() -> None:
    """Fail early, with the fix, when the ffmpeg writer is not installed."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise ImportError("Recording videos needs imageio-ffmpeg: pip install 'orl[video]'") from None


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Write RGB ``frames`` (H, W, 3) uint8 as an H.264 MP4 at ``path`` (atomically)."""
    import imageio_ffmpeg

    path = Path(path)
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    height, width = np.asarray(frames[0]).shape[:2]
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", macro_block_size=1,
            output_params=["-f", "mp4"],  # the temporary name has no .mp4 suffix
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame, dtype=np.uint8))
        writer.close()
    return path
