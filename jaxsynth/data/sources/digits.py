"""The embedded scikit-learn digits, split into fixed stratified train/val/test parts."""

from __future__ import annotations

import numpy as np

from jaxsynth.data import imbalance
from jaxsynth.data.base import SPLITS
from jaxsynth.data.sources.common import SPLIT_SEED, ArraySource, _Backend

DIGITS_FRACTIONS = (0.2, 0.2)  # val, test; the rest (60%) is train


def _digits_backend(data_cfg) -> "_Backend":
  del data_cfg
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  names = tuple(str(c) for c in range(10))
  parts = dict(zip(("train", "val", "test"),
                   imbalance.stratified_holdout(labels, DIGITS_FRACTIONS, SPLIT_SEED)))
  openers = {s: (lambda s=s: ArraySource(images[parts[s]], labels[parts[s]], 10, None, names,
                                         f"scikit-learn digits ({s} split)"))
             for s in SPLITS}
  return _Backend("scikit-learn digits", openers, 10, names)
