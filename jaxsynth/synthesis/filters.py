"""Per-sample filters of synthetic images, and the writer of a sweep's accepted subset.

Two judges (`filter.name`):
  - `classifier` (DiffuPT, Fig. 3): keep a sample only if a finished classifier predicts its
    intended class, with probability >= `filter.min_confidence`; score = p(intended class).
  - `realism` / `realism_class` (Kynkäänniemi et al. 2019; histopathology study eq. 11):
    R(φ_g) = max_r ‖φ_r − NN_k(φ_r)‖ / ‖φ_g − φ_r‖ over the real features Φ_r (realism_class:
    only the intended class's); keep R >= `filter.threshold` (1: inside some real k-NN ball).
    The real features and their k-NN radii are computed once and cached in the run's
    `filter_cache/`, keyed by the extractor, the real images and k.

Scoring a sweep writes one `scores/shard-NNNNN.npz` (index, labels, score, accept) per input
shard, so a killed run rescores nothing it finished. `write_accepted` then writes the kept
samples in global-index order as a new sweep (same shard format, the original `index` and any
`groups` kept, plus `score`): equal inputs give byte-identical shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from jaxsynth import files
from jaxsynth.data import synthetic_format
from jaxsynth.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FILTERS = ("classifier", "realism", "realism_class")
SCORES_DIR = "scores"
CACHE_DIR = "filter_cache"
REPORT_FILE = "filter_report.json"
PLOTS_DIR = "plots"


def filter_config(with_input: bool = False) -> ml_collections.ConfigDict:
  """The `filter` keys (the `filter` task's, and `sample.filter` of filtered sweeps)."""
  f = ml_collections.ConfigDict()
  if with_input:
    f.input = ""                # the sweep to filter: a samples/ folder or a sampling workdir
  f.name = ""                   # "" (no filter) | classifier | realism | realism_class
  f.classifier = ""             # a finished train_classifier WORKDIR: the classifier filter's
  #                               judge, and the default features of the realism filters
  f.min_confidence = 0.0        # classifier: also require p(intended class) >= this
  f.features = ""               # realism: classifier:WORKDIR | inception:WEIGHTS | pixels[:SIZE];
  #                               "" = classifier:<filter.classifier>
  f.real = ""                   # realism: real images (.npz, image folder or sweep); "" = the
  #                               generator's training data (its config.json)
  f.real_split = "train"        # the split of filter.real to read
  f.k = 3                       # realism: k of the real k-NN radii
  f.threshold = 1.0             # realism: keep R >= threshold
  f.real_fraction = 1.0         # realism: use the real points whose radius is within this
  #                               quantile (1.0 = eq. 11 as written; Kynkäänniemi et al.: 0.5)
  f.batch_size = 128            # images per forward of the judge (fixed by the plan)
  return f


def check_filter_config(f, key: str, require: bool = False) -> None:
  """Raises ConfigError for a bad filter key (`key` is its prefix, e.g. 'sample.filter')."""

  def bad(name, value, fix):
    return ConfigError(f"config key '{key}.{name}' has bad value {value!r}: {fix}")

  if f.name not in ("",) + FILTERS or (require and not f.name):
    raise bad("name", f.name, f"use one of {', '.join(FILTERS)}")
  if not f.name:
    return
  if f.name == "classifier" and not f.classifier:
    raise bad("classifier", f.classifier, "the classifier filter needs a finished "
              "train_classifier --workdir")
  if f.name != "classifier" and not (f.features or f.classifier):
    from jaxsynth.metrics.features import extractor_options  # pylint: disable=import-outside-toplevel
    raise bad("features", f.features, "the realism filters need features: set "
              f"{key}.features to one of {extractor_options()} (or {key}.classifier)")
  if not 0 <= f.min_confidence <= 1:
    raise bad("min_confidence", f.min_confidence, "use a probability in [0, 1]")
  if f.k < 1:
    raise bad("k", f.k, "use a positive integer, e.g. 3")
  if not 0 < f.real_fraction <= 1:
    raise bad("real_fraction", f.real_fraction, "use a fraction in (0, 1]")
  if f.threshold < 0:
    raise bad("threshold", f.threshold, "use a number >= 0 (1 keeps points inside a real ball)")
  if f.batch_size < 1:
    raise bad("batch_size", f.batch_size, "use a positive integer")
  if f.real_split not in ("train", "val", "test"):
    raise bad("real_split", f.real_split, "use train, val or test")
  from jaxsynth.metrics import features  # pylint: disable=import-outside-toplevel
  if f.name == "classifier" or not f.features:
    if not os.path.isdir(f.classifier):
      raise bad("classifier", f.classifier, "the directory does not exist; give a finished "
                "train_classifier --workdir")
  else:
    features.check_spec(f.features)
  if f.real and not os.path.exists(f.real):
    raise bad("real", f.real, "the path does not exist; give an .npz, an image folder or a "
              "sweep, or '' for the generator's training data")


def settings(f) -> dict:
  """The filter settings that fix its decisions (recorded in manifests and plans)."""
  out = {"name": f.name, "batch_size": int(f.batch_size)}
  if f.name == "classifier":
    out.update(classifier=os.path.abspath(f.classifier), min_confidence=float(f.min_confidence))
  else:
    out.update(features=f.features or f"classifier:{os.path.abspath(f.classifier)}",
               real=os.path.abspath(f.real) if f.real else "", real_split=f.real_split,
               k=int(f.k), threshold=float(f.threshold), real_fraction=float(f.real_fraction))
  return out


@dataclasses.dataclass
class Scorer:
  """A filter ready to judge images: score(images, labels) -> (score float32, accept bool)."""
  settings: dict
  score: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
  identity: dict


def build_scorer(f, num_classes: int, image_shape, real_images: Callable, cache_dir: str,
                 mesh, classes=None) -> Scorer:
  """The filter `f` for samples of `num_classes` classes, loaded and checked: the judge, and
  for the realism filters the real features and radii (`real_images()` gives the real
  ImageSet; its features are cached in `cache_dir`). `classes`: those it will judge (all)."""
  # pylint: disable=import-outside-toplevel  (jax and the networks load only when filtering)
  from jaxsynth.metrics import features as features_lib
  from jaxsynth.metrics import generation
  chosen = settings(f)
  devices = mesh.devices.size
  if f.batch_size % devices:
    raise ConfigError(f"config key 'filter.batch_size' = {f.batch_size} must be a multiple of "
                      f"the {devices} devices")
  if f.name == "classifier":
    judge = features_lib.make_extractor(f"classifier:{f.classifier}", mesh, f.batch_size)
    probe = judge.outputs(np.zeros((1, *image_shape), np.uint8))["probs"]
    if probe.shape[-1] != num_classes:
      raise ConfigError(f"the classifier {f.classifier} predicts {probe.shape[-1]} classes but "
                        f"the samples have {num_classes}: give a classifier of the same classes")
    minimum = np.float32(f.min_confidence)

    def score_classifier(images, labels):
      # DiffuPT's rule: the classifier's argmax is the intended class (a binary run's tuned
      # evaluation threshold is not used).
      probs = judge.outputs(images, progress=True)["probs"]
      intended = probs[np.arange(len(labels)), labels]
      accept = (np.argmax(probs, axis=-1) == labels) & (intended >= minimum)
      return intended.astype(np.float32), accept

    return Scorer(chosen, score_classifier, judge.identity)

  extractor = features_lib.make_extractor(chosen["features"], mesh, f.batch_size)
  per_class = f.name == "realism_class"
  ref = _real_features(extractor, real_images, int(f.k), cache_dir, image_shape)
  if per_class:
    counts = np.bincount(ref["labels"], minlength=num_classes)[:num_classes]
    few = [int(c) for c in (range(num_classes) if classes is None else classes)
           if counts[c] <= f.k]
    if ref["unlabelled"] or few:
      what = ("has no labels" if ref["unlabelled"] else
              f"has <= k = {f.k} images of class(es) {few}")
      raise DataError(f"the real set {ref['name']} {what}, so the class-based realism score "
                      "cannot judge those samples: use filter.name=realism, a labelled real "
                      "set with every class, or a smaller filter.k")

  def score_realism(images, labels):
    fake = extractor.features(images, progress=True)
    scores = np.zeros(len(labels), np.float64)
    if not per_class:
      scores[:] = generation.realism_scores(ref["features"], fake, real_radii=ref["radii"],
                                            keep_fraction=float(f.real_fraction))
    else:
      for c in np.unique(labels):
        rows, mine = labels == c, ref["labels"] == c
        scores[rows] = generation.realism_scores(ref["features"][mine], fake[rows],
                                                 real_radii=ref["class_radii"][mine],
                                                 keep_fraction=float(f.real_fraction))
    # R = inf (a sample on a real point) stays accepted; scores are stored as float32.
    return scores.astype(np.float32), scores >= float(f.threshold)

  return Scorer(chosen, score_realism, {**extractor.identity, "k": int(f.k),
                                        "real": ref["digest"]})


def real_images(f, data_cfg, seed: int, image_shape) -> Callable:
  """The loader of the realism filters' real set: `filter.real` (its `filter.real_split`), else
  that split of `data_cfg` (the generator's data), at the samples' `image_shape`."""
  # pylint: disable=import-outside-toplevel
  from jaxsynth.data.sources import open_source
  from jaxsynth.metrics import image_sets

  def load():
    if f.real:
      real = image_sets.load_set(f.real, f.real_split)
      if real.images is None:
        raise DataError(f"config key 'filter.real' = {f.real!r} holds statistics, not images: "
                        "the realism filters need the real images")
      return real
    return image_sets.from_source(open_source(data_cfg, f.real_split, seed=seed), image_shape)

  return load


def _digest(*parts) -> str:
  h = hashlib.sha256()
  for part in parts:
    h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
  return h.hexdigest()[:16]


def _real_features(extractor, real_images: Callable, k: int, cache_dir: str,
                   image_shape) -> dict:
  """Real features, labels and k-NN radii (overall and within each class), cached on disk."""
  from jaxsynth.metrics import generation  # pylint: disable=import-outside-toplevel
  real = real_images()
  if real.images.shape[1:] != tuple(image_shape) and extractor.name == "pixels":
    raise DataError(f"the real images {real.name} are {real.images.shape[1:]} but the samples "
                    f"{tuple(image_shape)}: use pixels:SIZE features to compare them")
  labels = np.zeros(len(real), np.int64) if real.labels is None else real.labels
  digest = _digest(real.images.tobytes(), labels.tobytes())
  key = _digest(extractor.identity, k, digest)
  path = os.path.join(cache_dir, f"real-{key}.npz")
  info = {"name": real.name, "digest": digest, "unlabelled": real.labels is None}
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as cached:
        out = {name: cached[name] for name in ("features", "labels", "radii", "class_radii")}
      log.info("real features and k-NN radii from the cache %s", path)
      return {**out, **info}
    except Exception as e:  # pylint: disable=broad-except  (any damage: compute it again)
      log.warning("the cache %s is unreadable (%s); computing it again", path, e)
  log.info("features of the %d real images of %s", len(real), real.name)
  feats = extractor.features(real.images, progress=True)
  if len(feats) <= k:
    raise DataError(f"{real.name} has {len(feats)} real images: the realism score needs more "
                    f"than k = {k}")
  radii = generation.knn_radii(feats, k)
  class_radii = np.zeros(len(feats))  # a class of <= k images has no radius (build_scorer)
  for c in np.unique(labels):
    rows = labels == c
    if rows.sum() > k:
      class_radii[rows] = generation.knn_radii(feats[rows], k)
  out = {"features": feats, "labels": labels, "radii": radii, "class_radii": class_radii}
  if jax.process_index() == 0:
    files.atomic_write(path, synthetic_format.npz_bytes(out))
  return {**out, **info}


# ----------------------------------------------------------------------------- sweeps


def _scores_file(scores_dir: str, entry: dict) -> str:
  return os.path.join(scores_dir, entry["file"])


def score_sweep(directory: str, scorer: Scorer, scores_dir: str, stop=None) -> dict:
  """Scores every shard of the finished sweep in `directory` (resuming); concatenated arrays.

  Returns {"index", "labels", "score", "accept"} in shard order; each shard's result is saved
  to `scores_dir/<shard file>` once, so a rerun rescores only what was not finished. `stop`
  (a callable of the number of scored shards) may raise to stop between shards.
  """
  manifest = synthetic_format.read_manifest(directory)
  if not manifest.get("complete", True):
    raise DataError(f"the sweep in {directory} is unfinished: rerun its sample command first")
  shape = manifest["image_shape"]
  identity = _digest(scorer.settings, scorer.identity)
  out = {key: [] for key in ("index", "labels", "score", "accept")}
  for n, entry in enumerate(manifest["shards"]):
    path = _scores_file(scores_dir, entry)
    # The scores belong to this scorer and to these very shard bytes.
    shard_digest = entry.get("sha256") or files.sha256_file(os.path.join(directory,
                                                                        entry["file"]))
    key = _digest(identity, shard_digest)
    arrays = _read_scores(path, entry, key)
    if arrays is None:
      images, labels, index = synthetic_format.read_shard(directory, entry, shape)
      if labels.size and (labels.max() >= manifest["num_classes"] or labels.min() < 0):
        raise DataError(f"shard {os.path.join(directory, entry['file'])} holds labels outside "
                        f"[0, {manifest['num_classes']}): re-run its sampling stage")
      score, accept = scorer.score(images, labels) if len(labels) else (
          np.zeros(0, np.float32), np.zeros(0, bool))
      arrays = {"index": index, "labels": labels, "score": score.astype(np.float32),
                "accept": accept.astype(np.bool_),
                "scorer": np.array(key)}
      if jax.process_index() == 0:
        files.atomic_write(path, synthetic_format.npz_bytes(arrays),
                           fault="scores.before_rename")
    for key in out:
      out[key].append(arrays[key])
    if stop is not None:
      stop(n + 1)
  return {key: (np.concatenate(v) if v else np.zeros(0)) for key, v in out.items()}


def _read_scores(path: str, entry: dict, key: str) -> dict | None:
  """A shard's saved scores, or None when absent, damaged or from another scorer."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as saved:
      arrays = {k: saved[k] for k in ("index", "labels", "score", "accept", "scorer")}
  except Exception as e:  # pylint: disable=broad-except  (any damage: score it again)
    log.warning("scores %s are unreadable (%s); scoring the shard again", path, e)
    return None
  if str(arrays["scorer"]) != key or arrays["index"].shape != (entry["count"],):
    log.warning("scores %s belong to another filter or shard; scoring the shard again", path)
    return None
  return arrays


def keep_mask(labels, accept, index, budget=None) -> np.ndarray:
  """Which samples the filtered set keeps: all accepted, or with `budget` (per class) the
  first budget[c] accepted samples of class c in global-index order."""
  labels, accept, index = np.asarray(labels), np.asarray(accept, bool), np.asarray(index)
  if budget is None:
    return accept.copy()
  keep = np.zeros_like(accept)
  order = np.argsort(index, kind="stable")
  for c, want in enumerate(np.asarray(budget)):
    rows = order[(labels[order] == c) & accept[order]]
    keep[rows[:int(want)]] = True
  return keep


def acceptance(labels, accept, keep, num_classes: int, class_names=(), budget=None) -> dict:
  """Per class: attempted, accepted, kept, acceptance rate (and budget, met)."""
  labels = np.asarray(labels)
  names = list(class_names) or [str(c) for c in range(num_classes)]
  per_class = {}
  for c in range(num_classes):
    rows = labels == c
    tried, ok = int(rows.sum()), int(np.asarray(accept)[rows].sum())
    entry = {"attempted": tried, "accepted": ok, "kept": int(np.asarray(keep)[rows].sum()),
             "acceptance_rate": ok / tried if tried else None}
    if budget is not None:
      entry.update(budget=int(budget[c]), met=entry["kept"] >= int(budget[c]))
    per_class[names[c]] = entry
  tried, ok = int(labels.size), int(np.asarray(accept).sum())
  return {"attempted": tried, "accepted": ok, "kept": int(np.asarray(keep).sum()),
          "acceptance_rate": ok / tried if tried else None, "per_class": per_class}


def write_accepted(out_dir: str, sources: list[tuple[str, dict]], keep_by_source: list,
                   shard_size: int, header: dict) -> dict:
  """Writes the kept samples of the sweeps `sources` [(directory, scores)] as a new sweep.

  Rows are taken in order (sources, then shards, then rows: increasing global index), with
  their images, labels, original `index`, `groups` (when `header` has num_groups) and
  `score`, into shards of `shard_size`; an existing shard equal to what would be written is
  kept, a different one is quarantined and rewritten. Returns the manifest written (`header` plus the shard list, complete).
  """
  writer = jax.process_index() == 0  # every process computes the list, process 0 writes
  if writer:
    files.remove_stale_temporaries(out_dir)
    os.makedirs(out_dir, exist_ok=True)
  num_groups = header.get("num_groups")
  keys = ("images", "labels", "index") + (("groups",) if num_groups else ()) + ("score",)
  entries, buffer, k = [], {key: [] for key in keys}, 0

  def flush(count: int):
    nonlocal k
    rows = {key: np.concatenate(v)[:count] for key, v in buffer.items()}
    for key, v in buffer.items():
      rest = np.concatenate(v)[count:]
      buffer[key] = [rest] if len(rest) else []
    arrays = synthetic_format.shard_arrays(rows["images"], rows["labels"], rows["index"],
                                           rows.get("groups"))
    data = synthetic_format.npz_bytes({**arrays, "score": rows["score"].astype(np.float32)})
    name = synthetic_format.shard_filename(k)
    path = os.path.join(out_dir, name)
    if writer and os.path.exists(path):
      with open(path, "rb") as f:
        same = f.read() == data
      if not same:
        log.warning("shard %s differs from the filtered set; moved to %s and written again",
                    path, synthetic_format.quarantine(out_dir, path))
    if writer and not os.path.exists(path):
      files.atomic_write(path, data, fault="shard.before_rename")
    entries.append({"file": name, "count": int(count),
                    "sha256": hashlib.sha256(data).hexdigest()})
    k += 1

  def buffered() -> int:
    return sum(len(v) for v in buffer["labels"])

  for (directory, scores), keep in zip(sources, keep_by_source):
    manifest = synthetic_format.read_manifest(directory)
    offset = 0
    for entry in manifest["shards"]:
      rows = np.asarray(keep[offset:offset + entry["count"]], bool)
      if rows.any():
        images, labels, index = synthetic_format.read_shard(directory, entry,
                                                             manifest["image_shape"])
        values = {"images": images[rows], "labels": labels[rows], "index": index[rows],
                  "score": scores["score"][offset:offset + entry["count"]][rows]}
        if num_groups:
          values["groups"] = synthetic_format.read_shard_groups(directory, entry,
                                                                num_groups)[rows]
        for key, value in values.items():
          buffer[key].append(value)
        while buffered() >= shard_size:
          flush(shard_size)
      offset += entry["count"]
  if buffered():
    flush(buffered())
  manifest = {**header, "shards": entries, "complete": True}
  if writer:
    listed = {e["file"] for e in entries}
    for name in sorted(os.listdir(out_dir)):
      if name.startswith("shard-") and name not in listed:  # left by another filtered set
        log.warning("shard %s is not part of the filtered set; moved to %s", name,
                    synthetic_format.quarantine(out_dir, os.path.join(out_dir, name)))
    synthetic_format.write_manifest(out_dir, manifest)
  return manifest


def _first_per_class(directories, num_classes: int, per_class: int):
  """Up to `per_class` images of each class from the sweeps, in order: (images, labels)."""
  images, labels, have = [], [], np.zeros(num_classes, np.int64)
  for directory in directories:
    manifest = synthetic_format.read_manifest(directory)
    for entry in manifest["shards"]:
      if have.min() >= per_class:
        break
      shard_images, shard_labels, _ = synthetic_format.read_shard(directory, entry,
                                                                  manifest["image_shape"])
      for image, label in zip(shard_images, shard_labels):
        if have[label] < per_class:
          images.append(image)
          labels.append(label)
          have[label] += 1
  shape = synthetic_format.read_manifest(directories[0])["image_shape"] if directories else (1, 1, 1)
  return (np.stack(images) if images else np.zeros((0, *shape), np.uint8),
          np.asarray(labels, np.int64))


def write_report(workdir: str, manifest: dict, candidates: list[str], per_class: int = 8) -> dict:
  """filter_report.json and plots/ (per-class grids before/after, acceptance bars) of a
  filtered set whose manifest is `manifest`, drawn from the sweeps `candidates`."""
  # pylint: disable=import-outside-toplevel
  from jaxsynth.metrics import plots
  from jaxsynth.training import workdir as workdir_lib
  def shown(path):  # paths inside the run relative to it, so a moved run's report still reads
    inside = os.path.abspath(path).startswith(os.path.abspath(workdir) + os.sep)
    return os.path.relpath(path, workdir) if inside else os.path.abspath(path)

  report = {"filter": manifest["filter"], "acceptance": manifest["acceptance"],
            "candidates": [shown(d) for d in candidates]}
  num_classes = manifest["num_classes"]
  names = list(manifest.get("class_names") or [str(c) for c in range(num_classes)])
  before = _first_per_class(candidates, num_classes, per_class)
  out_dir = os.path.join(workdir, synthetic_format.SAMPLES_DIR)
  after = _first_per_class([out_dir], num_classes, per_class) if manifest["shards"] else (
      np.zeros((0, *manifest["image_shape"]), np.uint8), np.zeros(0, np.int64))
  plot_dir = os.path.join(workdir, PLOTS_DIR)
  grids = plots.before_after_grids(*before, *after, num_classes, names, per_class=per_class)
  rates = {name: {"acceptance rate": c["acceptance_rate"]}
           for name, c in manifest["acceptance"]["per_class"].items()}
  report["plots"] = [shown(path) for path in (plots.write_png(os.path.join(plot_dir, "grids_before_after.png"), grids),
                     plots.write_png(os.path.join(plot_dir, "acceptance.png"),
                                     plots.bar_chart(rates, f"acceptance per class "
                                                     f"({manifest['filter']['name']} filter)")))]
  workdir_lib.write_json(os.path.join(workdir, REPORT_FILE), report)
  return report
