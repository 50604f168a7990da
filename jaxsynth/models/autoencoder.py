"""First-stage autoencoders of latent diffusion: a VQ autoencoder (VQGAN, Esser et al. 2021) and
a KL autoencoder (LDM, Rombach et al. 2022), pure Linen modules with `encode` and `decode`.

Encoder: conv_in -> per level `res_blocks` x ResBlock (+ attention on the lowest level when
`attention`), a stride-2 conv between levels -> middle ResBlock, [attention], ResBlock ->
GroupNorm -> SiLU -> conv_out. The downsampling factor is 2 ** (len(channels) - 1).
Decoder: the mirror image (res_blocks + 1 blocks per level, nearest-upsample + conv between).
The blocks are the UNet's (`unet.ResBlock` without an embedding, `unet.AttentionBlock`).

VQ: z_e = quant_conv(encoder(x)) is snapped to its nearest codebook row,
  z_q = e_k, k = argmin_j ||z_e - e_j||^2,
and the decoder reads z_e + sg(z_q - z_e) (the straight-through estimator). Losses (van den Oord
et al. 2017, eq. 3): codebook ||sg(z_e) - z_q||^2 and commitment beta * ||z_e - sg(z_q)||^2.
With `ema_decay > 0` the codebook is not a parameter but an exponential moving average of the
encoder outputs assigned to each code (their App. A.1: e_k = m_k / N_k with EMAs m of the sums
and N of the counts, both starting as one vector at the initial code, so an unused code keeps
its value), kept in the `vq_stats` collection; there is then no codebook loss. Either
way `vq_stats` keeps an EMA of each code's share of the assignments, which `restart_dead_codes`
reads to move unused codes onto encoder outputs, and which gives the logged usage.

KL: the encoder gives the mean and log-variance of a diagonal Gaussian (log-variance clipped to
[-30, 20] as LDM's DiagonalGaussianDistribution); z = mean + std * eps in training, the mean
otherwise; KL(q || N(0, I)) summed over the latent and averaged over the batch.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxsynth.errors import ConfigError
from jaxsynth.hardware import compute_dtype
from jaxsynth.models.layers import Conv, group_norm, pre_conv_dtype
from jaxsynth.models.unet import AttentionBlock, ResBlock

STATS = "vq_stats"   # the VQ quantizer's non-trainable collection


class _Trunk(nn.Module):
  """Shared settings of the encoder and decoder."""
  channels: Sequence[int] = (64, 128, 256)
  res_blocks: int = 2
  attention: bool = True         # self-attention on the lowest level and in the middle
  norm_groups: int = 32
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  def _parts(self):
    res = functools.partial(ResBlock, norm_groups=self.norm_groups, zero_init=False,
                            dtype=self.dtype, conv_impl=self.conv_impl)
    attn = functools.partial(AttentionBlock, num_heads=1, norm_groups=self.norm_groups,
                             zero_init=False, dtype=self.dtype)
    conv = functools.partial(Conv, kernel_size=(3, 3), padding=1, dtype=self.dtype,
                             impl=self.conv_impl)
    return res, attn, conv

  def _middle(self, h, train):
    res, attn, _ = self._parts()
    h = res(self.channels[-1], name="mid_res_0")(h, None, train)
    if self.attention:
      h = attn(name="mid_attn")(h)
    return res(self.channels[-1], name="mid_res_1")(h, None, train)

  def _out(self, h, features: int):
    _, _, conv = self._parts()
    h = group_norm(self.dtype)(num_groups=self.norm_groups, epsilon=1e-6,
                               dtype=pre_conv_dtype(self.dtype), name="norm_out")(h)
    return conv(features, name="conv_out")(nn.silu(h))


class Encoder(_Trunk):
  """Image (B, H, W, C) -> features (B, H/f, W/f, out_channels), f = 2 ** (levels - 1)."""
  out_channels: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    res, attn, conv = self._parts()
    h = conv(self.channels[0], name="conv_in")(x.astype(self.dtype))
    last = len(self.channels) - 1
    for level, ch in enumerate(self.channels):
      for i in range(self.res_blocks):
        h = res(ch, name=f"down_{level}_res_{i}")(h, None, train)
        if self.attention and level == last:
          h = attn(name=f"down_{level}_attn_{i}")(h)
      if level != last:
        h = conv(ch, strides=2, name=f"down_{level}_downsample")(h)
    return self._out(self._middle(h, train), self.out_channels).astype(jnp.float32)


class Decoder(_Trunk):
  """Latent (B, h, w, c) -> image (B, h*f, w*f, out_channels)."""
  out_channels: int = 3

  @nn.compact
  def __call__(self, z, train: bool = False):
    res, attn, conv = self._parts()
    h = conv(self.channels[-1], name="conv_in")(z.astype(self.dtype))
    h = self._middle(h, train)
    last = len(self.channels) - 1
    for level in reversed(range(len(self.channels))):
      for i in range(self.res_blocks + 1):
        h = res(self.channels[level], name=f"up_{level}_res_{i}")(h, None, train)
        if self.attention and level == last:
          h = attn(name=f"up_{level}_attn_{i}")(h)
      if level != 0:
        h = conv(self.channels[level], upsample=True, name=f"up_{level}_upsample")(h)
    return self._out(h, self.out_channels).astype(jnp.float32)


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest codebook row (squared L2) for each vector of z (..., D) -> (...)."""
  flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  dist = (jnp.sum(flat ** 2, axis=1, keepdims=True) - 2.0 * flat @ codebook.T
          + jnp.sum(codebook ** 2, axis=1)[None, :])
  return jnp.argmin(dist, axis=1).reshape(z.shape[:-1])


