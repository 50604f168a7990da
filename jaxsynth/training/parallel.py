"""The device mesh and the shardings every jitted step uses (built in one place)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsynth.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(mesh_cfg) -> Mesh:
  """Builds a 1-D mesh with a `data` axis over all devices of all hosts (or mesh.data of them)."""
  devices = jax.devices()
  count = len(devices) if mesh_cfg.data == -1 else int(mesh_cfg.data)
  if count > len(devices):
    raise ConfigError(f"config key 'mesh.data' asks for {count} devices but only "
                      f"{len(devices)} exist; use -1 for all of them")
  if count != len(devices) and jax.process_count() > 1:
    raise ConfigError("config key 'mesh.data' must be -1 (all devices) on several hosts")
  return Mesh(np.asarray(devices[:count]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Shards the leading (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Replicates an array on every device of the mesh."""
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch: int, mesh: Mesh, key: str) -> None:
  """Raises ConfigError unless the global batch splits evenly over devices and processes."""
  devices = mesh.devices.size
  if global_batch % devices or global_batch % jax.process_count():
    raise ConfigError(f"config key '{key}' = {global_batch} must be a multiple of the "
                      f"{devices} devices on the data axis")


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles each process's local numpy batch into one global, batch-sharded jax.Array."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree):
  """Fetches a (possibly multi-host sharded) pytree of arrays to numpy on every process."""
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def global_batches(dataset, mesh: Mesh, preview=None):
  """Yields each local batch of `dataset` as a global batch-sharded array; `preview` sees the first."""
  sharding = batch_sharding(mesh)
  for batch in dataset:
    if preview is not None:
      preview(batch)
      preview = None
    yield to_global(batch, sharding)
