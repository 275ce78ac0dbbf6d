"""`lwm_plugin.vision.media`: LWM's 256x256 frames from images and videos, sampling, rejects, writers.

References are hand-computed numpy arrays and the files' own generated pixels (made here with Pillow and
PyAV), never our reader's output.
"""

import io
import pickle

import av
import numpy as np
import pytest
from PIL import Image

from lwm_plugin.vision import media


def _unit(u8):
  return u8.astype(np.float32) / 127.5 - 1


def _write_video(path, levels, rate, codec="libx264", size=(48, 64), fmt=None):
  """A video whose frame k is a solid grey of levels[k] (so each frame says its index)."""
  with av.open(str(path), "w", format=fmt) as c:
    s = c.add_stream(codec, rate=rate)
    s.height, s.width = size
    s.pix_fmt = "yuv420p"
    for v in levels:
      c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((*size, 3), v, np.uint8), format="rgb24")))
    c.mux(s.encode(None))
  return path


def _levels(frames):
  return [int(round(x)) for x in (frames[:, 10, 10, 0] + 1) * 127.5]


def test_a_portrait_image_already_256_wide_is_cropped_at_its_centre_exactly(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (400, 256, 3), np.uint8)  # H 400, W 256
  Image.fromarray(rgb).save(tmp_path / "p.png")
  frames = media.read_image(str(tmp_path / "p.png"))
  assert frames.shape == (1, 256, 256, 3) and frames.dtype == np.float32
  np.testing.assert_array_equal(frames[0], _unit(rgb[72:328]))  # (400 - 256) / 2 = 72 rows off the top


def test_a_wide_image_is_resized_on_its_shorter_side_then_centre_cropped(tmp_path):
  # 1024 x 512, red left half, blue right half -> 512 x 256 -> columns 128 .. 384: the edge lands on column 128.
  rgb = np.zeros((512, 1024, 3), np.uint8)
  rgb[:, :512, 0] = 255
  rgb[:, 512:, 2] = 255
  Image.fromarray(rgb).save(tmp_path / "w.png")
  frame = media.read_image(str(tmp_path / "w.png"))[0]
  expected = np.full((256, 256, 3), -1.0, np.float32)
  expected[:, :128, 0] = 1.0
  expected[:, 128:, 2] = 1.0
  keep = np.r_[0:124, 132:256]  # away from the resampled edge
  np.testing.assert_allclose(frame[:, keep], expected[:, keep], atol=1 / 127.5)
  assert frame[:, 120:136, 0].max() > 0.9 and frame[:, 120:136, 2].max() > 0.9  # the edge is where expected


@pytest.mark.parametrize("fmt,kwargs,atol", [("PNG", {}, 0.0), ("WEBP", {"lossless": True}, 0.0),
                                             ("JPEG", {"quality": 95}, 6 / 127.5)])
def test_png_webp_and_jpeg_read_as_rgb(tmp_path, fmt, kwargs, atol):
  y, x = np.mgrid[0:256, 0:256]
  rgb = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)  # smooth: JPEG keeps it close
  path = tmp_path / f"i.{fmt.lower()}"
  Image.fromarray(rgb).save(path, format=fmt, **kwargs)
  np.testing.assert_allclose(media.read_media(str(path))[0], _unit(rgb), atol=atol)


def test_an_rgba_or_grey_image_becomes_rgb(tmp_path):
  Image.fromarray(np.full((256, 256), 40, np.uint8), "L").save(tmp_path / "g.png")
  np.testing.assert_array_equal(media.read_image(str(tmp_path / "g.png")), np.full((1, 256, 256, 3), _unit(np.uint8(40))))


def test_videos_are_sampled_at_4_fps_and_subsampled_as_lwm(tmp_path):
  levels = [10 * k for k in range(25)]  # 2.5 s at 10 fps
  path = _write_video(tmp_path / "v.mp4", levels, rate=10)
  frames = media.read_video(str(path))
  assert frames.shape == (10, 256, 256, 3)
  # instants 0, .25, .5, ... s: the first frame at or after each (frame k is at k / 10 s)
  expected = [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]
  assert np.allclose(_levels(frames), [levels[k] for k in expected], atol=2)
  sub = media.read_video(str(path), max_frames=4)
  picks = np.linspace(0, 9, 4).astype(int)  # LWM: linspace over the sampled frames
  assert np.allclose(_levels(sub), [levels[expected[i]] for i in picks], atol=2)
  assert np.allclose(_levels(media.read_video(str(path), fps=10)), levels, atol=2)


