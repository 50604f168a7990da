"""Shared test fixtures: small in-memory sources and configs (no files from ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsynth.data.base import ImageSource


class ArraySource(ImageSource):
  """An in-memory source over uint8 images, for tests."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int):
    super().__init__(labels, num_classes, images.shape[1:])
    self.images = images
    self.name = "<test arrays>"

  def load_image(self, index: int) -> np.ndarray:
    return self.images[index]


def make_array_source(n: int = 50, size: int = 8, channels: int = 1, num_classes: int = 3,
                      seed: int = 0) -> ArraySource:
  """Random images whose first pixel encodes the sample index (so tests can trace samples)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
  labels = np.arange(n) % num_classes
  return ArraySource(images, labels, num_classes)


@pytest.fixture
def array_source():
  return make_array_source()


def pytest_configure(config):
  """Shares compiled XLA programs between tests (many compile the same tiny models)."""
  import os
  import tempfile

  import jax
  cache = os.environ.get("JAXSYNTH_TEST_XLA_CACHE") or os.path.join(tempfile.gettempdir(),
                                                                    "jaxsynth-test-xla-cache")
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
