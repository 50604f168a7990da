"""Feature extractors for generation metrics and filters: uint8 images (N, H, W, C) -> (N, D).

    extractor = make_extractor("classifier:runs/pneu", mesh)   # or inception:WEIGHTS, pixels
    features = extractor.features(images)                       # float32 (N, D)
    outputs = extractor.outputs(images)                         # + "probs" / "logits"

Three kinds, named by a spec string (`EXTRACTORS`):
  - `classifier:WORKDIR`: the penultimate (pooled) features of a finished `train_classifier`
    run, with that run's channels, image size and normalisation (its config.json) and its
    `evaluate.checkpoint`; `outputs` adds its class probabilities (the classifier filter's).
  - `inception:WEIGHTS`: the FID Inception-v3 (pool3, 2048-d) from the pytorch-fid state dict
    `pt_inception-2015-12-05-*.pth` (or its .npz / .safetensors conversion); `outputs` adds the
    1008 logits for the Inception Score. Input resized to 299 (bilinear), scaled to [-1, 1].
  - `pixels` / `pixels:SIZE`: the flattened pixels in [0, 1], optionally resized to SIZE x SIZE
    first, so every metric works without a trained network.

Images go through one jitted forward per batch, sharded over the mesh's data axis like
evaluation; the last batch is padded and the padding dropped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsynth import config as config_lib
from jaxsynth.data import augment
from jaxsynth.errors import CheckpointError, ConfigError, DataError
from jaxsynth.training import parallel
from jaxsynth.training.writers import Progress

log = logging.getLogger(__name__)

EXTRACTORS = ("classifier:WORKDIR (a finished train_classifier run)",
              "inception:WEIGHTS (pytorch-fid's pt_inception-2015-12-05 .pth, or its .npz)",
              "pixels or pixels:SIZE (flattened pixels, optionally resized)")


def extractor_options() -> str:
  """The three spec forms, for error messages."""
  return "; ".join(EXTRACTORS)


@dataclasses.dataclass
class Extractor:
  """A jitted, batch-sharded feature network: uint8 images -> {"features", ...} arrays."""
  name: str                          # the spec, with absolute paths
  kind: str                          # classifier | inception | pixels
  dim: int                           # feature dimension D
  prepare: Callable                  # host: uint8 (N, H, W, C) -> the array the forward takes
  forward: Callable                  # jitted: (variables, prepared batch) -> dict of arrays
  variables: object
  mesh: jax.sharding.Mesh
  batch_size: int = 128              # global batch (a multiple of the device count)
  identity: dict = dataclasses.field(default_factory=dict)   # what fixes the features (caches)

  def outputs(self, images, progress: bool = False) -> dict[str, np.ndarray]:
    """Every output of the forward for `images` (uint8 (N, H, W, C)), batched and sharded."""
    images = np.asarray(images)
    _check_images(images, self.name)
    n = images.shape[0]
    sharding = parallel.batch_sharding(self.mesh)
    pieces: dict[str, list] = {}
    bar = Progress(n, 0, unit="image") if progress and n > self.batch_size else None
    for start in range(0, n, self.batch_size):
      chunk = self.prepare(images[start:start + self.batch_size])
      valid = chunk.shape[0]
      if valid < self.batch_size:  # pad the tail to the compiled batch shape
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - valid, 0)])
      out = parallel.to_host(self.forward(self.variables, parallel.to_global(chunk, sharding)))
      for key, value in out.items():
        pieces.setdefault(key, []).append(np.asarray(value[:valid], np.float32))
      if bar is not None:
        bar.update(min(start + self.batch_size, n), {})
    if not pieces:
      return {"features": np.zeros((0, self.dim), np.float32)}
    return {key: np.concatenate(value) for key, value in pieces.items()}

  def features(self, images, progress: bool = False) -> np.ndarray:
    """float32 (N, D) features of uint8 images (N, H, W, C)."""
    return self.outputs(images, progress)["features"]


def _check_images(images: np.ndarray, name: str) -> None:
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(f"feature extractor {name} takes uint8 images (N, H, W, 1 or 3), got "
                    f"{images.dtype} {images.shape}")


def _jit_forward(fn, mesh):
  return jax.jit(fn, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.batch_sharding(mesh))


def _batch(batch_size: int, mesh) -> int:
  devices = mesh.devices.size
  return max(devices, -(-int(batch_size) // devices) * devices)


def make_extractor(spec: str, mesh=None, batch_size: int = 128) -> Extractor:
  """The extractor named by `spec` (classifier:WORKDIR | inception:WEIGHTS | pixels[:SIZE])."""
  mesh = mesh if mesh is not None else parallel.make_mesh(ml_collections.ConfigDict({"data": -1}))
  batch = _batch(batch_size, mesh)
  kind, _, arg = str(spec).partition(":")
  if kind == "pixels":
    return _pixels(arg, mesh, batch)
  if kind == "classifier" and arg:
    return _classifier(arg, mesh, batch)
  if kind == "inception" and arg:
    return _inception(arg, mesh, batch)
  raise ConfigError(f"feature extractor {spec!r} is not one of the known forms: "
                    f"{extractor_options()}")


def check_spec(spec: str) -> None:
  """Raises ConfigError for a spec whose form or path is wrong, before anything loads."""
  kind, _, arg = str(spec).partition(":")
  if kind == "pixels":
    if arg and not (arg.isdigit() and int(arg) > 0):
      raise ConfigError(f"feature extractor {spec!r}: SIZE must be a positive integer, e.g. "
                        "pixels:16")
    return
  if kind not in ("classifier", "inception") or not arg:
    raise ConfigError(f"feature extractor {spec!r} is not one of the known forms: "
                      f"{extractor_options()}")
  if not os.path.exists(arg):
    what = "run directory" if kind == "classifier" else "weights file"
    raise ConfigError(f"feature extractor {spec!r}: the {what} {arg} does not exist; give an "
                      f"existing path, or use another extractor ({extractor_options()})")


# ----------------------------------------------------------------------------- pixels


def _pixels(arg: str, mesh, batch: int) -> Extractor:
  check_spec(f"pixels:{arg}" if arg else "pixels")
  size = int(arg) if arg else 0

  def prepare(images):
    if size and images.shape[1:3] != (size, size):
      images = np.stack([augment.resize(image, size) for image in images])
    return images

  def forward(_, images):
    flat = images.reshape(images.shape[0], -1).astype(jnp.float32) * (1.0 / 255.0)
    return {"features": flat}

  name = f"pixels:{size}" if size else "pixels"
  # D depends on the image size when SIZE is not given; it is set from the first images.
  return Extractor(name, "pixels", 0, prepare, _jit_forward(forward, mesh), None, mesh, batch,
                   {"extractor": name})


def _tree_digest(tree) -> str:
  """SHA-256 over a pytree's leaf paths and bytes: which weights an extractor holds."""
  import hashlib  # pylint: disable=import-outside-toplevel
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def pixel_dim(extractor: Extractor, image_shape) -> int:
  """The feature dimension the pixels extractor gives for images of `image_shape`."""
  h, w, c = image_shape
  size = int(extractor.name.partition(":")[2] or 0)
  return (size * size * c) if size else h * w * c


