"""Per-image preprocessing and augmentation in numpy (run inside grain reader threads)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from jaxsynth.errors import ConfigError


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """Converts uint8 (H, W, C) between gray and RGB; channels 0 keeps the image as is."""
  have = image.shape[-1]
  if channels in (0, have):
    return image
  if have == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if have == 3 and channels == 1:
    gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]
  raise ValueError(f"cannot convert {have} channels to {channels}")


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear (antialiased) resize of uint8 (H, W, C) to (size, size, C); 0 keeps the size."""
  if size == 0 or image.shape[:2] == (size, size):
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return out[..., None] if channels == 1 else out


def random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
  """Reflect-pads by `padding` pixels and crops back to the original size at a random offset."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
  top, left = rng.integers(0, 2 * padding + 1, size=2)
  return padded[top:top + h, left:left + w]


def rotate(image: np.ndarray, max_degrees: float, rng: np.random.Generator) -> np.ndarray:
  """Rotates by an angle uniform in [-max_degrees, max_degrees] (bilinear, edge colour 0)."""
  angle = float(rng.uniform(-max_degrees, max_degrees))
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.rotate(angle, resample=Image.BILINEAR))
  return out[..., None] if channels == 1 else out


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
  """Scales brightness, contrast and (RGB) saturation by factors in [1-s, 1+s]; float in [0, 1]."""
  b, c, s = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
  image = image * b
  mean = image.mean()
  image = (image - mean) * c + mean
  if image.shape[-1] == 3:
    gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
    image = (image - gray[..., None]) * s + gray[..., None]
  return np.clip(image, 0.0, 1.0).astype(np.float32)


def normalisation(data_cfg, channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) of x' = (x - mean) / std: `data.channel_mean`/`channel_std` (per channel) where
  set, else the scalars `data.mean`/`data.std`. Reads configs saved before the per-channel keys.

  With `channels` (the images' channel count), a per-channel list of another length is a
  ConfigError rather than a silent broadcast.
  """
  mean = np.asarray(data_cfg.get("channel_mean", ()) or data_cfg.mean, np.float32)
  std = np.asarray(data_cfg.get("channel_std", ()) or data_cfg.std, np.float32)
  for name, value in (("channel_mean", mean), ("channel_std", std)):
    if channels is not None and value.size > 1 and value.size != channels:
      raise ConfigError(f"config key 'data.{name}' has {value.size} values but the images have "
                        f"{channels} channel(s); give {channels} values or set "
                        f"--config.data.channels={value.size}")
  return mean, std


def preprocess(image: np.ndarray, data_cfg, rng: np.random.Generator | None,
               norm: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
  """uint8 image -> float32 normalised image; augments when `rng` is given (training).

  `norm`: `normalisation(data_cfg, channels)` computed once by the caller (else per call).
  """
  if image.dtype != np.uint8:
    # Float records are model inputs already (cached latents, synthesis/latents.py): no
    # resizing, augmentation or normalisation.
    return np.asarray(image, np.float32)
  image = resize(convert_channels(image, data_cfg.channels), data_cfg.image_size)
  aug = data_cfg.augment
  if rng is not None:
    if aug.random_crop and aug.crop_padding > 0:
      image = random_crop(image, aug.crop_padding, rng)
    if aug.hflip and rng.random() < 0.5:
      image = image[:, ::-1]
    if aug.vflip and rng.random() < 0.5:
      image = image[::-1]
    if aug.rotation > 0:
      image = rotate(np.ascontiguousarray(image), aug.rotation, rng)
  out = image.astype(np.float32) * (1.0 / 255.0)
  if rng is not None and aug.color_jitter > 0:
    out = color_jitter(out, aug.color_jitter, rng)
  mean, std = norm if norm is not None else normalisation(data_cfg, out.shape[-1])
  return (out - mean) / std


def check_tanh_range(data_cfg) -> None:
  """ConfigError unless the normalisation maps images to [-1, 1], a tanh generator's range
  (data.mean = data.std = 0.5, no per-channel values)."""
  if data_cfg.get("channel_mean", ()) or data_cfg.get("channel_std", ()) or (
      data_cfg.mean, data_cfg.std) != (0.5, 0.5):
    raise ConfigError(f"config key 'data.mean' has bad value {data_cfg.mean!r}: the generator's "
                      "tanh output spans [-1, 1], the images' range only with data.mean=0.5 and "
                      "data.std=0.5 (and no data.channel_mean or channel_std): set those")


def normalised_images(source, data_cfg, image_shape) -> np.ndarray:
  """Every image of `source`, in order, preprocessed without augmentation, (N, H, W, C)."""
  norm = normalisation(data_cfg, image_shape[-1])
  return np.stack([preprocess(source[i]["image"], data_cfg, None, norm)
                   for i in range(len(source))])
