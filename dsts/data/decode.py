"""Decoding with PyAV: whole ranges (for the cache) or only the needed frames, seeking near them.

Frame ``i`` of a video is its ``i``-th decoded frame in presentation order. Every failure (a missing,
empty, truncated or corrupt file, no video stream, no frame) is a one-line :class:`DataError` that
names the video file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from dsts.errors import DataError

# Seek only when the first needed frame lies this far in; short clips decode faster from the start.
SEEK_MIN_FRAMES = 48


class Video:
    """An open video file. ``num_frames`` is the container's frame count (counted by decoding when
    the container does not say). Use as a context manager."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        if not os.path.exists(self.path):
            raise DataError(f"{self.path}: no such video")
        if os.path.isdir(self.path):
            raise DataError(f"{self.path}: is a folder, not a video")
        if os.path.getsize(self.path) == 0:
            raise DataError(f"{self.path}: empty video file")
        self._container: Any = None
        try:
            self._container = av.open(self.path, mode="r")
            if not self._container.streams.video:
                raise DataError(f"{self.path}: no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "SLICE"
            self._stream.thread_count = 1
            declared = int(self._stream.frames or 0)
        except DataError:
            self.close()
            raise
        except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
            self.close()
            raise DataError(f"{self.path}: cannot open video ({_reason(exc)})") from None
        self._started = False
        # one converter for every frame: frame.to_ndarray(format=...) builds a new one per frame,
        # which costs more than decoding a small frame (tests/benchmarks/test_bench_data.py)
        self._rgb = VideoReformatter()
        self._frames_cache: list[np.ndarray] | None = None
        if declared > 0:
            self.num_frames = declared
        else:  # the container does not know: decode everything once
            decoded = self._decode_from_start(None)
            self._frames_cache = [decoded[i] for i in range(len(decoded))]
            self.num_frames = len(self._frames_cache)
        if self.num_frames == 0:
            self.close()
            raise DataError(f"{self.path}: the video has no frames")

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError):
                pass
            self._container = None

    def _rate(self) -> Fraction | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return Fraction(rate) if rate else None

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        return self._rgb.reformat(frame, format="rgb24").to_ndarray()

    def _decode_from_start(self, stop: int | None, need: set[int] | None = None) -> dict[int, np.ndarray]:
        """Frames 0 .. stop-1 (all when ``stop`` is None), decoded in order; only those in ``need``
        (all when None) are converted to RGB arrays."""
        out: dict[int, np.ndarray] = {}
        try:
            if self._started:
                self._container.seek(0, stream=self._stream)
            self._started = True
            for index, frame in enumerate(self._container.decode(self._stream)):
                if need is None or index in need:
                    out[index] = self._to_rgb(frame)
                if stop is not None and index + 1 >= stop:
                    break
        except (av.error.FFmpegError, OSError, ValueError, MemoryError) as exc:
            raise DataError(f"{self.path}: cannot decode video ({_reason(exc)})") from None
        return out

    def read_range(self, start: int, end: int) -> np.ndarray:
        """Frames ``start <= i < end`` (``end`` clamped to ``num_frames``) as ``(N, H, W, 3)`` uint8."""
        end = min(end, self.num_frames)
        if not 0 <= start < end:
            raise DataError(
                f"{self.path}: frame range [{start}, {end}) is empty (the video has {self.num_frames} frames)"
            )
        return self.read(range(start, end))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """The frames at ``indices`` (any order, repeats allowed) as ``(len(indices), H, W, 3)`` uint8.
        Seeks to the keyframe before the first needed frame when that lies far in."""
        wanted = sorted(set(int(i) for i in indices))
        if not wanted:
            raise DataError(f"{self.path}: no frame requested")
        if wanted[0] < 0 or wanted[-1] >= self.num_frames:
            raise DataError(
                f"{self.path}: frame {wanted[-1] if wanted[0] >= 0 else wanted[0]} is outside the video's {self.num_frames} frames"
            )
        if self._frames_cache is not None:
            got = {i: self._frames_cache[i] for i in wanted}
        else:
            got = self._decode_wanted(wanted)
        missing = [i for i in wanted if i not in got]
        if missing:
            raise DataError(
                f"{self.path}: truncated or corrupt video (frame {missing[0]} of {self.num_frames} could not be decoded)"
            )
        return np.stack([got[int(i)] for i in indices])

    def _decode_wanted(self, wanted: list[int]) -> dict[int, np.ndarray]:
        first, last = wanted[0], wanted[-1]
        need = set(wanted)
        rate = self._rate()
        tb = self._stream.time_base
        if first >= SEEK_MIN_FRAMES and rate and tb:
            got = self._decode_seeking(need, first, last, rate, Fraction(tb))
            if got is not None:
                return got
        return self._decode_from_start(last + 1, need)

    def _decode_seeking(
        self, need: set[int], first: int, last: int, rate: Fraction, tb: Fraction
    ) -> dict[int, np.ndarray] | None:
        """Seek to the keyframe at or before ``first``; frame numbers come from timestamps. None when
        the seek overshot or the timestamps are unusable (the caller decodes from the start)."""
        start = self._stream.start_time or 0
        target = start + int(first / rate / tb)
        got: dict[int, np.ndarray] = {}
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            self._started = True
            for frame in self._container.decode(self._stream):
                if frame.pts is None:
                    return None
                index = int(round((frame.pts - start) * tb * rate))
                if not got and index > first:
                    return None
                if index in need:
                    got[index] = self._to_rgb(frame)
                if index >= last:
                    break
        except (av.error.FFmpegError, OSError, ValueError, MemoryError) as exc:
            raise DataError(f"{self.path}: cannot decode video ({_reason(exc)})") from None
        return got


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def probe(path: str) -> int:
    """Open ``path`` and decode its first frame; return its frame count (DataError if unreadable)."""
    with Video(path) as video:
        video.read([0])
        return video.num_frames


def read_video(path: str, start: int = 0, end: int | None = None) -> np.ndarray:
    """Frames ``[start, end)`` of ``path`` (all from ``start`` when ``end`` is None), uint8 ``(N, H, W, 3)``."""
    with Video(path) as video:
        return video.read_range(start, video.num_frames if end is None else end)