# ----------------------------------------------------------------------------- classifier


def finished_classifier(run_dir: str, key: str = "classifier:WORKDIR") -> dict:
  """The config.json of a finished, plain train_classifier run in `run_dir` (else an error)."""
  trained = config_lib.read_run_config(run_dir, "train_classifier", key)
  recipe = trained.get("recipe", {}).get("name", "ce")
  if recipe in ("crt", "lws", "tau_norm", "multistage_sampler"):
    raise CheckpointError(f"{run_dir} is a decoupled '{recipe}' run: use its backbone run "
                          f"{os.path.join(run_dir, 'stage1')} as classifier:WORKDIR")
  which = trained.get("evaluate", {}).get("checkpoint", "best")
  if not config_lib.checkpoint_steps(run_dir, which):
    raise CheckpointError(f"{run_dir} has no '{which}' checkpoint (checkpoints/{which}): train "
                          "the classifier to the end first")
  return trained


def _classifier_classes(run_dir: str) -> int:
  """The class count of a finished classifier run, from its metrics.json."""
  path = os.path.join(run_dir, "metrics.json")
  try:
    with open(path, encoding="utf-8") as f:
      metrics = json.load(f)
    return next(len(m["per_class_accuracy"]) for m in metrics.values()
                if isinstance(m, dict) and "per_class_accuracy" in m)
  except FileNotFoundError:
    raise CheckpointError(f"{path} not found: classifier:{run_dir} must be a finished "
                          "train_classifier run (rerun its command to finish it)") from None
  except (OSError, ValueError, StopIteration, TypeError, AttributeError):
    raise CheckpointError(f"{path} holds no per_class_accuracy: it is not a finished "
                          "train_classifier run's metrics") from None


