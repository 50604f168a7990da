"""CycleGAN's networks (Zhu et al. 2017; DiffuPT §2.2.1 uses it to turn majority-class images
into a minority class): ResNet generators and PatchGAN discriminators, sized by config.

- `ResnetGenerator`: c7s1-w, `downsamplings` stride-2 3x3 convolutions doubling the width, `blocks`
  residual blocks, as many stride-2 transposed convolutions back, c7s1-C with tanh; instance
  norm and ReLU, reflection padding (the paper's 6-block generator for 128 px, 9 for 256).
- `PatchDiscriminator`: 4x4 convolutions, stride 2 for `layers` levels (width doubling up to 8x,
  no norm on the first), one stride-1 level, then a 1-channel map of patch scores (the 70x70
  PatchGAN at layers=3); LeakyReLU 0.2, instance norm.

`CycleGAN` holds G: X -> Y (`g_xy`), F: Y -> X (`g_yx`) and the critics D_X, D_Y.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxsynth.errors import ConfigError

INIT = nn.initializers.normal(0.02)   # the reference implementation's init_type=normal, gain 0.02


def cyclegan_model_config() -> ml_collections.ConfigDict:
  """The `model.*` keys of configs/cyclegan.py."""
  m = ml_collections.ConfigDict()
  m.name = "cyclegan"
  m.generator_width = 64       # ngf
  m.downsamplings = 2
  m.blocks = 6                 # residual blocks (the paper: 6 at 128 px, 9 at 256 px)
  m.critic_width = 64          # ndf
  m.critic_layers = 3          # stride-2 levels of the PatchGAN (3 = 70x70 patches)
  m.dtype = "float32"
  return m


def _reflect(x, pad: int):
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def _norm(name: str):
  return nn.InstanceNorm(epsilon=1e-5, use_bias=False, use_scale=False, name=name)


class ResnetBlock(nn.Module):
  """x + conv-norm-relu-conv-norm(x), reflection padded."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.width, (3, 3), padding="VALID", kernel_init=INIT, dtype=self.dtype,
                name="conv0")(_reflect(x, 1))
    h = nn.relu(_norm("norm0")(h))
    h = nn.Conv(self.width, (3, 3), padding="VALID", kernel_init=INIT, dtype=self.dtype,
                name="conv1")(_reflect(h, 1))
    return x + _norm("norm1")(h)


class ResnetGenerator(nn.Module):
  """Images -> images of the other domain, in [-1, 1]."""
  out_channels: int
  width: int = 64
  downsamplings: int = 2
  blocks: int = 6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.width, (7, 7), padding="VALID", kernel_init=INIT, dtype=self.dtype,
                name="stem")(_reflect(x, 3))
    h = nn.relu(_norm("stem_norm")(h))
    for i in range(self.downsamplings):
      h = nn.Conv(self.width * 2 ** (i + 1), (3, 3), strides=(2, 2), padding=1, kernel_init=INIT,
                  dtype=self.dtype, name=f"down{i}")(h)
      h = nn.relu(_norm(f"down{i}_norm")(h))
    for i in range(self.blocks):
      h = ResnetBlock(h.shape[-1], self.dtype, name=f"block{i}")(h)
    for i in reversed(range(self.downsamplings)):
      h = nn.ConvTranspose(self.width * 2 ** i, (3, 3), strides=(2, 2), padding="SAME",
                           kernel_init=INIT, dtype=self.dtype, name=f"up{i}")(h)
      h = nn.relu(_norm(f"up{i}_norm")(h))
    h = nn.Conv(self.out_channels, (7, 7), padding="VALID", kernel_init=INIT, dtype=self.dtype,
                name="head")(_reflect(h, 3))
    return jnp.tanh(h.astype(jnp.float32))


class PatchDiscriminator(nn.Module):
  """Images -> (B, h, w) patch scores (unconstrained; the least-squares loss reads them)."""
  width: int = 64
  layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(nn.Conv(self.width, (4, 4), strides=(2, 2), padding=1, kernel_init=INIT,
                              dtype=self.dtype, name="conv0")(x), 0.2)
    for i in range(1, self.layers + 1):
      stride = 2 if i < self.layers else 1
      h = nn.Conv(self.width * min(2 ** i, 8), (4, 4), strides=(stride, stride), padding=1,
                  kernel_init=INIT, dtype=self.dtype, name=f"conv{i}")(h)
      h = nn.leaky_relu(_norm(f"norm{i}")(h), 0.2)
    h = nn.Conv(1, (4, 4), padding=1, kernel_init=INIT, dtype=self.dtype, name="score")(h)
    return h[..., 0].astype(jnp.float32)


class CycleGAN(nn.Module):
  """G: X -> Y, F: Y -> X and the critics D_X, D_Y (parameters g_xy, g_yx, d_x, d_y)."""
  channels: int
  generator_width: int = 64
  downsamplings: int = 2
  blocks: int = 6
  critic_width: int = 64
  critic_layers: int = 3
  dtype: Any = jnp.float32

  def setup(self):
    gen = dict(out_channels=self.channels, width=self.generator_width,
               downsamplings=self.downsamplings, blocks=self.blocks, dtype=self.dtype)
    self.g_xy, self.g_yx = ResnetGenerator(**gen), ResnetGenerator(**gen)
    crit = dict(width=self.critic_width, layers=self.critic_layers, dtype=self.dtype)
    self.d_x, self.d_y = PatchDiscriminator(**crit), PatchDiscriminator(**crit)

  def to_y(self, x):
    """G(x): a source-domain image translated into the target domain."""
    return self.g_xy(x)

  def to_x(self, y):
    """F(y): a target-domain image translated into the source domain."""
    return self.g_yx(y)

  def score_x(self, x):
    return self.d_x(x)

  def score_y(self, y):
    return self.d_y(y)

  def __call__(self, x, y):
    return self.to_y(x), self.to_x(y), self.score_x(x), self.score_y(y)


def make_cyclegan(model_cfg, image_shape, dtype=jnp.float32) -> CycleGAN:
  """The CycleGAN of `model.*` for images of `image_shape`; ConfigError when the image side is
  not a multiple of 2 ** model.downsamplings or too small for the PatchGAN."""
  f = 2 ** int(model_cfg.downsamplings)
  h, w = image_shape[:2]
  if h % f or w % f:
    raise ConfigError(f"config key 'model.downsamplings' has bad value {model_cfg.downsamplings!r}"
                      f": the generator halves the {h}x{w} images that many times and back, so "
                      f"their sides must be multiples of {f}; set data.image_size to a multiple "
                      f"of {f} or use fewer downsamplings")
  smallest = 2 ** (int(model_cfg.critic_layers) + 1)
  if min(h, w) < smallest:
    raise ConfigError(f"config key 'model.critic_layers' has bad value {model_cfg.critic_layers!r}"
                      f": its PatchGAN needs images of at least {smallest} px ({h} px here); "
                      "use fewer layers or larger images")
  return CycleGAN(channels=int(image_shape[-1]), generator_width=int(model_cfg.generator_width),
                  downsamplings=int(model_cfg.downsamplings), blocks=int(model_cfg.blocks),
                  critic_width=int(model_cfg.critic_width),
                  critic_layers=int(model_cfg.critic_layers), dtype=dtype)