def perplexity(indices: jax.Array, num_codes: int) -> jax.Array:
  """exp(entropy) of the codes' frequencies in `indices`: 1 = one code used, K = all evenly."""
  p = jnp.bincount(indices.reshape(-1), length=num_codes) / indices.size
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


class VectorQuantizer(nn.Module):
  """z (..., D) -> (straight-through z_q, aux) with the codebook and commitment losses (module
  docstring); `train=True` updates the `vq_stats` collection (pass mutable=[STATS])."""
  num_codes: int = 1024
  code_dim: int = 4
  beta: float = 0.25             # commitment weight (van den Oord et al.: 0.25)
  ema_decay: float = 0.0         # > 0: EMA codebook (e.g. 0.99), no codebook loss
  usage_decay: float = 0.99      # EMA of each code's share of the assignments
  epsilon: float = 1e-20         # EMA counts below this leave their code unchanged

  def _init_codebook(self, key, shape):
    # VQGAN: uniform(-1/K, 1/K); the EMA variant starts from the same draw.
    return jax.random.uniform(key, shape, jnp.float32, -1.0 / self.num_codes,
                              1.0 / self.num_codes)

  @nn.compact
  def __call__(self, z, train: bool = False):
    shape = (self.num_codes, self.code_dim)
    if self.ema_decay > 0:
      init_key = self.make_rng("params") if self.is_initializing() else None
      codebook_var = self.variable(STATS, "codebook", self._init_codebook, init_key, shape)
      # Each code starts as if one vector had been assigned to it, at its initial value: an
      # unused code then keeps that value instead of decaying towards zero.
      cluster = self.variable(STATS, "cluster_size", jnp.ones, (self.num_codes,), jnp.float32)
      embed_sum = self.variable(STATS, "embed_sum", lambda: codebook_var.value)
      codebook = codebook_var.value
    else:
      codebook = self.param("codebook", self._init_codebook, shape)
    usage = self.variable(STATS, "usage", lambda: jnp.full((self.num_codes,),
                                                           1.0 / self.num_codes, jnp.float32))
    z = z.astype(jnp.float32)
    indices = nearest_codes(jax.lax.stop_gradient(z), codebook)
    z_q = codebook[indices]
    one_hot = jax.nn.one_hot(indices.reshape(-1), self.num_codes, dtype=jnp.float32)
    counts = one_hot.sum(axis=0)
    if train and not self.is_initializing():
      share = counts / indices.size
      usage.value = self.usage_decay * usage.value + (1.0 - self.usage_decay) * share
      if self.ema_decay > 0:
        d = self.ema_decay
        flat = jax.lax.stop_gradient(z).reshape(-1, self.code_dim)
        cluster.value = d * cluster.value + (1.0 - d) * counts
        embed_sum.value = d * embed_sum.value + (1.0 - d) * (one_hot.T @ flat)
        # Where a count has decayed to nothing (float32), the code keeps its last value.
        alive = cluster.value > self.epsilon
        codebook_var.value = jnp.where(
            alive[:, None], embed_sum.value / jnp.where(alive, cluster.value, 1.0)[:, None],
            codebook_var.value)
    commitment = jnp.mean((z - jax.lax.stop_gradient(z_q)) ** 2)
    codebook_loss = (jnp.zeros((), jnp.float32) if self.ema_decay > 0
                     else jnp.mean((jax.lax.stop_gradient(z) - z_q) ** 2))
    aux = {"codebook_loss": codebook_loss, "commitment_loss": self.beta * commitment,
           "perplexity": perplexity(indices, self.num_codes),
           "codes_used": jnp.mean((counts > 0).astype(jnp.float32)), "indices": indices}
    return z + jax.lax.stop_gradient(z_q - z), aux


