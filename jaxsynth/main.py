"""Entry point: python -m jaxsynth.main --config configs/<name>.py[:variant] --workdir DIR."""

from __future__ import annotations

import logging
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxsynth import config as config_lib
from jaxsynth.errors import JaxsynthError
from jaxsynth.tasks import TASKS, get_task
from jaxsynth.training.loop import Preempted
from jaxsynth.training import distributed

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
  text = text.replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
  return " ".join(text.split())


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line; a bad flag, config file, key or type is one line and exit 2."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.task  # the config file loads lazily: surface its errors here
    return rest
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, IOError) as e:
    text = _one_line(e)
    typo = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    if typo:
      message = (f"unknown config key '{typo.group(2)}' (did you mean '{typo.group(1)}'?); "
                 "configs are locked, so every key must exist in the config file")
    elif isinstance(e, (KeyError, AttributeError)):
      message = (f"unknown config key {text.strip(chr(34))}; configs are locked, so every key "
                 "must exist in the config file")
    else:
      message = text
    print(f"jaxsynth: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  """Validates the config and runs its task; project errors exit with one line, code 2."""
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # quiet the libraries (orbax logs every save)
  logging.getLogger("jaxsynth").setLevel(logging.INFO)
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           FLAGS.distributed_auto)
    config = FLAGS.config
    config_lib.validate(config, TASKS)
    get_task(config.task)(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
  except JaxsynthError as e:
    print(f"jaxsynth: error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:
    print(f"jaxsynth: {e}", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
