"""Tasks `train_classifier` and `evaluate`: one classifier run, or a decoupled two-stage recipe
when `recipe.name` is one (crt, lws, tau_norm, multistage_sampler)."""

from __future__ import annotations

from jaxsynth.recipes import classifier, decoupled
from jaxsynth.training.loop import StopRequest


def train_and_evaluate(config, workdir: str, overwrite: bool = False,
                       stop: StopRequest | None = None) -> dict:
  """Trains the classifier of `config` (resuming an unfinished run), then evaluates it."""
  if config.recipe.name in decoupled.RECIPES:
    return decoupled.train_and_evaluate(config, workdir, overwrite, stop)
  return classifier.train_single(config, workdir, overwrite, stop)


def evaluate(config, workdir: str, overwrite: bool = False) -> dict:
  """Evaluates a trained run (`evaluate.run_dir`, default the workdir) into `workdir`."""
  if config.recipe.name in decoupled.RECIPES:
    return decoupled.evaluate(config, workdir, overwrite)
  return classifier.evaluate_single(config, workdir, overwrite)
