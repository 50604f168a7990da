"""The generator's model card: training counts per class, group and (class, group) cell."""

import numpy as np

from jaxsynth.data import conditions
from jaxsynth.data.sources.common import ArraySource
from jaxsynth.synthesis import model_card


def grouped_source():
  labels = np.array([0, 0, 0, 1, 1, 0])
  groups = np.array([[0], [1], [1], [0], [1], [1]])
  return ArraySource(np.zeros((6, 4, 4, 1), np.uint8), labels, 2, groups, ("neg", "pos"))


def test_class_group_counts_per_class_group_and_cell():
  source = grouped_source()
  conditioning = conditions.from_source("class_group", source)
  counts = model_card.train_counts(conditions.conditioned(source, conditioning), conditioning)
  assert counts["total"] == 6
  assert counts["per_class"] == {"neg": 4, "pos": 2}
  assert counts["per_group"] == {"0": 2, "1": 4}
  assert counts["per_condition"] == {"neg/0": 1, "neg/1": 3, "pos/0": 1, "pos/1": 1}


def test_group_condition_has_no_classes_and_class_keeps_groups():
  source = grouped_source()
  by_group = conditions.from_source("group", source)
  counts = model_card.train_counts(conditions.conditioned(source, by_group), by_group)
  assert "per_class" not in counts and counts["per_group"] == {"0": 2, "1": 4}
  by_class = conditions.from_source("class", source)
  counts = model_card.train_counts(source, by_class)
  assert counts["per_class"] == {"neg": 4, "pos": 2} and counts["per_group"] == {"0": 2, "1": 4}


def test_markdown_lists_the_counts_and_the_grid(tmp_path):
  source = grouped_source()
  conditioning = conditions.from_source("class", source)
  card = {"kind": "class-conditional diffusion model", "intended_use": model_card.INTENDED_USE,
          "condition": "class", "condition_ids": conditioning.names(), "image_shape": [4, 4, 1],
          "train_counts": model_card.train_counts(source, conditioning),
          "data": {"source": "npz", "path": "/d.npz", "sha256": "ab" * 32, "name": "d"},
          "training": {"steps": 6, "seed": 0}, "config_file": "config.json",
          "versions": model_card.versions(), "sample_grid": "grids/step-000006.png",
          "limitations": "few images"}
  model_card.write(str(tmp_path), card)
  text = (tmp_path / model_card.MARKDOWN_FILE).read_text()
  assert "| neg | 4 |" in text and "| 1 | 4 |" in text
  assert "![samples](grids/step-000006.png)" in text and "sha256 abababab" in text
  assert (tmp_path / model_card.JSON_FILE).is_file()
