"""BAGAN-GP's networks (Huang & Jafari 2021, Fig. 3-5), sized by config for 28-128 px.

- `Encoder`: strided 4x4 convolutions with LeakyReLU 0.2 (no normalisation), flattened, then a
  dense latent (128-d by default) with LeakyReLU.
- `Decoder` (= the generator's body): dense to a (base, base, widest) map, 4x4 transposed
  convolutions with batch norm and LeakyReLU 0.2, a tanh output. Batch norm lives here only.
- The label embedding: the latent (or noise) vector is multiplied element-wise with a learned
  embedding of the label (the supervised autoencoder of Fig. 3; the generator of Fig. 4).
- `Critic` (Fig. 5, the cWGAN-GP architecture of the authors' code): the encoder's convolution
  trunk (no dense latent), multiplied element-wise with a label embedding (512-d, then dense to
  the trunk's size with LeakyReLU), then dense 512 and dense 1: one unconstrained score.

`channels` are the encoder's widths, one per halving (the paper's 64 px: (64, 128, 128, 256),
so 4x4 maps at the bottom); the decoder mirrors them. An image side must be a multiple of
2 ** len(channels).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxsynth.errors import ConfigError

GANS = ("bagan_gp", "bagan", "cdragan", "wgan_gp")
#: How the generator is told the class: `embedding` (BAGAN-GP: z * embedding(label)) or
#: `gaussian` (BAGAN: z drawn from the class's Gaussian over the autoencoder's latents).
CONDITIONINGS = ("embedding", "gaussian")
INIT = nn.initializers.normal(0.02)      # the authors' RandomNormal(stddev=0.02) for convolutions


def _leaky(x):
  return nn.leaky_relu(x, 0.2)


def gan_model_config() -> ml_collections.ConfigDict:
  """The `model.*` keys of the GAN configs."""
  m = ml_collections.ConfigDict()
  m.name = "bagan_gp"
  m.channels = (64, 128, 128, 256)   # encoder / critic widths, one per halving (64 px -> 4x4)
  m.latent_dim = 128                 # the autoencoder's latent = the generator's noise size
  m.critic_label_dim = 512           # the critic's label embedding before its dense layer
  m.critic_hidden = 512              # the critic's dense layer after the multiply
  m.dtype = "float32"                # compute dtype (params stay float32)
  return m


class ConvTrunk(nn.Module):
  """Strided 4x4 convolutions with LeakyReLU 0.2, flattened: the encoder's and critic's trunk."""
  channels: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.channels):
      x = nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME", kernel_init=INIT,
                  dtype=self.dtype, name=f"conv{i}")(x)
      x = _leaky(x)
    return x.reshape(x.shape[0], -1)


class Encoder(nn.Module):
  """Images -> latent vectors (LeakyReLU of a dense layer on the trunk's features)."""
  channels: Sequence[int]
  latent_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = ConvTrunk(self.channels, self.dtype, name="trunk")(x)
    return _leaky(nn.Dense(self.latent_dim, dtype=self.dtype, name="latent")(features))


class Decoder(nn.Module):
  """Latent vectors -> images in [-1, 1]: the generator's body."""
  channels: Sequence[int]          # the encoder's widths; used in reverse
  out_channels: int
  base: tuple[int, int]            # the (H, W) of the first map
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = False):
    widths = tuple(self.channels)[::-1]
    h, w = self.base
    x = _leaky(nn.Dense(h * w * widths[0], dtype=self.dtype, name="project")(z))
    x = x.reshape(x.shape[0], h, w, widths[0])
    for i, width in enumerate(widths[1:]):
      x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME", kernel_init=INIT,
                           dtype=self.dtype, name=f"up{i}")(x)
      # Keras' BatchNormalization defaults, as in the authors' code.
      x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3,
                       dtype=self.dtype, name=f"norm{i}")(x)
      x = _leaky(x)
    x = nn.ConvTranspose(self.out_channels, (4, 4), strides=(2, 2), padding="SAME",
                         kernel_init=INIT, dtype=self.dtype, name="out")(x)
    return jnp.tanh(x.astype(jnp.float32))


class Critic(nn.Module):
  """(images, labels) -> one unconstrained score per image (Fig. 5)."""
  channels: Sequence[int]
  num_classes: int
  label_dim: int = 512
  hidden: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, labels):
    features = ConvTrunk(self.channels, self.dtype, name="trunk")(x)
    embedded = nn.Embed(self.num_classes, self.label_dim, name="label_embedding")(labels)
    embedded = _leaky(nn.Dense(features.shape[-1], dtype=self.dtype, name="label_dense")(
        embedded.astype(self.dtype)))
    joint = nn.Dense(self.hidden, dtype=self.dtype, name="joint")(features * embedded)
    return nn.Dense(1, dtype=self.dtype, name="score")(joint)[:, 0].astype(jnp.float32)


