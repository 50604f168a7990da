"""Synthesis recipes (task `recipe`): generate what the minority classes lack, train a classifier
on real + synthetic data, and compare it with the baseline trained on the real data alone.

  python -m jaxsynth.main --config configs/synthesis.py:augment --workdir runs/augment
  python -m jaxsynth.main --config configs/synthesis.py:augment_tiny --workdir /tmp/aug

Variants: `augment_ldm`, `pretrain_finetune_ldm` and `diffupt_ldm` (each also `_tiny`) are those
recipes with a latent diffusion generator (configs/diffupt_ldm.py and configs/histo_ldm.py are
the published sizes). Its autoencoder is trained by the recipe's first stage, `autoencoder`
(generator.autoencoder.model / .train / .loss: configs/autoencoder.py's keys, KL by default),
or taken from a finished `train_autoencoder` run on the same data keys
(generator.latent.autoencoder_run=DIR; then no autoencoder stage runs).

Variants: `augment` (ResNet-18 on the long-tailed digits, a 16 px UNet generator) and
`augment_tiny` (seconds; what the tests run). Keys:
  data, seed, mesh            shared by every stage (the real data set)
  model, train, evaluate      the classifier stages (baseline and recipe)
  recipe.name                 augment
  recipe.classifier           the classic recipe (loss and sampler) of the classifier stages
  recipe.generator_workdir    a finished train_diffusion run to use instead of training one
  recipe.baseline_workdir     a finished train_classifier run to use as the baseline
  recipe.report_features      the feature space of report.md's per-class FID/KID: "" = the
                              baseline classifier's features, inception:WEIGHTS, pixels, none
  generator.seed              the generator's training seed; -1 = seed. Pin it (e.g. 0) to
                              share one generator (recipe.generator_workdir) across seeds
  generator.model / .train / .diffusion / .sample   the generator and its sweep
                              (generator.sample.budget=balance fills every class up to the
                              largest; budget=counts with class_counts adds N per class)
Stages, each in WORKDIR/<stage>/: generator -> sample -> baseline -> augmented; then
WORKDIR/report.md and metrics.json.

`equal_scale` (FairDiff's equal-scale data balancing for a classifier; HAM10000 at 64 px with
groups = acquisition site, data.path=../shared/data/ham10000_64.npz) and `equal_scale_tiny`
(seconds; give --config.data.path=GROUPED.npz, an .npz with {split}_groups):

  python -m jaxsynth.main --config configs/synthesis.py:equal_scale --workdir runs/equal_scale

Every group of the train split (group id = column 0 of {split}_groups) is brought to N_target:
larger groups subsampled (a fixed draw from `seed`), smaller ones filled with synthetic samples
of their (class, group) cells. Stages: generator -> sample -> baseline -> balanced; report.md
adds the training set per group and per-group test figures with equity-scaled (ES) metrics.
Keys (besides the above):
  recipe.target               N_target per group; 0 = the largest group's size
  recipe.condition            the generator's condition: class_group (group is refused: its
                              samples have no class label); sets generator.diffusion.condition
  data.train_indices_file     set by the recipe for the balanced stage only (the kept real
                              samples, WORKDIR/balanced/train_indices-<digest>.npy): leave it ""

`pretrain_finetune` and `diffupt` (DiffuPT: pretrain the classifier on a generated set, then
fine-tune it on the real data; the long-tailed digits like `augment`), `*_tiny` in seconds:

  python -m jaxsynth.main --config configs/synthesis.py:diffupt --workdir runs/diffupt
  python -m jaxsynth.main --config configs/synthesis.py:pretrain_finetune_tiny --workdir /tmp/pf

Stages: generator -> sample -> baseline [-> filter, diffupt] -> pretrain (train_classifier on
the synthetic set alone, data.synthetic.mix=only; selects on the real val split) -> finetune
(train_classifier on the real train split from pretrain's chosen checkpoint, train.init_from);
report.md compares finetune with the baseline (jaxsynth/recipes/diffupt.py). Keys:
  recipe.pretrain_size        synthetic samples drawn for pretraining, in all
  recipe.ratio                parts per class of them, "30-70" (DiffuPT Table 6: 30-70 ...
                              70-30; one part per class); "" = balanced. Split by the largest-
                              remainder rule; the sweep's sample.class_counts come from it
  recipe.pretrain_lr          pretrain stage's train.learning_rate (1e-4)
  recipe.finetune_lr          finetune stage's train.learning_rate (1e-5)
  recipe.cfg_scale            diffupt: the sweep's classifier-free guidance scale (3)
  recipe.filter               diffupt: none | classifier | realism | class_realism (the filter
                              task's classifier / realism / realism_class), judged by (or with
                              the features of) the baseline stage's classifier; none = no stage
  filter.*                    diffupt: the filter's other keys (filter.min_confidence,
                              threshold, k, features, real, ...; configs/filter.py); filter.name
                              and filter.classifier are set by the recipe: leave them empty
The other train.* keys (steps, schedule, batch) are those of every classifier stage.

`online` (IOIS, Li et al. 2024, Algorithm 1: online image synthesis with accuracy-adaptive
sampling; the long-tailed digits like `augment`) and `offline` (its control: one guided set
from the fixed baseline classifier, then ordinary training), `*_tiny` in seconds:

  python -m jaxsynth.main --config configs/synthesis.py:online --workdir runs/online
  python -m jaxsynth.main --config configs/synthesis.py:online_tiny --workdir /tmp/online

Stages: generator -> baseline -> online (every epoch: per-class accuracy of the current
classifier on the train split -> budgets -> classifier-guided synthesis from the current
classifier -> one epoch over real + pool; WORKDIR/online/epochs/epoch-EEE/ holds each epoch's
set, classifier checkpoint and epoch.json); offline: generator -> baseline -> guided -> offline.
The online classifier starts from the baseline's init and is evaluated at its last epoch (no
checkpoint is chosen on val, which IOIS never reads during training), so these variants also
evaluate the baseline's latest checkpoint (evaluate.checkpoint=latest) and train it for
train.epochs = recipe.epochs. jaxsynth/recipes/iois.py has the details. Keys:
  recipe.epochs               E, the online stage's epochs (each one pass over real + pool)
  recipe.budget               K, synthetic images per epoch (eq. 5), at least the class count
  recipe.aas                  true: k = Softmax(1 - train accuracy)·K (eq. 5, AAS); false:
                              K split evenly over the classes (IOIS "+OIS" alone)
  recipe.pool                 replace: train on the newest epoch's set; accumulate: on every
                              set drawn so far
  recipe.guidance_scale       s of classifier guidance, eps - s·grad log p(y|x) (eq. 4); 0 = none.
                              The guide is the classifier in training, on clean images
  recipe.guidance_on          x_t: the gradient at the noisy image (eq. 4); x0: at the
                              predicted clean image (in the classifier's training domain)
  recipe.denoiser_label       class: the class-conditional generator is given the class;
                              null: its learned null label (unconditional; needs
                              generator.diffusion.label_dropout > 0 and sample.cfg_scale=0)
  generator.sample.*          the guided sampler (sampler, num_steps, eta, spacing, clip_x0,
                              cfg_scale: 0 here, classifier guidance only as in IOIS,
                              batch_size, shard_size, dtype, checkpoint)
"""

