"""Checks before a task writes anything: --workdir, the data and trained runs a task reads
(before jax is imported), then what the task derives from the config (model, schedule, budget).

Each raises the project's own errors with one line naming the file or key and the fix; main
calls them in order (`check_workdir`, `check_inputs`, `check_setup`) and then runs the task.
"""

from __future__ import annotations

import errno
import os
import stat

import ml_collections

from jaxsynth import config as config_lib
from jaxsynth.data import conditions
from jaxsynth.data.sources import check_data
from jaxsynth.errors import CheckpointError, ConfigError, DataError


def check_workdir(workdir: str) -> None:
  """Raises CheckpointError unless --workdir is a writable directory or can be created."""
  fix = "choose another --workdir"
  try:
    mode = os.stat(workdir).st_mode
  except FileNotFoundError:
    if os.path.lexists(workdir):
      raise CheckpointError(f"--workdir {workdir} is a broken symlink: fix or remove the link, "
                            f"or {fix}") from None
    return
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise CheckpointError(f"--workdir {workdir} is a symlink loop ({e.strerror}): remove the "
                            f"link, or {fix}") from None
    if e.errno == errno.ENOTDIR:
      raise CheckpointError(f"--workdir {workdir} lies inside a file (a parent of it is not a "
                            f"directory): {fix}") from None
    raise CheckpointError(f"--workdir {workdir} cannot be used ({e.strerror}): {fix}") from None
  if not stat.S_ISDIR(mode):
    raise CheckpointError(f"--workdir {workdir} is a file, not a directory: {fix}, or move the "
                          "file away")
  if not os.access(workdir, os.R_OK | os.W_OK | os.X_OK):
    raise CheckpointError(f"--workdir {workdir} is not writable (permission denied): fix its "
                          f"permissions, or {fix}")


def _classifier_splits(config) -> list[str]:
  """The data splits train_classifier / evaluate read."""
  val = config.task == "train_classifier" or config.evaluate.threshold != "argmax"
  return ["train"] + (["val"] if val else []) + list(config.evaluate.splits)


def check_inputs(config) -> dict:
  """Checks the data and trained runs the task reads, before jax starts; {"data", "run"}."""
  task = config.task
  if task in ("train_classifier", "evaluate"):
    return {"data": check_data(config.data, _classifier_splits(config), config.seed)}
  if task == "train_diffusion":
    splits = ["train"] + (["val"] if config.diffusion.val_batches > 0 else [])
    data = check_data(config.data, splits, config.seed, every_class=False)
    mode = config.diffusion.get("condition", "class")
    if mode != "class":  # group ids: every split read must have them, within train's groups
      conditioning = conditions.from_source(mode, data["train"])
      for source in data.values():
        conditions.condition_ids(conditioning, source)
    return {"data": data}
  if task == "train_autoencoder":
    return {"data": check_data(config.data, ["train", "val"], config.seed, every_class=False)}
  if task == "train_gan":
    return {"data": check_data(config.data, ["train"], config.seed, every_class=False)}
  if task == "filter":
    from jaxsynth.synthesis.filters import check_filter_config  # pylint: disable=import-outside-toplevel
    from jaxsynth.tasks.filter import input_sweep  # pylint: disable=import-outside-toplevel
    check_filter_config(config.filter, "filter", require=True)
    input_sweep(config)
    return {}
  if task == "sample":
    from jaxsynth.synthesis.filters import check_filter_config  # pylint: disable=import-outside-toplevel
    check_filter_config(config.sample.filter, "sample.filter")
  if task == "sample" and config.sample.run_dir:
    run_dir = config.sample.run_dir
    trained = config_lib.read_run_config(run_dir, ("train_diffusion", "train_gan"),
                                         "sample.run_dir")
    if trained["task"] == "train_diffusion" and not isinstance(trained.get("diffusion"), dict):
      raise CheckpointError(f"{os.path.join(run_dir, config_lib.CONFIG_FILE)} has no "
                            "'diffusion' keys: set sample.run_dir to a train_diffusion --workdir")
    run = ml_collections.ConfigDict(trained)
    try:
      data = check_data(run.data, ["train"], run.seed, every_class=False)
    except DataError as e:
      raise DataError(f"the data of the trained run {run_dir} (its config.json) is not usable: "
                      f"{e}; restore the files the run was trained on") from None
    which = config.sample.checkpoint
    if trained["task"] == "train_gan" and which != "latest":
      raise CheckpointError(f"config key 'sample.checkpoint' = {which!r}: a train_gan run keeps "
                            "only 'latest' checkpoints; set sample.checkpoint=latest")
    if which in ("latest", "best") and not config_lib.checkpoint_steps(run_dir, which):
      hint = " (one needs diffusion.val_batches > 0 in training)" if which == "best" else ""
      raise CheckpointError(f"no '{which}' checkpoint in "
                            f"{os.path.join(run_dir, 'checkpoints', which)}{hint}: train the run "
                            "first, or set sample.checkpoint=latest")
    return {"data": data, "run": run}
  return {}


def check_setup(config, workdir: str, inputs: dict) -> None:
  """Builds what the task derives from the config (model, mesh, schedule, class budget)."""
  # pylint: disable=import-outside-toplevel  (these import jax)
  task = config.task
  if task in ("train_classifier", "evaluate"):
    from jaxsynth.recipes import classifier
    setup = classifier.build_setup(config)
    if task == "train_classifier" and config.train.get("init_from", ""):
      classifier.check_init_from(config, setup.num_classes, workdir)
  elif task == "train_diffusion":
    from jaxsynth.diffusion.schedules import make_schedule
    from jaxsynth.models.denoisers import check_image_shape
    from jaxsynth.tasks import diffusion
    diffusion.check_config(config)
    d = config.diffusion
    try:
      make_schedule(d.schedule, d.num_timesteps)
    except ConfigError as e:
      raise ConfigError(f"config keys 'diffusion.schedule' ({d.schedule!r}) and "
                        f"'diffusion.num_timesteps' ({d.num_timesteps}) give no valid noise "
                        f"schedule ({e}): use more timesteps, e.g. 1000") from None
    check_image_shape(config.model, diffusion.build_setup(config).image_shape)
  elif task == "train_autoencoder":
    from jaxsynth.tasks import autoencoder
    autoencoder.build_setup(config)
  elif task == "train_gan":
    from jaxsynth.tasks import gan
    gan.check_setup(config)
  elif task == "sample":
    from jaxsynth.tasks import sample
    sample.check_config(config, workdir)
    if "run" in inputs:
      sample.sweep_budget(config, inputs["run"], inputs["data"]["train"])


def os_error_line(e: OSError) -> str:
  """One line for an OSError no check caught: the file, what is wrong, what to do."""
  fixes = {errno.ELOOP: "remove or fix the symlink loop",
           errno.EACCES: "fix its permissions, or choose another path",
           errno.EPERM: "fix its permissions, or choose another path",
           errno.EISDIR: "a file was expected there: remove or rename the directory",
           errno.ENOTDIR: "a directory was expected there: remove or rename the file",
           errno.EEXIST: "remove or rename it, or choose another path",
           errno.ENOSPC: "free some space and rerun the command (a run resumes)",
           errno.EROFS: "choose a writable location"}
  where = e.filename if e.filename is not None else "a file"
  return f"{where}: {e.strerror or e}; {fixes.get(e.errno, 'check the path and rerun')}"
