"""PyAV decoding: exact frames, seeking, ranges, and every unreadable video."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsts.data import DataError, Video, probe, read_video
from dsts.data import decode as decode_module
from dsts.data.dives import class_specs
from dsts.data.generate import split_entries
from dsts.data.render import NUISANCE, render_clip
from tests.data.conftest import numbered_frames, write_lossless


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """A lossless 100-frame video (keyframe every 12) whose frame i is filled with 3 * i + channel."""
    path = tmp_path_factory.mktemp("video") / "numbered.mp4"
    frames = numbered_frames(100)
    write_lossless(path, frames)
    return path, frames


def test_decodes_exact_frames(numbered):
    path, frames = numbered
    with Video(str(path)) as video:
        assert video.num_frames == 100
        got = video.read_range(0, 100)
    assert got.dtype == np.uint8 and got.shape == frames.shape
    np.testing.assert_array_equal(got, frames)
    assert probe(str(path)) == 100


@pytest.mark.parametrize("indices", [[60, 61, 99], [70, 70, 50, 98], [0, 5, 5, 9], [48], [97, 98, 99]])
def test_read_picks_frames_seeking_or_not(numbered, indices):
    """``read`` returns the requested frames in the requested order, repeats included, whether it
    seeks (first frame past SEEK_MIN_FRAMES) or decodes from the start."""
    path, frames = numbered
    with Video(str(path)) as video:
        got = video.read(indices)
    np.testing.assert_array_equal(got, frames[indices])


def test_seeking_matches_sequential_decoding(numbered, monkeypatch):
    path, frames = numbered
    results = []
    original = Video._decode_seeking

    def spy(self, *args):
        results.append(original(self, *args))
        return results[-1]

    monkeypatch.setattr(Video, "_decode_seeking", spy)
    with Video(str(path)) as video:
        seeking = video.read([75, 80, 90])
    assert len(results) == 1 and sorted(results[0]) == [75, 80, 90]  # served by the seek itself
    monkeypatch.setattr(decode_module, "SEEK_MIN_FRAMES", 10**9)
    with Video(str(path)) as video:
        sequential = video.read([75, 80, 90])
    np.testing.assert_array_equal(seeking, sequential)
    np.testing.assert_array_equal(seeking, frames[[75, 80, 90]])


def test_one_video_serves_several_reads(numbered):
    path, frames = numbered
    with Video(str(path)) as video:
        np.testing.assert_array_equal(video.read([90]), frames[[90]])
        np.testing.assert_array_equal(video.read([3, 4]), frames[[3, 4]])
        np.testing.assert_array_equal(video.read([60]), frames[[60]])


def test_read_video_range_is_half_open_and_clamped(numbered):
    path, frames = numbered
    np.testing.assert_array_equal(read_video(str(path), 10, 14), frames[10:14])
    np.testing.assert_array_equal(read_video(str(path), 95, 500), frames[95:])
    np.testing.assert_array_equal(read_video(str(path), 97), frames[97:])
    with pytest.raises(DataError, match="is empty"):
        read_video(str(path), 100, 120)


def test_out_of_range_request(numbered):
    path, _ = numbered
    with Video(str(path)) as video, pytest.raises(DataError, match="outside the video's 100 frames"):
        video.read([100])


def test_generated_clip_round_trip(tiny_root):
    """A generated (lossy) clip decodes to its rendered frames within the codec's error."""
    specs = class_specs(4)
    name, spec, seed = split_entries("train", specs, 3, 0)[0]
    rendered = render_clip(spec, seed, 8, 32)
    decoded = read_video(str(tiny_root / "rgb" / f"{name}.mp4"))
    assert decoded.shape == rendered.shape
    error = np.abs(decoded.astype(np.int16) - rendered.astype(np.int16)).mean()
    other = render_clip(spec, (*seed, 1), 8, 32)  # the same class from another seed
    # mostly the sensor noise, which the codec smooths away: at most its mean absolute value (sd times
    # sqrt(2 / pi)) at the largest sd, plus a little for the codec on the clean picture
    assert error < math.sqrt(2 / math.pi) * NUISANCE["noise"][1] + 2.0
    assert np.abs(decoded.astype(np.int16) - other.astype(np.int16)).mean() > 2 * error


# --- unreadable videos: one line naming the video file ------------------------------------------


def broken(kind: str, good, folder):
    data = good.read_bytes()
    path = folder / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path.write_bytes(bytes(b ^ 0x5A for b in data[:64]) + data[64:])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("not a video\n")
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "corrupt", "garbage", "text"])
def test_unreadable_video(kind, numbered, tmp_path):
    path = broken(kind, numbered[0], tmp_path)
    with pytest.raises(DataError) as info:
        read_video(str(path))
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_missing_video_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such video"):
        Video(str(tmp_path / "nope.mp4"))
    with pytest.raises(DataError, match="is a folder"):
        Video(str(tmp_path))


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(DataError, match="no video stream"):
        Video(str(path))
