"""Task `filter`: judge every sample of a finished sweep (`filter.input`) and write the accepted
ones to WORKDIR/samples as a new sweep (synthesis/filters.py has the judges and the writer).

A killed run resumes: each input shard is scored once (WORKDIR/scores/), and the accepted set
is written again identically. WORKDIR also gets filter_report.json, plots/ and metrics.json.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np

from jaxsynth.data import synthetic_format
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.synthesis import filters, sweep
from jaxsynth.training import parallel, workdir as workdir_lib

log = logging.getLogger(__name__)


def input_sweep(config, workdir: str | None = None) -> tuple[str, dict]:
  """(directory, manifest) of the finished sweep `filter.input`, checked (and, given
  `workdir`, outside it)."""
  f = config.filter
  if not f.input:
    raise ConfigError("config key 'filter.input' is empty: set it to a finished sweep "
                      "(a samples/ folder or a sampling --workdir)")
  try:
    directory = synthetic_format.samples_dir(f.input)
  except DataError as e:
    raise DataError(f"config key 'filter.input': {e}") from None
  inside = os.path.abspath(directory)
  if workdir is not None and (inside + os.sep).startswith(os.path.abspath(workdir) + os.sep):
    raise ConfigError(f"config key 'filter.input' = {f.input!r} lies inside --workdir "
                      f"{workdir}: the filtered set needs its own --workdir")
  manifest = synthetic_format.read_manifest(directory)
  if not manifest.get("complete", True):
    raise DataError(f"the sweep in {directory} is unfinished: rerun its sample command first "
                    "(it resumes), then filter it")
  return directory, manifest


def _generator_data(manifest: dict):
  """The data config and seed of the train_diffusion or train_gan run a sweep came from (None
  if unknown)."""
  from jaxsynth import config as config_lib  # pylint: disable=import-outside-toplevel
  run_dir = manifest.get("run_dir")
  if not run_dir:
    return None, 0
  trained = config_lib.read_run_config(run_dir, ("train_diffusion", "train_gan"),
                                       "the sweep's run_dir")
  return ml_collections.ConfigDict(trained["data"]), int(trained.get("seed", 0))


def filter_sweep(config, workdir: str, overwrite: bool = False, stop=None) -> dict:
  """Scores the sweep `filter.input`, writes its accepted samples and the filter's report."""
  del stop  # scoring is resumable shard by shard; a signal stops it like a kill
  f = config.filter
  filters.check_filter_config(f, "filter", require=True)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    problem = sweep.damage(os.path.join(workdir, synthetic_format.SAMPLES_DIR))
    if not problem:
      return done
    # The finished filtered set lost shards since: write it again from the saved scores.
    log.warning("%s; the filtered set in %s is written again", problem, workdir)
    if jax.process_index() == 0:
      os.remove(os.path.join(workdir, workdir_lib.METRICS_FILE))
  directory, manifest = input_sweep(config, workdir)
  workdir_lib.check_prepare(workdir, config, overwrite)
  num_classes, shape = manifest["num_classes"], tuple(manifest["image_shape"])
  data_cfg, seed = (None, 0) if (f.name == "classifier" or f.real) else _generator_data(manifest)
  if f.name != "classifier" and not f.real and data_cfg is None:
    raise ConfigError(f"the sweep {directory} names no generator run (manifest run_dir): set "
                      "config key 'filter.real' to the real images for the realism filter")
  mesh = parallel.make_mesh(config.mesh)
  sampled = np.unique(np.concatenate(
      [synthetic_format.read_shard_labels(directory, entry)[0] for entry in manifest["shards"]]
      or [np.zeros(0, np.int64)]))
  scorer = filters.build_scorer(f, num_classes, shape,
                                filters.real_images(f, data_cfg, seed, shape),
                                os.path.join(workdir, filters.CACHE_DIR), mesh,
                                classes=sampled[(sampled >= 0) & (sampled < num_classes)])
  workdir_lib.prepare(workdir, config, overwrite)
  log.info("filter %s on the sweep %s (%d shards), judge %s", f.name, directory,
           len(manifest["shards"]), scorer.identity)
  scores = filters.score_sweep(directory, scorer, os.path.join(workdir, filters.SCORES_DIR))
  keep = filters.keep_mask(scores["labels"], scores["accept"], scores["index"])
  acceptance = filters.acceptance(scores["labels"], scores["accept"], keep, num_classes,
                                  manifest.get("class_names") or ())
  header = {"num_classes": num_classes, "image_shape": list(shape),
            "class_names": manifest.get("class_names"), "source": os.path.abspath(directory),
            "filter": scorer.settings, "acceptance": acceptance,
            "shard_size": int(manifest.get("shard_size") or 256)}
  if header["class_names"] is None:
    del header["class_names"]
  # A group-conditioned sweep's groups travel with its samples (write_accepted keeps them).
  header.update({k: manifest[k] for k in ("condition", "num_groups", "group_names")
                 if manifest.get(k) is not None})
  result = {"accepted": acceptance["kept"], "attempted": acceptance["attempted"],
            "acceptance_rate": acceptance["acceptance_rate"], "acceptance": acceptance}
  if jax.process_index() == 0:
    written = filters.write_accepted(os.path.join(workdir, synthetic_format.SAMPLES_DIR),
                                     [(directory, scores)], [keep], header["shard_size"], header)
    filters.write_report(workdir, written, [directory])
    log.info("kept %d of %d samples (%s)", acceptance["kept"], acceptance["attempted"],
             ", ".join(f"{name}: {c['accepted']}/{c['attempted']}"
                       for name, c in acceptance["per_class"].items()))
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.METRICS_FILE), result)
  return result
