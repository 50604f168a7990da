"""Task `recipe` with recipe equal_scale (FairDiff's equal-scale group balancing for a
classifier) on the tiny config: every stage, equal group sizes in the balanced stage, per-group
report, a deterministic subsample, data.train_indices_file, and errors before any write."""

import json
import os

import numpy as np
import pytest

from configs import synthesis
from jaxsynth.data import mixture
from jaxsynth.data.sources import open_source
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.recipes import equal_scale
from jaxsynth.tasks.recipe import recipe

GROUP_NAMES = ("site_a", "site_b", "site_c")
TRAIN_GROUPS = (30, 18, 8)
TARGET = 20                    # site_a subsampled 30 -> 20; site_b gets 2 synthetic, site_c 12


def write_grouped_npz(path, groups=True):
  """2 classes x 3 named groups, 8x8 gray; train groups of TRAIN_GROUPS samples."""
  rng = np.random.default_rng(0)
  arrays = {"class_names": np.array(["benign", "malignant"])}
  if groups:
    arrays["group_names"] = np.array(GROUP_NAMES)
  for split, sizes in (("train", TRAIN_GROUPS), ("val", (6, 4, 4)), ("test", (6, 4, 4))):
    g = np.repeat(np.arange(3), sizes)
    labels = (np.arange(g.size) % 3 == 0).astype(np.int64)  # about 1:2 in every group
    arrays[f"{split}_images"] = rng.integers(0, 256, (g.size, 8, 8, 1), dtype=np.uint8)
    arrays[f"{split}_labels"] = labels
    if groups:
      arrays[f"{split}_groups"] = np.stack([g, np.arange(g.size) % 2], axis=1)
  np.savez(path, **arrays)
  return str(path)


def tiny_config(path, **recipe_keys):
  config = synthesis.get_config("equal_scale_tiny")
  config.data.path = path
  config.recipe.update(recipe_keys)
  return config


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
  return write_grouped_npz(tmp_path_factory.mktemp("data") / "grouped.npz")


@pytest.fixture(scope="module")
def balanced_run(npz_path, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("equal_scale"))
  recipe(tiny_config(npz_path, target=TARGET), workdir)
  return workdir


def read(workdir, *parts):
  with open(os.path.join(workdir, *parts), encoding="utf-8") as f:
    return json.load(f)


def test_every_stage_runs_and_the_balanced_stage_has_equal_groups(balanced_run):
  for stage in ("generator", "sample", "baseline", "balanced"):
    assert os.path.isfile(os.path.join(balanced_run, stage, "metrics.json")), stage
  assert read(balanced_run, "generator", "config.json")["diffusion"]["condition"] == "class_group"
  mix = read(balanced_run, "balanced", "mixture.json")
  real, synthetic = mix["parts"]
  assert real["group_counts"] == [20, 18, 8] and synthetic["group_counts"] == [0, 2, 12]
  assert max(mix["group_counts"]) - min(mix["group_counts"]) <= 1
  assert mix["group_counts"] == [TARGET] * 3
  # Synthetic samples follow each group's own class counts (1:2 here).
  cells = read(balanced_run, "sample", "config.json")["sample"]["cell_counts"]
  assert len(cells) == 6 and sum(cells) == 14
  assert sum(cells[3:]) == synthetic["class_counts"][1]
  assert not os.path.exists(os.path.join(balanced_run, "baseline", "mixture.json"))
  # metrics.json of the classifiers has the per-group figures (test split's groups).
  groups = read(balanced_run, "balanced", "metrics.json")["test"]["groups"]
  assert list(groups["per_group"]) == list(GROUP_NAMES) and "es_accuracy" in groups
  report = open(os.path.join(balanced_run, "report.md"), encoding="utf-8").read()
  assert "# Recipe `equal_scale` vs baseline" in report
  assert "## Training set per group (FairDiff equal scale, N_target = 20)" in report
  assert "| site_a | 30 | 20 | 0 | 20 |" in report and "| site_c | 8 | 8 | 12 | 20 |" in report
  assert "## Per group (test split)" in report and "| ES (equity-scaled) |" in report
  summary = read(balanced_run, "metrics.json")
  assert summary["recipe"] == read(balanced_run, "balanced", "metrics.json")