import ml_collections

from configs import default, diffusion
from jaxsynth.synthesis.filters import filter_config

VARIANTS = ("augment", "augment_tiny", "equal_scale", "equal_scale_tiny")
VARIANTS += ("pretrain_finetune", "pretrain_finetune_tiny", "diffupt", "diffupt_tiny")
VARIANTS += ("online", "online_tiny", "offline", "offline_tiny")
#: Latent diffusion generators: the recipe's generator denoises the cached latents of a finished
#: train_autoencoder run (generator.latent.autoencoder_run, configs/autoencoder.py).
LDM_RECIPES = ("augment", "pretrain_finetune", "diffupt")
VARIANTS += tuple(f"{name}_ldm{tiny}" for name in LDM_RECIPES for tiny in ("", "_tiny"))
#: GAN generators (BAGAN-GP, configs/bagan_gp.py): the recipes that only sample a sweep.
GAN_RECIPES = ("augment", "pretrain_finetune", "diffupt")
VARIANTS += tuple(f"{name}_gan{tiny}" for name in GAN_RECIPES for tiny in ("", "_tiny"))
#: The grouped data set of `equal_scale` (../shared/data/README.md): HAM10000 at 64 px, groups =
#: acquisition site (4 sites, train 2769 / 2362 / 1589 / 311). The config loads without it.
HAM10000 = "../shared/data/ham10000_64.npz"


