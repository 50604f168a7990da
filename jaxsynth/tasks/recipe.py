"""Task `recipe`: a synthesis recipe as a pipeline of stages (recipes/synthesis.py)."""

from __future__ import annotations

import shlex
import sys

from jaxsynth.recipes import synthesis
from jaxsynth.training import workdir as workdir_lib


def recipe(config, workdir: str, overwrite: bool = False, stop=None) -> dict:
  """Runs (or resumes) the recipe of `config.recipe.name` in `workdir`; returns its metrics."""
  from jaxsynth.tasks import get_task  # pylint: disable=import-outside-toplevel  (cycle)
  synthesis.check_config(config)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  workdir_lib.check_prepare(workdir, config, overwrite)
  workdir_lib.prepare(workdir, config, overwrite)
  tasks = {name: get_task(name) for name in ("train_diffusion", "sample", "train_classifier")}
  command = "python -m jaxsynth.main " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  return synthesis.run(config, workdir, tasks, command, stop, overwrite)
