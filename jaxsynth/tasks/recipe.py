"""Task `recipe`: a synthesis recipe as a pipeline of stages (recipes/synthesis.py)."""

from __future__ import annotations

import os
import shlex
import sys

from jaxsynth import config as config_lib
from jaxsynth.data.sources import check_data
from jaxsynth.errors import ConfigError
from jaxsynth.recipes import synthesis
from jaxsynth.synthesis import filters
from jaxsynth.training import workdir as workdir_lib

STAGE_TASKS = ("train_autoencoder", "train_diffusion", "train_gan", "sample", "filter",
               "train_classifier", "evaluate")


def check_stages(pipe) -> None:
  """Checks every stage's config before the first stage runs; the error names the stage."""
  # pylint: disable-next=import-outside-toplevel
  from jaxsynth.tasks import TASKS, autoencoder, diffusion, gan, sample
  pending = {os.path.abspath(s.directory) for s in pipe.stages.values() if not s.reuse}
  for stage in pipe.stages.values():
    if stage.reuse:
      continue
    c = stage.config
    try:
      config_lib.validate(c, TASKS)
      if c.task == "train_autoencoder":
        autoencoder.check_config(c)
        check_data(c.data, ["train", "val"], c.seed, every_class=False)
      elif c.task == "train_diffusion":
        diffusion.check_config(c)
      elif c.task == "train_gan":
        gan.check_config(c)
      elif c.task == "train_classifier":
        check_data(c.data, ["train", "val", *c.evaluate.splits], c.seed)
      elif c.task == "sample":
        sample.check_config(c, stage.directory)
      elif c.task == "filter":
        f = c.filter.copy_and_resolve_references()
        if os.path.abspath(f.classifier) in pending:   # an earlier stage's output, made first
          f.classifier = os.sep
        filters.check_filter_config(f, "filter", require=True)
    except ConfigError as e:
      raise ConfigError(f"stage {stage.name} of recipe {pipe.name}: {e} (set it under the "
                        "recipe config's keys for that stage, e.g. generator.* for the "
                        "generator)") from None
  pipe.check()


def recipe(config, workdir: str, overwrite: bool = False, stop=None) -> dict:
  """Runs (or resumes) the recipe of `config.recipe.name` in `workdir`; returns its metrics."""
  from jaxsynth.tasks import get_task  # pylint: disable=import-outside-toplevel  (cycle)
  synthesis.check_config(config)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  tasks = {name: get_task(name) for name in STAGE_TASKS}
  check_stages(synthesis.pipeline(config, workdir, tasks))
  workdir_lib.check_prepare(workdir, config, overwrite)
  workdir_lib.prepare(workdir, config, overwrite)
  command = "python -m jaxsynth.main " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  return synthesis.run(config, workdir, tasks, command, stop, overwrite)
