"""Class-conditional GANs for minority classes (task `train_gan`; Huang & Jafari 2021).

Variants (`--config configs/bagan_gp.py:VARIANT`, add `:tiny` for the tests' size):
  bagan_gp  (default) supervised autoencoder init, balanced fake labels, wrong-label term,
            logistic loss with the WGAN-GP penalty (eq. 14-15)
  bagan     the original BAGAN (Mariani et al. 2018): unconditional L2 autoencoder, class
            Gaussians over its latents, a K + 1 way softmax critic started from the encoder,
            one critic update per generator update, no penalty
  cdragan   conditional DRAGAN: no autoencoder, fake images carry the real labels (eq. 12-13)
  wgan_gp   conditional WGAN-GP: Wasserstein loss with the penalty (eq. 8-9), real labels

  python -m jaxsynth.main --config configs/bagan_gp.py --workdir runs/bagan_gp
  python -m jaxsynth.main --config configs/bagan_gp.py:cdragan --workdir runs/cdragan \
      --config.data.source=npz --config.data.path=../shared/data/chula_rbc_32.npz

The paper's settings: 64 px images, latent 128, Adam(2e-4, b = (0.5, 0.9)), batch 128, 5 critic
updates per generator update, lambda = 10, alpha ~ U(0, 1) (`gan.gp_alpha=normal` is the
authors' code), a critic whose trunk starts from the encoder (`gan.critic_init=independent`
is the authors' code's default). The embedded default data are 8 px digits, resized to 16 px
here with 2 halvings (4x4 maps); for 28 px sets use 2 halvings (7x7), for 32 px 3, for 64 px 4,
for 128 px 5.
"""

import ml_collections

from jaxsynth.config import base_config
from jaxsynth.models.gan import gan_model_config

VARIANTS = ("bagan_gp", "bagan", "cdragan", "wgan_gp")


def get_config(variant: str | None = None):
  """Returns the GAN config; `variant` is bagan_gp | bagan | cdragan | wgan_gp, optionally
  `:tiny`."""
  name, _, size = (variant or "bagan_gp").partition(":")
  if name == "tiny" and not size:      # `:tiny` alone is the default variant's tiny size
    name, size = "bagan_gp", "tiny"
  if name not in VARIANTS or size not in ("", "tiny"):
    raise ValueError(f"unknown configs/bagan_gp.py variant {variant!r}; use one of "
                     f"{', '.join(VARIANTS)}, optionally with :tiny")
  config = base_config(task="train_gan")
  config.data.image_size = 16

  config.model = m = gan_model_config()
  m.name = name
  m.channels = (64, 128)             # 16 px -> 4x4 maps; the paper's 64 px: (64, 128, 128, 256)

  config.gan = g = ml_collections.ConfigDict()
  g.adversarial = "logistic"         # logistic (DRAGAN-like, eq. 10-15) | wasserstein (eq. 8-9)
  #                                    | classifier (BAGAN's K + 1 way critic)
  g.wrong_label_term = True          # eq. 14: real images under wrong labels count as fake
  g.fake_labels = "uniform"          # uniform: balanced over classes (BAGAN) | real: the batch's
  g.init = "autoencoder"             # autoencoder: supervised autoencoder first | none
  g.autoencoder_epochs = 30.0        # the authors' code: 30 epochs of L1
  g.autoencoder_steps = 0            # > 0 overrides autoencoder_epochs
  g.autoencoder_loss = "l1"          # l1 (BAGAN-GP's code: mean absolute error) | l2 (BAGAN)
  g.critic_init = "encoder"          # encoder: the critic's trunk from the encoder (the paper)
  #                                    independent: from scratch (the authors' code)
  g.gp_weight = 10.0                 # lambda
  g.gp_alpha = "uniform"             # uniform: alpha ~ U(0, 1) (paper) | normal (authors' code)
  g.critic_steps = 5                 # critic updates per generator update
  g.grid_rows = 4                    # fixed noise rows in the eq. 16 grids (0 = no grids)

  train = config.train
  train.batch_size = 128
  train.epochs = 100.0               # rounds = epochs x ceil(N / batch_size)
  train.optimizer = "adam"
  train.learning_rate = 2e-4
  train.adam_betas = (0.5, 0.9)
  train.log_every = 20
  train.eval_every = 0               # unused: a GAN has no validation loss to select by
  train.checkpoint_every = 200       # rounds between checkpoints
  train.select_metric = ""
  train.sample_every = 200           # rounds between eq. 16 grids (0 = none)

  if name in ("cdragan", "wgan_gp"):
    g.init, g.fake_labels, g.wrong_label_term = "none", "real", False
    g.critic_init = "independent"
  if name == "wgan_gp":
    g.adversarial = "wasserstein"
  if name == "bagan":
    g.adversarial, g.wrong_label_term, g.gp_weight, g.critic_steps = "classifier", False, 0.0, 1
    g.autoencoder_loss = "l2"

  if size == "tiny":
    config.data.image_size = 8
    config.data.threads = 2
    m.channels, m.latent_dim, m.critic_label_dim, m.critic_hidden = (8, 16), 8, 8, 8
    g.autoencoder_steps, g.grid_rows = 3, 2
    train.update(batch_size=8, steps=4, log_every=1, checkpoint_every=2, sample_every=2,
                 keep_checkpoints=10)
  return config