def test_the_real_subset_is_a_fixed_draw_from_the_seed(balanced_run, npz_path, tmp_path):
  config = tiny_config(npz_path, target=TARGET)
  path = read(balanced_run, "balanced", "config.json")["data"]["train_indices_file"]
  kept = np.load(path, allow_pickle=False)
  train = open_source(config.data, "train", seed=config.seed)
  groups = train.groups[:, 0]
  plan = equal_scale.equal_scale_plan(train.labels, groups, 2, config.seed, TARGET)
  np.testing.assert_array_equal(kept, plan["keep"])
  assert np.bincount(groups[kept]).tolist() == [20, 18, 8]
  # Same seed, same indices (and the same file name); another seed, another draw.
  tasks = dict.fromkeys(("train_diffusion", "sample", "train_classifier"))
  pipe = equal_scale.pipeline(config, balanced_run, tasks)
  assert pipe.stages["balanced"].config.data.train_indices_file == path
  assert pipe.status()["balanced"] == "done"
  config.seed = 1
  other = equal_scale.pipeline(config, str(tmp_path), tasks)
  other_path = other.stages["balanced"].config.data.train_indices_file
  assert os.path.basename(other_path) != os.path.basename(path)
  other_keep = equal_scale.equal_scale_plan(train.labels, groups, 2, 1, TARGET)["keep"]
  assert not np.array_equal(other_keep, kept)
  assert not os.path.exists(tmp_path / "balanced")  # building the pipeline writes nothing


def test_data_without_groups_is_one_line_error_before_any_write(tmp_path):
  path = write_grouped_npz(tmp_path / "plain.npz", groups=False)
  workdir = tmp_path / "run"
  with pytest.raises(DataError) as error:
    recipe(tiny_config(path), str(workdir))
  message = str(error.value)
  assert "\n" not in message and "equal_scale needs groups" in message
  assert path in message and "{split}_groups" in message
  assert not workdir.exists()


def test_group_condition_and_a_target_below_every_group_are_refused(npz_path, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match="recipe.condition.*no class label.*class_group"):
    recipe(tiny_config(npz_path, condition="group"), str(workdir))
  with pytest.raises(ConfigError, match="recipe.target.*generates nothing"):
    recipe(tiny_config(npz_path, target=8), str(workdir))
  with pytest.raises(ConfigError, match="data.train_indices_file.*leave it empty"):
    config = tiny_config(npz_path)
    config.data.train_indices_file = str(tmp_path / "keep.npy")
    recipe(config, str(workdir))
  assert not workdir.exists()


def test_train_indices_file_restricts_the_train_split_and_is_checked(npz_path, tmp_path):
  config = tiny_config(npz_path)
  train = open_source(config.data, "train", seed=0)
  np.save(tmp_path / "keep.npy", np.array([5, 0, 40]))
  subset = mixture.train_subset(train, str(tmp_path / "keep.npy"))
  assert len(subset) == 3 and subset.labels.tolist() == train.labels[[5, 0, 40]].tolist()
  assert subset.groups[:, 0].tolist() == [0, 0, 1]
  (tmp_path / "keep.json").write_text("[1, 2]")
  assert len(mixture.train_subset(train, str(tmp_path / "keep.json"))) == 2
  for name, content, match in (
      ("far.npy", np.array([3, 56]), r"holds index 56 but the train split has 56 samples"),
      ("twice.npy", np.array([3, 3]), "repeats an index"),
      ("float.npy", np.array([0.5]), "not a non-empty list of integers")):
    np.save(tmp_path / name, content)
    with pytest.raises(DataError, match=r"data.train_indices_file.*" + match):
      mixture.train_subset(train, str(tmp_path / name))
  with pytest.raises(DataError, match="data.train_indices_file.*does not exist"):
    mixture.train_subset(train, str(tmp_path / "missing.npy"))
