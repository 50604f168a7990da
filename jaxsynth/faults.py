"""Failpoints of the fault-injection suite (tests/faults, bench/faults.py).

`point(name)` marks an instant where a kill is most likely to leave a run inconsistent (between
a temporary write and its rename, between two checkpoint saves, ...). With the environment
variable JAXSYNTH_FAULT="name" (or "name@n": the n-th time the point is reached) set, the
process SIGKILLs itself there, as a preempting scheduler would; unset, a point does nothing.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "JAXSYNTH_FAULT"

# Every failpoint in the code, with the instant it stands for (the harness tries each).
POINTS = {
    "checkpoint.save_in_flight": "orbax is writing a checkpoint (temporary directory, async)",
    "checkpoint.before_commit": "a checkpoint is finalised but its checksums are not written",
    "checkpoint.prune": "an old checkpoint is half deleted",
    "loop.between_best_and_latest": "the best checkpoint of a step is saved, the latest is not",
    "loop.after_checkpoint": "a checkpoint is saved, the log lines that follow are not",
    "task.before_metrics": "training is done and evaluated, metrics.json is not written",
    "file.before_rename": "an artifact (metrics, predictions, grid) is written, not renamed",
    "shard.before_rename": "a sweep shard is written to its temporary name, not renamed",
    "manifest.before_rename": "the sweep manifest's new version is written, not renamed",
    "scores.before_rename": "a filter's scores of one shard are written, not renamed",
    "latents.before_rename": "a latent cache shard is written to its temporary name, not renamed",
}

_hits: dict[str, int] = {}


def point(name: str) -> None:
  """SIGKILLs this process if JAXSYNTH_FAULT arms `name` and this is the armed hit."""
  spec = os.environ.get(ENV)
  if not spec:
    return
  target, _, nth = spec.partition("@")
  if target != name:
    return
  _hits[name] = _hits.get(name, 0) + 1
  if _hits[name] == int(nth or 1):
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
