"""End-to-end diffusion quality: a tiny UNet and a tiny DiT trained with `train_diffusion` for a
few hundred steps on a 2-class real set (scikit-learn digits 0 vs 1, 8x8, written as a
MedMNIST-style npz) draw samples with the `sample` task that an independent classifier
(scikit-learn logistic regression on the real train images) assigns to the asked class far
above chance (0.5).

Measured (2-core CPU, seeds 0, 1, 2): accuracy 1.0 for both models at every seed; without CFG
0.94 (UNet) and 0.99 (DiT); controls: an unconditional UNet (label dropout 1) gives 0.48 and a
UNet after 20 steps 0.56, so the bar below is far from what a label-blind model reaches. About
35 s per model with a cold XLA cache, 15-25 s warm. `python bench/diffusion_quality.py` runs both
and prints accuracies and times as JSON.
"""

from __future__ import annotations

import os
import time

import numpy as np

from jaxsynth.data import synthetic_format
from jaxsynth.tasks.diffusion import train_diffusion
from jaxsynth.tasks.sample import sample
from tests.helpers import override, tiny_diffusion_config

DIGITS = (0, 1)              # the two real classes (new labels 0 and 1)
PER_CLASS = 64               # samples drawn per class
CHANCE = 1.0 / len(DIGITS)
MIN_ACCURACY = 0.9           # the bar (measured: 1.0; see the module docstring)

# Training steps and batch per denoiser; both at 8 px, T = 200 (linear), eps-prediction, label
# dropout 0.1, AdamW 2e-3, EMA 0.99; sampled with DDIM 25 steps and CFG w = 2.
STEPS = {"unet": 300, "dit": 600}
BATCH = {"unet": 32, "dit": 64}


def write_digits_npz(path: str, digits=DIGITS, seed: int = 0) -> dict:
  """Writes scikit-learn digits of `digits` (relabelled 0..k-1) as a MedMNIST-style npz with
  train/val/test splits (60/20/20, stratified); returns the splits as uint8 (N, 8, 8) arrays."""
  from sklearn.datasets import load_digits
  data = load_digits()
  keep = np.isin(data.target, digits)
  images = np.round(data.images[keep] * (255.0 / 16.0)).astype(np.uint8)
  labels = np.searchsorted(np.asarray(digits), data.target[keep]).astype(np.int64)
  rng = np.random.default_rng(seed)
  splits = {"train": [], "val": [], "test": []}
  for c in range(len(digits)):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_train, n_val = int(0.6 * idx.size), int(0.2 * idx.size)
    splits["train"].append(idx[:n_train])
    splits["val"].append(idx[n_train:n_train + n_val])
    splits["test"].append(idx[n_train + n_val:])
  arrays = {}
  for split, parts in splits.items():
    idx = np.sort(np.concatenate(parts))
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[idx], labels[idx]
  np.savez(path, **arrays)
  return arrays


def fit_classifier(arrays: dict):
  """Logistic regression on the real train images (pixels in [0, 1]); returns it and its
  accuracy on the real test split."""
  from sklearn.linear_model import LogisticRegression
  flat = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255.0
  clf = LogisticRegression(max_iter=2000).fit(flat(arrays["train_images"]),
                                              arrays["train_labels"])
  test_acc = float(clf.score(flat(arrays["test_images"]), arrays["test_labels"]))
  return (lambda images: clf.predict(flat(images))), test_acc


def quality_config(name: str, npz_path: str, steps: int, **overrides):
  """The train_diffusion config of this test: the npz source at 8 px, a tiny UNet or DiT."""
  config = tiny_diffusion_config(name, steps)
  config.data.source = "npz"
  config.data.path = npz_path
  config.data.image_size = 8
  config.model.unet.update(channels=(16, 32), res_blocks=1, attn_resolutions=(), head_dim=8,
                           norm_groups=8, mid_attention=False, dropout=0.0)
  config.model.dit.update(patch_size=2, hidden_size=64, depth=3, num_heads=4, dropout=0.0)
  config.diffusion.update(schedule="linear", num_timesteps=200, prediction="eps",
                          label_dropout=0.1, val_batches=0)
  config.train.update(batch_size=BATCH[name], steps=steps, learning_rate=2e-3, optimizer="adamw",
                      ema_decay=0.99, grad_clip=1.0, log_every=50, eval_every=steps,
                      checkpoint_every=steps, sample_every=0, keep_checkpoints=1)
  return override(config, **overrides)


def sweep_config(name: str, npz_path: str, run_dir: str, per_class: int = PER_CLASS, **sample):
  config = quality_config(name, npz_path, 1)
  config.task = "sample"
  config.sample.update(run_dir=run_dir, budget="counts",
                       class_counts=(per_class,) * len(DIGITS), shard_size=per_class * 2,
                       batch_size=per_class * 2, sampler="ddim", num_steps=25, cfg_scale=2.0,
                       clip_x0=1.0)
  config.sample.update(sample)
  return config


def read_samples(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  directory = os.path.join(workdir, synthetic_format.SAMPLES_DIR)
  images, labels = [], []
  for name in sorted(f for f in os.listdir(directory) if f.startswith("shard-")):
    with np.load(os.path.join(directory, name), allow_pickle=False) as shard:
      images.append(shard["images"][..., 0])
      labels.append(shard["labels"])
  return np.concatenate(images), np.concatenate(labels)


def train_and_sample(name: str, root: str, steps: int | None = None, train_overrides=None,
                     sample_overrides=None, seed: int = 0) -> dict:
  """Trains `name` on digits 0 vs 1, samples PER_CLASS per class, and scores the samples with
  the real-data classifier; returns accuracies and times."""
  npz_path = os.path.join(root, "digits01.npz")
  arrays = write_digits_npz(npz_path)
  classify, real_acc = fit_classifier(arrays)
  steps = steps or STEPS[name]
  t0 = time.perf_counter()
  run_dir = os.path.join(root, f"train-{name}")
  train_diffusion(quality_config(name, npz_path, steps, seed=seed, **(train_overrides or {})),
                  run_dir)
  t1 = time.perf_counter()
  sweep_dir = os.path.join(root, f"sweep-{name}")
  sample(override(sweep_config(name, npz_path, run_dir, **(sample_overrides or {})), seed=seed),
         sweep_dir)
  t2 = time.perf_counter()
  images, labels = read_samples(sweep_dir)
  predicted = classify(images)
  per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(len(DIGITS))]
  return {"model": name, "steps": steps, "accuracy": float(np.mean(predicted == labels)),
          "per_class_accuracy": per_class, "real_test_accuracy": real_acc,
          "samples": int(labels.size), "train_s": t1 - t0, "sample_s": t2 - t1,
          "pixel_std": float(images.std())}


def check(result: dict) -> None:
  assert result["real_test_accuracy"] >= 0.95           # the judge itself is sound
  assert result["samples"] == PER_CLASS * len(DIGITS)
  assert result["pixel_std"] > 20                        # not a blank or constant image
  assert result["accuracy"] >= MIN_ACCURACY, result
  assert min(result["per_class_accuracy"]) >= MIN_ACCURACY - 0.1, result    # no class ignored


def test_unet_samples_are_classified_as_the_asked_class(tmp_path):
  check(train_and_sample("unet", str(tmp_path)))


def test_dit_samples_are_classified_as_the_asked_class(tmp_path):
  check(train_and_sample("dit", str(tmp_path)))
