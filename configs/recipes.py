"""The classic imbalance recipes: one variant per `recipe.name` (loss and sampler together).

  python -m jaxsynth.main --config configs/recipes.py:focal --workdir runs/focal
  python -m jaxsynth.main --config configs/recipes.py:cb_focal,npz \
      --config.data.path=../shared/data/pneumoniamnist.npz --workdir runs/pneu-cb-focal

The variant is `RECIPE` or `RECIPE,SOURCE`: without a source it is configs/default.py:classifier's job
(ResNet-18 on the long-tailed digits); with one, configs/classifier.py:SOURCE. Options are
`--config.recipe.*` (see jaxsynth/config.py) and `--config.train.label_smoothing`.

Variants:
  ce                      softmax cross-entropy
  label_smoothing         ce with train.label_smoothing = 0.1
  bce                     binary cross-entropy on one logit (two-class data only)
  weighted_ce             CE weighted by recipe.class_weights = inverse | sqrt_inverse | effective
  focal                   focal loss, recipe.gamma = 2 (Lin et al. 2017)
  cb_focal                class-balanced focal: effective-number weights (recipe.beta) x focal
  class_balanced_sampler  class drawn uniformly, then a sample of it; CE
  sqrt_sampler            class drawn with p_c ~ sqrt(n_c); CE
  progressive_sampler     instance- to class-balanced over the epochs (Kang et al. 2020); CE
  weighted_sampler        class drawn with p_c ~ n_c^recipe.sampler_q (0: balanced); CE
  weighted_ce_sampler     weighted sampler and weighted CE together (as DiffuPT tests it)

Decoupled two-stage recipes (Kang et al. 2020): stage 1 is `ce` with instance-balanced
sampling (WORKDIR/stage1), stage 2 (WORKDIR/stage2) starts from its best checkpoint and runs
recipe.stage2_epochs (or recipe.stage2_steps) with class-balanced sampling at
recipe.stage2_learning_rate (0 = train.learning_rate), recipe.stage2_schedule:
  crt                     re-initialise the head, re-train it on frozen features
  lws                     learn a per-class logit scale f_i; backbone and head frozen
  tau_norm                no training: head rows w_i / ||w_i||^tau, tau from recipe.tau_grid on val
  multistage_sampler      fine-tune the whole network at a tenth of the stage-1 rate (DiffuPT's
                          "multi-stage + sampler" baseline)
Option recipe.stage1_workdir=DIR: stage 1 is the finished `ce` run in DIR, read only, not trained.
"""

from configs import classifier, default

ALIASES = {"label_smoothing": "ce"}


def get_config(variant: str | None = None):
  """Returns the classifier config of recipe `variant` ("RECIPE" or "RECIPE,SOURCE")."""
  recipe, _, source = (variant or "ce").partition(",")
  name = ALIASES.get(recipe, recipe)  # an unknown name is a one-line ConfigError at run time
  config = classifier.get_config(source) if source else default.get_config("classifier")
  config.recipe.name = name
  if recipe == "label_smoothing":
    config.train.label_smoothing = 0.1
  if name in ("weighted_ce", "weighted_ce_sampler"):
    config.recipe.class_weights = "inverse"
  if name in ("focal", "cb_focal"):
    config.recipe.gamma = 2.0
  if name == "cb_focal":
    config.recipe.beta = 0.9999
  if name in ("weighted_sampler", "weighted_ce_sampler"):
    config.recipe.sampler_q = 0.0
  if name == "multistage_sampler":
    # Fixed here: a later --config.train.learning_rate does not move it.
    config.recipe.stage2_learning_rate = 0.1 * config.train.learning_rate
  return config
