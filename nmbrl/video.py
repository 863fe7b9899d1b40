"""Videos of episodes: frames from a rendering environment, written as MP4 or GIF."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from torch import Tensor

VIDEO_FORMATS = ("mp4", "gif")


def write_video(frames: Tensor, path: Path, fps: int = 30) -> Path:
    """Write ``frames`` (``T x H x W x 3``, uint8) to ``path``; the suffix picks MP4 or GIF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = frames.cpu().numpy().astype(np.uint8)
    if path.suffix == ".gif":
        imageio.mimsave(path, list(array), duration=1000 / fps, loop=0)
    else:
        # macro_block_size=1: keep sizes that are not multiples of 16 as they are.
        imageio.mimsave(path, list(array), fps=fps, codec="libx264", macro_block_size=1, quality=7)
    return path