def get_config(variant: str | None = None):
  """Returns the synthesis recipe config of `variant`."""
  variant = variant or "augment"
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/synthesis.py variant {variant!r}; use one of "
                     f"{', '.join(VARIANTS)}")
  config = default.get_config("classifier")
  config.task = "recipe"
  config.recipe.name = variant.removesuffix("_tiny").removesuffix("_ldm").removesuffix("_gan")
  config.recipe.classifier = "ce"
  config.recipe.generator_workdir = ""
  config.recipe.baseline_workdir = ""
  config.recipe.report_features = ""   # report's FID/KID features: "" = the baseline classifier
  gen = diffusion.get_config("unet")
  config.generator = ml_collections.ConfigDict()
  for key in ("model", "train", "diffusion", "sample"):
    config.generator[key] = gen[key]
  config.generator.seed = -1           # the generator's training seed; -1 = config.seed
  config.generator.train.steps = 3000
  config.generator.sample.budget = "balance"
  config.generator.sample.num_steps = 50
  if variant.endswith("_tiny"):
    config.data.image_size = 8
    config.data.threads = 2
    config.model.width = 8
    config.train.update(batch_size=16, eval_batch_size=32, steps=6, eval_every=3, log_every=1)
    g = config.generator
    g.model.unet.update(channels=(16, 32), res_blocks=1, attn_resolutions=(), head_dim=8,
                        norm_groups=8, mid_attention=False)
    g.diffusion.update(num_timesteps=100, sample_steps=5, grid_per_class=2, val_batches=1)
    g.train.update(batch_size=16, eval_batch_size=32, steps=6, log_every=1, eval_every=3,
                   checkpoint_every=3, sample_every=0, keep_checkpoints=2)
    g.sample.update(num_steps=5, shard_size=64, batch_size=32, budget="counts",
                    class_counts=(4,) * 10)
  if variant.removesuffix("_tiny").endswith("_ldm"):
    latent_generator(config, tiny=variant.endswith("_tiny"))
  if variant.removesuffix("_tiny").endswith("_gan"):
    gan_generator(config, tiny=variant.endswith("_tiny"))
  if config.recipe.name == "equal_scale":
    equal_scale(config, tiny=variant.endswith("_tiny"))
  if config.recipe.name in ("pretrain_finetune", "diffupt"):
    pretrain_finetune(config, tiny=variant.endswith("_tiny"))
  if config.recipe.name in ("online", "offline"):
    iois(config, tiny=variant.endswith("_tiny"))
  return config


def latent_generator(config, tiny: bool, autoencoder_name: str = "kl") -> None:
  """*_ldm variants: the generator is a latent diffusion model over an autoencoder's latents
  (the train and val splits are encoded once into the generator's WORKDIR/latents). The
  autoencoder is a finished run (generator.latent.autoencoder_run) or, when that is empty,
  trained by the recipe's first stage (WORKDIR/autoencoder) from generator.autoencoder.*."""
  from configs import autoencoder  # pylint: disable=import-outside-toplevel
  config.generator.latent = latent = ml_collections.ConfigDict()
  latent.autoencoder_run = ""            # a finished train_autoencoder --workdir on the recipe's
  #                                        data keys; "" = train one in stage `autoencoder`
  latent.checkpoint = "best"             # best (highest val PSNR) | latest
  ae = autoencoder.get_config(autoencoder_name + (":tiny" if tiny else ""))
  config.generator.autoencoder = keys = ml_collections.ConfigDict()
  for key in ("model", "train", "loss"):  # configs/autoencoder.py's keys of that stage
    keys[key] = ae[key]
  if tiny:
    config.data.image_size = ae.data.image_size   # 12 px: SSIM's 11 px window fits
    keys.train.sample_every = 0
  else:
    # LDM's 16 px denoiser of 4x4 latents: attention at the latent's 4 px and in the middle
    config.generator.model.unet.attn_resolutions = (4,)


