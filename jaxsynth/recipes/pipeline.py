"""The stage pipeline: a recipe is a list of stages, each run in its own directory, skipped on
re-run when complete, or taken from an existing finished run (read only).

A `Stage` has a name, the resolved config it runs with, and a `run(config, directory, stop)`
function: a task (train_diffusion, sample, filter, train_classifier, ...) handed in by the layer
above, or a recipe's own step (decoupled stage 2). Its default directory is WORKDIR/<name>/,
holding the stage's own config.json, log.jsonl and outputs; a stage is complete when that
directory holds a finished run of exactly this config (config.json equal, metrics.json written:
every task writes metrics.json last).

A stage with `reuse=DIR` is not run: DIR must hold a finished run whose config matches the
stage's (`check_reuse`, by default the keys that fix the result, see `identity`), and nothing in
DIR is ever written or removed. So one trained generator, or one baseline classifier, serves many
recipes and seeds.

`run_pipeline` prints one status line per stage before it starts (done / reused / resume /
pending), then runs the stages in order; later stages read earlier stages' outputs through
`Pipeline.dir(name)`. Killing the process anywhere and running the same command again finishes
the work: complete stages are skipped and an interrupted one resumes from its own checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable

from jaxsynth import config as config_lib
from jaxsynth.errors import ConfigError
from jaxsynth.training import workdir as workdir_lib

log = logging.getLogger(__name__)

#: Keys that change neither a run's result nor its chosen checkpoint; a reused run may differ
#: from the stage's config in these (dotted paths into the resolved config).
FREE_KEYS = ("train.log_every", "train.keep_checkpoints", "data.threads", "data.prefetch",
             "mesh.data", "task")

#: A reused generator may also differ in its `sample.*` keys: they set how a sweep draws from
#: it, not the trained weights, so one generator serves recipes that sample it differently.
GENERATOR_FREE_KEYS = FREE_KEYS + ("sample",)

RunFn = Callable[..., dict]   # (config, directory, stop=None) -> metrics


def _drop(tree: dict, dotted: str) -> None:
  *parents, leaf = dotted.split(".")
  for key in parents:
    tree = tree.get(key)
    if not isinstance(tree, dict):
      return
  tree.pop(leaf, None)


def identity(resolved: dict, free_keys=FREE_KEYS) -> dict:
  """The parts of a resolved config (as config.json holds it) that fix a run's result."""
  out = json.loads(json.dumps(resolved))
  for key in free_keys:
    _drop(out, key)
  return out


def resolved(config) -> dict:
  """`config` as its config.json would hold it."""
  return json.loads(config_lib.to_json(config))


@dataclasses.dataclass
class Stage:
  """One step of a recipe: `run(config, directory, stop=...)` into its own directory."""
  name: str
  config: object                         # the stage's resolved ml_collections ConfigDict
  run: RunFn
  reuse: str = ""                        # a finished run's directory to use instead (read only)
  check_reuse: Callable[[str], None] | None = None  # raises ConfigError if `reuse` does not fit
  directory: str = ""                    # default WORKDIR/<name>
  complete: Callable[[], bool] | None = None  # default: a finished run of `config` in directory
  reuse_key: str = ""                    # the config key that named `reuse` (for messages)
  free_keys: tuple = FREE_KEYS           # keys a reused run may differ in (check_reused_run)


def finished(directory: str, config) -> bool:
  """True when `directory` holds a finished run of exactly `config`."""
  return workdir_lib.finished_results(directory, config, overwrite=False) is not None


def _quiet_finished(directory: str, config) -> bool:
  logger = logging.getLogger(workdir_lib.__name__)
  level = logger.level
  logger.setLevel(logging.WARNING)
  try:
    return finished(directory, config)
  finally:
    logger.setLevel(level)