def test_webm_and_bytes_input(tmp_path):
  path = _write_video(tmp_path / "v.webm", [0, 60, 120, 180], rate=4, codec="libvpx")
  frames = media.read_media("clip.webm", path.read_bytes())
  assert frames.shape == (4, 256, 256, 3) and np.allclose(_levels(frames), [0, 60, 120, 180], atol=3)


def _expect(reason, source, data):
  with pytest.raises(media.MediaError) as info:
    media.read_media(source, data)
  assert info.value.reason == reason, info.value
  assert str(info.value).startswith(f"{source}: {reason}: ")
  assert pickle.loads(pickle.dumps(info.value)).reason == reason  # travels between Beam workers
  return info.value


def test_unreadable_inputs_are_typed_errors_with_a_reason(tmp_path):
  _expect("corrupt", "x.png", b"\x89PNG not really")
  _expect("corrupt", "x.jpg", b"")
  good = _write_video(tmp_path / "v.mp4", [0, 50, 100], rate=4).read_bytes()
  _expect("corrupt", "x.mp4", b"\x00" * 1000)
  _expect("corrupt", "x.mp4", good[:len(good) // 3])
  mdat, moov = good.find(b"mdat"), good.find(b"moov")
  blank = good[:mdat + 4] + b"\x00" * (moov - 4 - mdat - 4) + good[moov - 4:]  # container fine, frames garbage
  assert "0 decoded frames" in str(_expect("corrupt", "x.mp4", blank))
  _expect("codec", "x.mp4", good.replace(b"avc1", b"zzz9"))  # a codec FFmpeg has no decoder for
  empty = io.BytesIO()
  with av.open(empty, "w", format="mp4") as c:  # a video track and zero frames
    s = c.add_stream("libx264", rate=4)
    s.width = s.height = 64
    c.start_encoding()
  _expect("no-video-stream", "x.mp4", empty.getvalue())
  audio = io.BytesIO()
  with av.open(audio, "w", format="matroska") as c:
    s = c.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    c.mux(s.encode(frame))
    c.mux(s.encode(None))
  _expect("no-video-stream", "x.mkv", audio.getvalue())


def test_the_sampler_keeps_one_frame_per_instant_and_one_after_a_gap():
  sampler = media.FrameSampler(4.0)
  times = [0.0, 0.1, 0.2, 0.25, 0.3, 1.4, 1.45, 1.5, 1.75]
  assert [t for t in times if sampler.take(t)] == [0.0, 0.25, 1.4, 1.5, 1.75]


def test_writers_png_mp4_gif(tmp_path):
  rng = np.random.default_rng(1)
  pixels = rng.uniform(-1.2, 1.2, (3, 64, 64, 3)).astype(np.float32)
  u8 = ((np.clip(pixels, -1, 1) + 1) * 127.5).astype(np.uint8)  # LWM's conversion, clipped
  media.write_png(tmp_path / "a.png", pixels[0])
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), u8[0])
  media.write_gif(tmp_path / "a.gif", pixels, fps=4)
  with Image.open(tmp_path / "a.gif") as gif:
    assert gif.n_frames == 3 and gif.info["duration"] == 250
  smooth = np.repeat(np.linspace(-1, 1, 3, dtype=np.float32)[:, None, None, None], 64, 1).repeat(64, 2).repeat(3, 3)
  media.write_mp4(tmp_path / "a.mp4", smooth, fps=4)
  with av.open(str(tmp_path / "a.mp4")) as c:
    decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert float(c.streams.video[0].average_rate) == 4
  assert len(decoded) == 3
  np.testing.assert_allclose([d.mean() for d in decoded], [0, 127.5, 255], atol=3)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.mp4", "a.png"]  # no temporary files left