def gan_generator(config, tiny: bool, name: str = "bagan_gp") -> None:
  """*_gan variants: the generator is a BAGAN-GP (task train_gan; configs/bagan_gp.py's
  generator.model / .train / .gan keys); its sweep keeps generator.sample's budget, shard and
  batch keys (the diffusion sampler's keys do not apply to it)."""
  from configs import bagan_gp  # pylint: disable=import-outside-toplevel
  gan = bagan_gp.get_config(name + (":tiny" if tiny else ""))
  g = config.generator
  del g["diffusion"]
  for key in ("model", "train", "gan"):
    g[key] = gan[key]
  if tiny:
    config.data.image_size = gan.data.image_size


def equal_scale(config, tiny: bool) -> None:
  """FairDiff's equal-scale balancing: grouped .npz data, a (class, group)-cell generator."""
  config.recipe.condition = "class_group"   # the generator's condition (group is refused)
  config.recipe.target = 0                  # N_target per group; 0 = the largest group's size
  config.generator.diffusion.condition = "class_group"
  config.generator.sample.class_counts = ()  # the recipe sets sample.cell_counts from its plan
  config.data.update(source="npz", imbalance_ratio=0.0, class_counts=())
  if tiny:
    config.data.path = ""                   # give --config.data.path=GROUPED.npz (tests do)
    return
  config.data.update(path=HAM10000, image_size=64, channels=3)
  config.model.update(width=64)
  config.train.update(batch_size=128, epochs=30.0, eval_every=0, log_every=20)
  g = config.generator
  g.model.unet.update(channels=(64, 128, 256), attn_resolutions=(16,), norm_groups=32)
  g.train.update(batch_size=64, steps=30000, eval_every=2000, checkpoint_every=2000,
                 sample_every=5000)


def pretrain_finetune(config, tiny: bool) -> None:
  """pretrain_finetune / diffupt: the pretraining set's size and class ratio, the two rates;
  diffupt adds guidance and the filter."""
  r = config.recipe
  r.pretrain_size = 40 if tiny else 5000   # synthetic samples to pretrain on, in all
  r.ratio = ""                             # parts per class, e.g. "30-70"; "" = balanced
  r.pretrain_lr = 1e-4
  r.finetune_lr = 1e-5
  if r.name != "diffupt":
    return
  r.cfg_scale = 3.0                        # classifier-free guidance of the sweep (DiffuPT: 3)
  r.filter = "classifier"                  # none | classifier | realism | class_realism
  config.filter = filter_config()          # the filter's other keys; name, classifier: the recipe's
  if tiny:
    config.filter.batch_size = 32


def iois(config, tiny: bool) -> None:
  """online / offline (IOIS): the per-epoch budget K, AAS, pool, guidance and epochs."""
  r = config.recipe
  r.epochs = 2 if tiny else 15             # E; the baseline trains as long (train.epochs)
  r.budget = 20 if tiny else 200           # K synthetic images per epoch (eq. 5)
  if tiny and r.name == "offline":
    r.budget = 60                          # a few per class for report.md's per-class FID/KID
  r.aas = True                             # Softmax(1 - acc)·K; false = uniform ("+OIS")
  r.pool = "replace"                       # replace | accumulate
  r.guidance_scale = 1.0                   # s of eq. 4
  r.guidance_on = "x_t"                    # x_t (eq. 4) | x0 (at the predicted clean image)
  r.denoiser_label = "class"               # class | null (unconditional)
  config.train.update(epochs=float(r.epochs), steps=0, eval_every=0)
  config.evaluate.checkpoint = "latest"    # both classifiers are evaluated at their last epoch
  config.generator.sample.cfg_scale = 0.0  # classifier guidance only, as in IOIS
  if tiny:
    config.generator.sample.update(num_steps=5, batch_size=32, shard_size=64)