class ClassCritic(nn.Module):
  """BAGAN's discriminator (Mariani et al. 2018, Fig. 3b): the encoder's topology (trunk and
  latent layer, named as the encoder's so its weights can start it) and a dense layer to K + 1
  logits, the classes and `fake` (index K)."""
  channels: Sequence[int]
  latent_dim: int
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None):
    del labels   # the class is what this critic predicts, not an input
    features = ConvTrunk(self.channels, self.dtype, name="trunk")(x)
    latent = _leaky(nn.Dense(self.latent_dim, dtype=self.dtype, name="latent")(features))
    return nn.Dense(self.num_classes + 1, dtype=self.dtype, name="classes")(latent).astype(
        jnp.float32)


def class_conditional_latent(noise, labels, class_latents):
  """BAGAN's class-conditional latent vector generator: z = mu_y + S_y eps for eps = `noise`
  ~ N(0, I), with S_y S_y^T = Sigma_y (class_latents: {"mean": (K, d), "scale": (K, d, d)})."""
  mean, scale = class_latents["mean"][labels], class_latents["scale"][labels]
  return mean + jnp.einsum("bij,bj->bi", scale, noise)


class BaganGP(nn.Module):
  """The autoencoder, the generator (decoder, told the class by a label embedding) and the
  critic.

  Parameters: `encoder`, `embedding` (the label embedding of the latent; conditioning=embedding
  only), `decoder`, `critic`; the generator is {embedding, decoder}. With
  conditioning=gaussian (BAGAN) the autoencoder is unconditional, the generator is the decoder
  fed class-conditional latents (class_conditional_latent) and the critic is a ClassCritic.
  `__call__` touches every part (for init).
  """
  num_classes: int
  channels: Sequence[int]
  latent_dim: int
  out_channels: int
  base: tuple[int, int]
  critic_label_dim: int = 512
  critic_hidden: int = 512
  conditioning: str = "embedding"
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.channels, self.latent_dim, self.dtype)
    self.decoder = Decoder(self.channels, self.out_channels, self.base, self.dtype)
    if self.conditioning == "embedding":
      self.embedding = nn.Embed(self.num_classes, self.latent_dim)
      self.critic = Critic(self.channels, self.num_classes, self.critic_label_dim,
                           self.critic_hidden, self.dtype)
    else:
      self.critic = ClassCritic(self.channels, self.latent_dim, self.num_classes, self.dtype)

  def labelled(self, latent, labels):
    """The labelled latent: latent * embedding(label), element-wise (Fig. 3); BAGAN's latents
    carry the class already (they are drawn from its Gaussian) and pass unchanged."""
    if self.conditioning != "embedding":
      return latent
    return latent * self.embedding(labels).astype(latent.dtype)

  def encode(self, x):
    """Images -> latent vectors."""
    return self.encoder(x)

  def reconstruct(self, x, labels, train: bool = False):
    """The supervised autoencoder: decoder(encoder(x) * embedding(label))."""
    return self.decoder(self.labelled(self.encoder(x), labels), train)

  def generate(self, z, labels, train: bool = False):
    """The generator: decoder(z * embedding(label)), z ~ N(0, I); BAGAN: decoder(z) for z from
    the class's Gaussian."""
    return self.decoder(self.labelled(z, labels), train)

  def criticise(self, x, labels):
    """The critic's score of (image, label) pairs; BAGAN: K + 1 logits per image."""
    return self.critic(x, labels)

  def __call__(self, x, labels, train: bool = False):
    return self.reconstruct(x, labels, train), self.criticise(x, labels)


def decoder_base(model_cfg, image_shape) -> tuple[int, int]:
  """The decoder's first map size; ConfigError when the image size is not a multiple of
  2 ** len(model.channels)."""
  levels = len(tuple(model_cfg.channels))
  f = 2 ** levels
  h, w = image_shape[:2]
  if levels < 1 or h % f or w % f:
    raise ConfigError(
        f"config key 'model.channels' has bad value {tuple(model_cfg.channels)!r}: {levels} "
        f"halvings need image sides that are multiples of {f}, and the images are {h}x{w}; "
        f"set data.image_size to a multiple of {f} (e.g. {max(f, (h // f) * f)}) or give "
        "model.channels fewer levels")
  return h // f, w // f


def make_gan(model_cfg, num_classes: int, image_shape, dtype=jnp.float32) -> BaganGP:
  """The BaganGP module for `model.*` and the data's classes and image shape."""
  if model_cfg.name not in GANS:
    raise ConfigError(f"config key 'model.name' has bad value {model_cfg.name!r}: use one of "
                      f"{', '.join(GANS)}")
  if model_cfg.latent_dim < 1:
    raise ConfigError(f"config key 'model.latent_dim' has bad value {model_cfg.latent_dim!r}: "
                      "use a positive size, e.g. 128")
  return BaganGP(num_classes=num_classes, channels=tuple(model_cfg.channels),
                 latent_dim=int(model_cfg.latent_dim), out_channels=int(image_shape[-1]),
                 base=decoder_base(model_cfg, image_shape),
                 critic_label_dim=int(model_cfg.critic_label_dim),
                 critic_hidden=int(model_cfg.critic_hidden),
                 conditioning="gaussian" if model_cfg.name == "bagan" else "embedding",
                 dtype=dtype)