def restart_dead_codes(params, stats, z: jax.Array, key: jax.Array, threshold: float):
  """Moves every code whose usage share (`vq_stats` EMA) is below `threshold` onto a random
  encoder output, a row of z (N, D) (the random restarts of Jukebox, Dhariwal et al. 2020).

  `params` and `stats` are a VectorQuantizer's own collections (the `quantizer` entries of the
  autoencoder's). Restarted codes get the uniform share 1/K, so they are not restarted again
  before they have had a chance to be used; an EMA codebook's statistics restart as one vector.
  Returns (params, stats, number of codes restarted)."""
  codebook = stats["codebook"] if "codebook" in stats else params["codebook"]
  k = codebook.shape[0]
  dead = stats["usage"] < threshold
  fresh = z[jax.random.randint(key, (k,), 0, z.shape[0])].astype(codebook.dtype)
  codebook = jnp.where(dead[:, None], fresh, codebook)
  stats = dict(stats, usage=jnp.where(dead, 1.0 / k, stats["usage"]))
  if "codebook" in stats:
    stats.update(codebook=codebook, embed_sum=jnp.where(dead[:, None], fresh, stats["embed_sum"]),
                 cluster_size=jnp.where(dead, 1.0, stats["cluster_size"]))
  else:
    params = dict(params, codebook=codebook)
  return params, stats, jnp.sum(dead)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) summed over all but the batch axis, batch mean."""
  kl = 0.5 * (mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.mean(jnp.sum(kl.reshape(kl.shape[0], -1), axis=1))


class _Autoencoder(nn.Module):
  """Encoder and decoder settings shared by both autoencoders."""
  channels: Sequence[int] = (64, 128, 256)
  res_blocks: int = 2
  attention: bool = True
  norm_groups: int = 32
  latent_channels: int = 4
  image_channels: int = 3
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  def _trunk(self, cls, out_channels: int, name: str):
    return cls(channels=tuple(self.channels), res_blocks=self.res_blocks,
               attention=self.attention, norm_groups=self.norm_groups, dtype=self.dtype,
               conv_impl=self.conv_impl, out_channels=out_channels, name=name)

  @property
  def factor(self) -> int:
    """Downsampling factor f: a (H, W) image has an (H/f, W/f) latent."""
    return 2 ** (len(self.channels) - 1)


class VQAutoencoder(_Autoencoder):
  """apply(vars, x, train) -> (reconstruction, aux); `encode` -> (z_q, aux), `decode`(z_q)."""
  num_codes: int = 1024
  beta: float = 0.25
  ema_decay: float = 0.0

  def setup(self):
    self.encoder = self._trunk(Encoder, self.latent_channels, "encoder")
    self.quant_conv = Conv(self.latent_channels, (1, 1), name="quant_conv")
    self.quantizer = VectorQuantizer(self.num_codes, self.latent_channels, self.beta,
                                     self.ema_decay, name="quantizer")
    self.post_quant_conv = Conv(self.latent_channels, (1, 1), name="post_quant_conv")
    self.decoder = self._trunk(Decoder, self.image_channels, "decoder")

  def encode(self, x, train: bool = False):
    """Image -> (quantised latent (B, H/f, W/f, latent_channels), aux: losses, code indices)."""
    return self.quantizer(self.quant_conv(self.encoder(x, train)), train)

  def decode(self, z, train: bool = False):
    """Quantised latent -> image."""
    return self.decoder(self.post_quant_conv(z), train)

  def __call__(self, x, train: bool = False):
    z_e = self.quant_conv(self.encoder(x, train))
    z, aux = self.quantizer(z_e, train)
    aux["encoded"] = z_e
    return self.decode(z, train), aux


class KLAutoencoder(_Autoencoder):
  """apply(vars, x, train, rngs={"latent": k}) -> (reconstruction, aux with kl, mean, logvar);
  `encode` -> (mean, logvar), `decode`(z)."""

  def setup(self):
    self.encoder = self._trunk(Encoder, 2 * self.latent_channels, "encoder")
    self.quant_conv = Conv(2 * self.latent_channels, (1, 1), name="quant_conv")
    self.post_quant_conv = Conv(self.latent_channels, (1, 1), name="post_quant_conv")
    self.decoder = self._trunk(Decoder, self.image_channels, "decoder")

  def encode(self, x, train: bool = False):
    """Image -> (mean, log-variance) of the latent posterior, each (B, H/f, W/f, c)."""
    mean, logvar = jnp.split(self.quant_conv(self.encoder(x, train)), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z, train: bool = False):
    """Latent -> image."""
    return self.decoder(self.post_quant_conv(z), train)

  def __call__(self, x, train: bool = False):
    mean, logvar = self.encode(x, train)
    z = mean
    if train:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng("latent"), mean.shape)
    aux = {"kl": gaussian_kl(mean, logvar), "mean": mean, "logvar": logvar}
    return self.decode(z, train), aux


class PatchDiscriminator(nn.Module):
  """PatchGAN critic (Isola et al. 2017; VQGAN's NLayerDiscriminator): a 4x4 stride-2 conv,
  `layers - 1` more (channels doubling, at most 8x), a stride-1 one, then a 1-channel 4x4 conv:
  one logit per overlapping patch, (B, h, w, 1). VQGAN normalises with BatchNorm; this uses
  GroupNorm instead, so the critic carries no batch statistics and does not depend on the
  batch split over devices."""
  channels: int = 64
  layers: int = 3
  norm_groups: int = 32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(Conv, kernel_size=(4, 4), padding=1,
                             kernel_init=nn.initializers.normal(0.02))
    h = nn.leaky_relu(conv(self.channels, strides=2, name="conv_0")(x), 0.2)
    for i in range(1, self.layers + 1):
      ch = self.channels * min(2 ** i, 8)
      h = conv(ch, strides=2 if i < self.layers else 1, use_bias=False, name=f"conv_{i}")(h)
      h = nn.GroupNorm(num_groups=min(self.norm_groups, ch), name=f"norm_{i}")(h)
      h = nn.leaky_relu(h, 0.2)
    return conv(1, name="conv_out")(h).astype(jnp.float32)


AUTOENCODERS = ("vq", "kl")


def autoencoder_model_config():
  """The `model.*` keys of the autoencoders (configs/autoencoder.py sets them)."""
  m = ml_collections.ConfigDict()
  m.name = "vq"                   # vq | kl
  m.channels = (64, 128, 256)     # per level; downsampling factor 2 ** (levels - 1)
  m.res_blocks = 2
  m.attention = True              # self-attention on the lowest level and in the middle
  m.norm_groups = 32
  m.latent_channels = 4           # channels of the latent (VQ: the code dimension)
  m.num_codes = 1024              # vq: codebook size
  m.beta = 0.25                   # vq: commitment weight
  m.ema_decay = 0.0               # vq: > 0 = EMA codebook (e.g. 0.99) instead of the codebook loss
  m.dtype = "float32"             # float32 | bfloat16 | auto
  m.disc_channels = 64            # PatchGAN critic (used when loss.disc_weight > 0)
  m.disc_layers = 3
  return m


class AutoencoderWithCritic(nn.Module):
  """The autoencoder and (optionally) its PatchGAN critic as one module, so one parameter tree
  {"autoencoder", "critic"} trains, checkpoints and resumes as a unit."""
  autoencoder: nn.Module
  critic: nn.Module | None = None

  def __call__(self, x, train: bool = False):
    out = self.autoencoder(x, train)
    if self.critic is not None:
      self.critic(x)
    return out

  def reconstruct(self, x, train: bool = False):
    """(reconstruction, aux) of the autoencoder."""
    return self.autoencoder(x, train)

  def criticise(self, x):
    """Patch logits of the critic."""
    return self.critic(x)


def make_autoencoder(model_cfg, image_channels: int, with_critic: bool = False):
  """The autoencoder of `model.*` (wrapped with its critic when `with_critic`)."""
  if model_cfg.name not in AUTOENCODERS:
    raise ConfigError(f"config key 'model.name' has unknown value {model_cfg.name!r} for an "
                      f"autoencoder; use one of {', '.join(AUTOENCODERS)}")
  channels = tuple(int(c) for c in model_cfg.channels)
  if not channels or any(c % model_cfg.norm_groups for c in channels):
    raise ConfigError(f"config key 'model.channels' has bad value {channels!r}: give one or more "
                      f"levels, each a multiple of model.norm_groups={model_cfg.norm_groups}")
  if model_cfg.latent_channels < 1:
    raise ConfigError(f"config key 'model.latent_channels' has bad value "
                      f"{model_cfg.latent_channels!r}: use a positive channel count")
  common = dict(channels=channels, res_blocks=int(model_cfg.res_blocks),
                attention=bool(model_cfg.attention), norm_groups=int(model_cfg.norm_groups),
                latent_channels=int(model_cfg.latent_channels), image_channels=image_channels,
                dtype=compute_dtype(model_cfg.dtype))
  if model_cfg.name == "vq":
    if model_cfg.num_codes < 2:
      raise ConfigError(f"config key 'model.num_codes' has bad value {model_cfg.num_codes!r}: "
                        "use a codebook of 2 or more codes (e.g. 1024)")
    if not 0.0 <= model_cfg.ema_decay < 1.0:
      raise ConfigError(f"config key 'model.ema_decay' has bad value {model_cfg.ema_decay!r}: "
                        "use 0 (codebook loss) or a decay in (0, 1), e.g. 0.99")
    model = VQAutoencoder(num_codes=int(model_cfg.num_codes), beta=float(model_cfg.beta),
                          ema_decay=float(model_cfg.ema_decay), **common)
  else:
    model = KLAutoencoder(**common)
  critic = (PatchDiscriminator(int(model_cfg.disc_channels), int(model_cfg.disc_layers))
            if with_critic else None)
  return AutoencoderWithCritic(model, critic)
