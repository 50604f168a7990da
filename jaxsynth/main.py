"""Entry point: python -m jaxsynth.main --config configs/<name>.py[:variant] --workdir DIR.

Before a task writes anything, main checks what it will read: the config, --workdir, the data
files (every split, every listed file's header) and trained runs (config.json, checkpoints),
then builds the model, mesh and schedule the task derives (`check_inputs`, `check_setup`). A bad
input is one line `jaxsynth: error: ...` on stderr and exit code 2, with nothing on disk changed.
The first checks run before jax is imported, so most bad inputs fail in about a second.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import sys
import threading

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxsynth import config as config_lib
from jaxsynth import files
from jaxsynth.data.sources import check_data
from jaxsynth.errors import CheckpointError, ConfigError, DataError, JaxsynthError
from jaxsynth.tasks import TASKS, get_task

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_bool("overwrite", False, "Replace a finished run in --workdir.")
flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", -1, "Multi-host: index of this process.")
flags.DEFINE_bool("distributed_auto", False, "Multi-host: let JAX detect SLURM / TPU VM.")
flags.mark_flags_as_required(["config", "workdir"])


def _one_line(error: BaseException) -> str:
  text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  if "Traceback (most recent call last)" in text:  # a config file's error, as ml_collections has it
    head, _, trace = text.partition("Traceback (most recent call last)")
    last = [line for line in trace.splitlines() if line.strip()]
    text = head + (last[-1].strip() if last else "")
  text = text.replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
  return " ".join(text.split())


def _config_arg(argv: list[str]) -> str:
  """The --config value on the command line (for messages)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return "(none)"


def _expected(key: str) -> str:
  """What config key `key` takes, from its default in the config file."""
  try:
    default = FLAGS["config"].value
    for part in key.split("."):
      default = default[part]
  except Exception:  # pylint: disable=broad-except  (the config did not load: no hint)
    return "give a value of the key's type"
  if isinstance(default, bool):
    return "use True or False"
  if isinstance(default, (tuple, list)):
    return (f"use a tuple in quotes, e.g. --config.{key}='(1, 2)' (the default is "
            f"{tuple(default)!r})")
  name = type(default).__name__
  return f"use {'an' if name[0] in 'aeiou' else 'a'} {name}, like the default {default!r}"


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line; a bad flag, config file, key or type is one line and exit 2."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.task  # the config file loads lazily: surface its errors here
    return rest
  except Exception as e:  # pylint: disable=broad-except  (a config file is code: any error)
    text = _one_line(e)
    typo = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    if typo:
      message = (f"unknown config key '{typo.group(2)}' (did you mean '{typo.group(1)}'?); "
                 "configs are locked, so every key must exist in the config file")
    elif isinstance(e, (KeyError, AttributeError)):
      message = (f"unknown config key {text.strip(chr(34))}; configs are locked, so every key "
                 "must exist in the config file")
    elif bad_value := re.match(r"flag --config\.([\w.]+)=(.*?): (.+)$", text):
      key, raw, detail = bad_value.groups()
      message = (f"config key '{key}' has bad value {raw!r} (--config.{key}={raw}: {detail}): "
                 f"{_expected(key)}")
    elif isinstance(e, (flags.Error, TypeError, ValueError, IOError)):
      message = text
    else:
      message = (f"config file {_config_arg(argv)} cannot be loaded ({type(e).__name__}: "
                 f"{text}): fix the file")
    print(f"jaxsynth: error: {message}", file=sys.stderr)
    sys.exit(2)


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
    return {"data": check_data(config.data, splits, config.seed, every_class=False)}
  if task == "sample" and config.sample.run_dir:
    run_dir = config.sample.run_dir
    trained = config_lib.read_run_config(run_dir, "train_diffusion", "sample.run_dir")
    if not isinstance(trained.get("diffusion"), dict):
      raise CheckpointError(f"{os.path.join(run_dir, config_lib.CONFIG_FILE)} has no "
                            "'diffusion' keys: set sample.run_dir to a train_diffusion --workdir")
    run = ml_collections.ConfigDict(trained)
    try:
      data = check_data(run.data, ["train"], run.seed, every_class=False)
    except DataError as e:
      raise DataError(f"the data of the trained run {run_dir} (its config.json) is not usable: "
                      f"{e}; restore the files the run was trained on") from None
    which = config.sample.checkpoint
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
    from jaxsynth.tasks import classifier
    classifier.build_setup(config)
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
  elif task == "sample":
    from jaxsynth.synthesis import sweep
    from jaxsynth.tasks import sample
    sample.check_config(config, workdir)
    if "run" in inputs:
      train = inputs["data"]["train"]
      sweep.class_budget(config.sample, train.num_classes, train.class_counts())


def _os_error(e: OSError) -> str:
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


def _unraisable_hook(args) -> None:
  """Tensorstore's callbacks after a failed orbax restore hit a closed event loop; only noise."""
  if isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(args.exc_value):
    return
  sys.__unraisablehook__(args)


def _thread_excepthook(args) -> None:
  """A full disk fails orbax's writer threads too: the main thread reports it in one line."""
  if files.is_no_space(args.exc_value):
    return
  threading.__excepthook__(args)


def main(argv):
  """Checks the inputs, then runs the task; project errors exit with one line, code 2."""
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # quiet the libraries (orbax logs every save)
  logging.getLogger("jaxsynth").setLevel(logging.INFO)
  threading.excepthook = _thread_excepthook
  sys.unraisablehook = _unraisable_hook
  try:
    config = FLAGS.config
    config_lib.validate(config, TASKS)
    check_workdir(FLAGS.workdir)
    inputs = check_inputs(config)
    # pylint: disable=import-outside-toplevel  (jax starts here, after the cheap checks)
    from jaxsynth.training import distributed, workdir as workdir_lib
    from jaxsynth.training.loop import Preempted
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           FLAGS.distributed_auto)
    task = get_task(config.task)
    try:
      with workdir_lib.lock(FLAGS.workdir):  # a second command on this workdir is refused
        check_setup(config, FLAGS.workdir, inputs)
        task(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    except Preempted as e:
      print(f"jaxsynth: {e}", file=sys.stderr)
      sys.exit(3)
  except JaxsynthError as e:
    _exit_with_error(str(e))
  except OSError as e:  # a path no check above foresaw (EACCES, ELOOP, EISDIR, ...)
    _exit_with_error(_os_error(e))


def _exit_with_error(message: str) -> None:
  """Prints the one line and exits 2 at once: a failed orbax save or restore leaves writer
  threads and event loops that would print tracebacks on a normal interpreter exit."""
  print(f"jaxsynth: error: {message}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  logging.shutdown()
  os._exit(2)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
