"""Entry point: python -m jaxsynth.main --config configs/<name>.py[:variant] --workdir DIR.

Before a task writes anything, main checks what it will read (tasks/preflight.py: the config,
--workdir, the data files, trained runs, then what the task derives from them) and takes the
workdir's lock. A bad input is one line `jaxsynth: error: ...` on stderr and exit code 2, with
nothing on disk changed; most fail before jax is imported, in about a second.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxsynth import config as config_lib
from jaxsynth import files
from jaxsynth.errors import JaxsynthError
from jaxsynth.tasks import TASKS, get_task, preflight

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
    preflight.check_workdir(FLAGS.workdir)
    inputs = preflight.check_inputs(config)
    # pylint: disable=import-outside-toplevel  (jax starts here, after the cheap checks)
    from jaxsynth.training import distributed, workdir as workdir_lib
    from jaxsynth.training.loop import Preempted
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           FLAGS.distributed_auto)
    task = get_task(config.task)
    try:
      with workdir_lib.lock(FLAGS.workdir):  # a second command on this workdir is refused
        preflight.check_setup(config, FLAGS.workdir, inputs)
        task(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    except Preempted as e:
      print(f"jaxsynth: {e}", file=sys.stderr)
      sys.exit(3)
  except JaxsynthError as e:
    _exit_with_error(str(e))
  except OSError as e:  # a path no check above foresaw (EACCES, ELOOP, EISDIR, ...)
    _exit_with_error(preflight.os_error_line(e))


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
