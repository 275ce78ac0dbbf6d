"""Images and videos in, 256x256 frames out, and frames back to PNG / MP4 / GIF files.

LWM's pixel pipeline (`lwm/vision_chat.py`, paper Sec. 4.1-4.2), which the VQGAN expects:
  * RGB; the shorter side resized to 256 with Pillow's `Image.resize` (bicubic), then a centred
    256x256 crop; pixels as float32 `x / 127.5 - 1` in [-1, 1];
  * videos sampled at 4 frames per second (the training data's rate), at most `max_frames` frames:
    over that, `np.linspace(0, F - 1, max_frames).astype(int)` of the sampled frames (LWM's rule, which
    keeps the first and the last);
  * decoded pixels back to bytes as LWM does: `((x + 1) * 127.5).astype(uint8)` (after clipping to
    [-1, 1], so an overshoot does not wrap around).

Images (PNG, JPEG, WebP, ... anything Pillow opens) go through Pillow; every other suffix is a video
container read by PyAV (FFmpeg: MP4, WebM, MKV, MOV, AVI, ...). Frame times come from each frame's
presentation time stamp; a frame is kept when its time reaches the next sampling instant (0, 1/fps,
2/fps, ...). A stream without time stamps and without an average frame rate is rejected (no guess).

Every input that cannot become frames raises `MediaError` with a `reason` (`corrupt`, `no-frames`,
`codec`, `no-video-stream`) and a detail, so data preparation can list it in its rejects file.
Output files are written atomically (`data_loaders.atomic_file`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from data_loaders.atomic_file import atomic_path

FRAME_SIZE = 256          # LWM's VQGAN resolution
DEFAULT_FPS = 4.0         # LWM's training data: 4 frames per second (paper Sec. 4.2)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
REASONS = ("corrupt", "no-frames", "codec", "no-video-stream")


class MediaError(ValueError):
  """An input that cannot become frames. `reason` is one of REASONS; `detail` says what happened."""

  def __init__(self, source: str, reason: str, detail: str):
    if reason not in REASONS:
      raise ValueError(f"MediaError reason {reason!r} is not one of {REASONS}")
    self.source, self.reason, self.detail = source, reason, detail
    super().__init__(f"{source}: {reason}: {detail}")

  def __reduce__(self):  # Beam and multiprocessing pickle exceptions
    return type(self), (self.source, self.reason, self.detail)


def is_image(name: str) -> bool:
  """True when `name`'s suffix is an image format (read with Pillow); anything else is a video."""
  return Path(name).suffix.lower() in IMAGE_SUFFIXES