def _classifier(run_dir: str, mesh, batch: int) -> Extractor:
  # pylint: disable=import-outside-toplevel  (models and checkpoints load only when asked)
  from jaxsynth.models.registry import make_classifier
  from jaxsynth.models import heads
  from jaxsynth.training import train_state
  from jaxsynth.training.checkpoint import Checkpointer
  from jaxsynth.training.optim import make_optimizer
  check_spec(f"classifier:{run_dir}")
  trained = finished_classifier(run_dir)
  config = ml_collections.ConfigDict(trained)
  num_classes = _classifier_classes(run_dir)
  recipe = config.get("recipe", {}).get("name", "ce")
  model = make_classifier(config.model, heads.num_outputs(recipe, num_classes))
  size, channels = int(config.data.image_size), int(config.data.get("channels", 0))
  if not size or not channels:
    from jaxsynth.data.sources import open_source
    shape = open_source(config.data, "train", seed=config.seed).image_shape
    size, channels = size or shape[0], channels or shape[-1]
  shape = (size, size, channels)
  tx = make_optimizer(config.train, optax.constant_schedule(0.0))
  abstract = train_state.abstract_state(model, tx, shape, mesh)
  which = config.evaluate.checkpoint
  checkpointer = Checkpointer(run_dir, config.train.keep_checkpoints, read_only=True)
  try:
    state, meta = checkpointer.restore(abstract, which)
  finally:
    checkpointer.close()
  params = state.ema_params if config.train.ema_decay > 0 else state.params
  mean, std = augment.normalisation(config.data, channels)
  probs_fn = heads.probabilities(recipe)
  mean_j, inv_std = jnp.asarray(mean, jnp.float32), jnp.asarray(1.0 / std, jnp.float32)

  def prepare(images):
    if images.shape[-1] != channels or images.shape[1:3] != (size, size):
      images = np.stack([augment.resize(augment.convert_channels(image, channels), size)
                         for image in images])
    return images

  def forward(variables, images):
    x = (images.astype(jnp.float32) * (1.0 / 255.0) - mean_j) * inv_std
    logits, features = model.apply(variables, x, train=False, return_features=True)
    return {"features": features.astype(jnp.float32), "probs": probs_fn(logits)}

  variables = {"params": params, **state.model_state}
  dim = int(jax.eval_shape(lambda v, x: forward(v, x)["features"], variables,
                           jax.ShapeDtypeStruct((1, *shape), jnp.uint8)).shape[-1])
  name = f"classifier:{os.path.abspath(run_dir)}"
  identity = {"extractor": name, "checkpoint": which, "step": int(meta["step"]),
              "params_sha256": _tree_digest(variables)}
  log.debug("features: %s (%s checkpoint, step %d), %d-d at %s", name, which, meta["step"],
            dim, shape)
  return Extractor(name, "classifier", dim, prepare, _jit_forward(forward, mesh), variables,
                   mesh, batch, identity)


# ----------------------------------------------------------------------------- inception


def _inception(path: str, mesh, batch: int) -> Extractor:
  # pylint: disable=import-outside-toplevel
  from jaxsynth.files import sha256_file
  from jaxsynth.models import inception
  check_spec(f"inception:{path}")
  variables = inception.load_pytorch_fid_weights(path)
  model = inception.FIDInceptionV3()

  def forward(variables, images):
    features, _ = model.apply(variables, inception.preprocess(images))
    # The Inception Score's logits have no bias, as the original TF code and torch-fidelity.
    return {"features": features, "logits": inception.unbiased_logits(variables, features)}

  name = f"inception:{os.path.abspath(path)}"
  identity = {"extractor": name, "sha256": sha256_file(path)}
  return Extractor(name, "inception", 2048, lambda images: images,
                   _jit_forward(forward, mesh), variables, mesh, batch, identity)