def check_reused_run(directory: str, config, key: str, free_keys=FREE_KEYS) -> None:
  """Raises ConfigError unless `directory` holds a finished run of `config`'s task whose result
  keys (`identity`) equal `config`'s; the message lists the differing keys."""
  where = f"config key '{key}'" if key else "a reused stage"
  path = os.path.join(directory, workdir_lib.CONFIG_FILE)
  if not os.path.isfile(os.path.join(directory, workdir_lib.METRICS_FILE)) or \
      not os.path.isfile(path):
    raise ConfigError(f"{where}: {directory} holds no finished run (no config.json and "
                      "metrics.json): finish that run first (rerun its command), or leave the key "
                      "empty to run the stage here")
  try:
    with open(path, encoding="utf-8") as f:
      theirs = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{where}: {path} cannot be read ({e}): restore it, or leave the key "
                      "empty to run the stage here") from None
  ours = resolved(config)
  if theirs.get("task") != ours.get("task"):
    raise ConfigError(f"{where}: {directory} is a {theirs.get('task')!r} run but this stage is "
                      f"{ours.get('task')!r}: give the workdir of a {ours.get('task')} run")
  changes = workdir_lib.config_diff(identity(theirs, free_keys), identity(ours, free_keys))
  if changes:
    shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    raise ConfigError(f"{where}: the run in {directory} was made with other keys (its value -> "
                      f"this stage's: {shown}); pass the same keys, or leave the key empty to run "
                      "the stage here")


class Pipeline:
  """The stages of one recipe run in `workdir`, run in order by `run`."""

  def __init__(self, name: str, workdir: str, stages: list[Stage]):
    self.name, self.workdir = name, workdir
    self.stages = {}
    for stage in stages:
      if stage.name in self.stages:
        raise ValueError(f"duplicate stage name {stage.name!r}")
      if not stage.directory:
        stage.directory = os.path.join(workdir, stage.name)
      self.stages[stage.name] = stage

  def dir(self, name: str) -> str:
    """Where stage `name`'s outputs are: its reused run, or its own directory."""
    stage = self.stages[name]
    return stage.reuse or stage.directory

  def check(self) -> None:
    """Checks every reused stage before anything runs (so a bad one changes nothing)."""
    here = os.path.realpath(self.workdir)
    for stage in self.stages.values():
      if not stage.reuse:
        continue
      there = os.path.realpath(stage.reuse)
      if os.path.commonpath([here, there]) in (here, there):
        raise ConfigError(f"config key '{stage.reuse_key}': {stage.reuse} and --workdir "
                          f"{self.workdir} contain one another, but a reused run is read only: "
                          "use separate directories")
      if stage.check_reuse is not None:
        stage.check_reuse(stage.reuse)
      else:
        check_reused_run(stage.reuse, stage.config, stage.reuse_key, stage.free_keys)

  def is_complete(self, stage: Stage) -> bool:
    """True when `stage` need not run: reused, or its output is complete."""
    if stage.reuse:
      return True
    if stage.complete is not None:
      return stage.complete()
    return _quiet_finished(stage.directory, stage.config)

  def status(self) -> dict[str, str]:
    """{stage: done | reused | resume | pending} as things stand on disk."""
    out = {}
    for stage in self.stages.values():
      if stage.reuse:
        out[stage.name] = "reused"
      elif self.is_complete(stage):
        out[stage.name] = "done"
      elif os.path.isfile(os.path.join(stage.directory, workdir_lib.CONFIG_FILE)):
        out[stage.name] = "resume"
      else:
        out[stage.name] = "pending"
    return out

  def status_line(self) -> str:
    """One line: each stage with its status (`reused` names the run)."""
    parts = []
    for name, state in self.status().items():
      extra = f" {self.stages[name].reuse}" if state == "reused" else ""
      parts.append(f"{name}: {state}{extra}")
    return f"{self.name} stages: " + " | ".join(parts)

  def run(self, stop=None, only: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Runs every stage (or those in `only`) that is not complete; {stage: its metrics}."""
    self.check()
    print(f"jaxsynth: {self.status_line()}", flush=True)
    log.info("%s", self.status_line())
    results = {}
    for stage in self.stages.values():
      if only is not None and stage.name not in only:
        continue
      if self.is_complete(stage):
        results[stage.name] = self.stage_metrics(stage.name)
        continue
      print(f"jaxsynth: {self.name}: running stage {stage.name} in {stage.directory}",
            flush=True)
      start = time.time()
      results[stage.name] = stage.run(stage.config, stage.directory, stop=stop)
      log.info("%s: stage %s finished in %.1f s", self.name, stage.name, time.time() - start)
    return results

  def stage_metrics(self, name: str) -> dict:
    """The metrics.json of stage `name` (its reused run's, or its own); {} when absent."""
    path = os.path.join(self.dir(name), workdir_lib.METRICS_FILE)
    try:
      with open(path, encoding="utf-8") as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}