def to_unit_range(rgb_HxWx3: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32 in [-1, 1] (`x / 127.5 - 1`, LWM)."""
  return rgb_HxWx3.astype(np.float32) / 127.5 - 1.0


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """float pixels in [-1, 1] -> uint8 (`((x + 1) * 127.5).astype(uint8)`, LWM), clipped first."""
  return ((np.clip(pixels, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def crop_uint8(image: Image.Image, size: int = FRAME_SIZE) -> np.ndarray:
  """Shorter side to `size` (Pillow bicubic), centre crop `size` x `size`: uint8 RGB [size, size, 3]."""
  image = image.convert("RGB")
  width, height = image.size
  if width <= height:
    new_w, new_h = size, max(size, round(height * size / width))
  else:
    new_w, new_h = max(size, round(width * size / height)), size
  if (new_w, new_h) != (width, height):
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)))


def resize_and_crop(image: Image.Image, size: int = FRAME_SIZE) -> np.ndarray:
  """`crop_uint8` as float32 [size, size, 3] in [-1, 1]: what the VQGAN reads."""
  return to_unit_range(crop_uint8(image, size))


def _open(source: str, data: bytes | None):
  return io.BytesIO(data) if data is not None else source


def read_image(source: str, data: bytes | None = None, *, size: int = FRAME_SIZE) -> np.ndarray:
  """An image file (or its bytes) -> float32 [1, size, size, 3]."""
  try:
    with Image.open(_open(source, data)) as image:
      image.load()
      return resize_and_crop(image, size)[None]
  except UnidentifiedImageError:
    raise MediaError(source, "corrupt", "Pillow cannot identify the image format") from None
  except (OSError, SyntaxError, ValueError) as e:  # Pillow's decoders raise these on damaged data
    if isinstance(e, FileNotFoundError):
      raise
    raise MediaError(source, "corrupt", f"Pillow cannot decode the image ({type(e).__name__}: {e})") from None


class FrameSampler:
  """Keeps the first frame whose time reaches each sampling instant 0, 1/fps, 2/fps, ... (from the first
  frame's time); after a gap longer than 1/fps the next frame is kept once, not once per missed instant."""

  def __init__(self, fps: float):
    if not fps > 0:
      raise ValueError(f"fps must be > 0, got {fps}")
    self.period, self.start, self.next_t = 1.0 / fps, None, 0.0

  def take(self, t: float) -> bool:
    if self.start is None:
      self.start = t
    elapsed, eps = t - self.start, 1e-6
    if elapsed < self.next_t - eps:
      return False
    while elapsed >= self.next_t - eps:
      self.next_t += self.period
    return True


def subsample(n: int, max_frames: int | None) -> np.ndarray:
  """LWM's uniform subsampling of n frames to at most max_frames (keeps the first and the last)."""
  if max_frames is None or n <= max_frames:
    return np.arange(n)
  return np.linspace(0, n - 1, max_frames).astype(int)


def read_video(source: str, data: bytes | None = None, *, fps: float = DEFAULT_FPS, max_frames: int | None = None,
               size: int = FRAME_SIZE) -> np.ndarray:
  """A video file (or its bytes) -> float32 [F, size, size, 3], sampled at `fps`, at most `max_frames`."""
  sampler = FrameSampler(fps)
  try:
    container = av.open(_open(source, data), mode="r")
  except av.error.FileNotFoundError:
    raise FileNotFoundError(f"{source}: no such file") from None
  except (av.error.FFmpegError, ValueError) as e:
    raise MediaError(source, "corrupt", f"FFmpeg cannot open the container ({e})") from None
  kept: list[np.ndarray] = []
  decoded = 0
  with container:
    if not container.streams.video:
      raise MediaError(source, "no-video-stream", "the container holds no video stream")
    stream = container.streams.video[0]
    try:
      for frame in container.decode(stream):
        t = frame.time
        if t is None:
          if not stream.average_rate:
            raise MediaError(source, "corrupt", "frames without time stamps and no average frame rate")
          t = decoded / float(stream.average_rate)
        decoded += 1
        if sampler.take(float(t)):
          kept.append(crop_uint8(frame.to_image(), size))
    except av.error.DecoderNotFoundError as e:
      raise MediaError(source, "codec", f"no decoder for the video stream ({e})") from None
    except av.error.FFmpegError as e:
      raise MediaError(source, "corrupt", f"FFmpeg failed after {decoded} decoded frames ({e})") from None
  if not kept:
    raise MediaError(source, "no-frames", "the video stream decodes to zero frames")
  return to_unit_range(np.stack([kept[i] for i in subsample(len(kept), max_frames)]))


def read_media(source: str, data: bytes | None = None, *, fps: float = DEFAULT_FPS, max_frames: int | None = None,
               size: int = FRAME_SIZE) -> np.ndarray:
  """An image or a video (chosen by `source`'s suffix) -> float32 frames [F, size, size, 3] in [-1, 1]."""
  if is_image(source):
    return read_image(source, data, size=size)
  return read_video(source, data, fps=fps, max_frames=max_frames, size=size)


def write_png(path: str | os.PathLike, pixels_HxWx3: np.ndarray) -> Path:
  """One frame (float in [-1, 1]) -> PNG, atomically."""
  with atomic_path(path) as tmp:
    Image.fromarray(to_uint8(pixels_HxWx3)).save(tmp, format="PNG")
  return Path(path)


def write_gif(path: str | os.PathLike, frames_FxHxWx3: np.ndarray, fps: float = DEFAULT_FPS) -> Path:
  """Frames -> an endlessly looping GIF preview (Pillow), atomically."""
  images = [Image.fromarray(f) for f in to_uint8(frames_FxHxWx3)]
  with atomic_path(path) as tmp:
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
  return Path(path)


def write_mp4(path: str | os.PathLike, frames_FxHxWx3: np.ndarray, fps: float = DEFAULT_FPS) -> Path:
  """Frames -> H.264 MP4 (PyAV, yuv420p, near-lossless crf 10), atomically."""
  rate = round(fps) if float(fps).is_integer() else fps
  with atomic_path(path) as tmp:
    with av.open(tmp, mode="w", format="mp4") as container:
      stream = container.add_stream("libx264", rate=rate, options={"crf": "10"})
      stream.height, stream.width = frames_FxHxWx3.shape[1:3]
      stream.pix_fmt = "yuv420p"
      for rgb in to_uint8(frames_FxHxWx3):
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
      container.mux(stream.encode(None))
  return Path(path)
