"""Multi-host start-up: JAX's multi-controller runtime from flags or the environment."""

from __future__ import annotations

import logging
import os

import jax

from jaxsynth.errors import ConfigError

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAXSYNTH_COORDINATOR"   # host:port of process 0
ENV_NUM_PROCESSES = "JAXSYNTH_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXSYNTH_PROCESS_ID"


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               auto: bool = False) -> None:
  """Calls jax.distributed.initialize when asked (flags, JAXSYNTH_* variables, or auto-detect).

  Explicit values (flags, else environment) are used as given, e.g. several CPU processes on
  one machine. `auto` lets JAX detect the cluster itself (SLURM, TPU VM, Open MPI).
  Single-process runs call nothing.
  """
  coordinator = coordinator or os.environ.get(ENV_COORDINATOR, "")
  num_processes = num_processes or int(os.environ.get(ENV_NUM_PROCESSES, "0") or 0)
  if process_id < 0:
    process_id = int(os.environ.get(ENV_PROCESS_ID, "-1") or -1)
  if coordinator:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError(
          f"multi-host: coordinator {coordinator!r} needs --num_processes >= 1 and "
          f"0 <= --process_id < num_processes (got {num_processes}, {process_id}); set the "
          f"flags or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID}")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  elif auto:
    jax.distributed.initialize()
  else:
    return
  log.info("process %d of %d; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
