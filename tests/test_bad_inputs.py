"""The bad-input corpus (issue #9): every kind of bad input to every task, run as users run it.

Each case runs `python -m jaxsynth.main --config ... --workdir ... --config.key=value` in a
subprocess and must give exactly one line on stderr, starting `jaxsynth: error:`, that names the
file or key and the fix; exit code 2; and no change on disk: every file and directory under the
case's directory (its data files and --workdir) and under any trained run the command reads is
hashed before and after. A --workdir that did not exist may be left absent or empty. Warnings
logged before the error (absl `W...` lines, e.g. the digits long tail's) are not part of it.

Two inputs that look bad are legitimately trainable and are not error cases:
- a class with a single train image, when the data set has its own val and test splits (the
  module's classifier run trains on such an .npz and must succeed);
- a val split that lacks a class because the file ships it so (the data set's choice).
A class too small to be held out by class (no val.csv: val or test would miss it) is an error.

Trained runs (one tiny classifier, one tiny diffusion run) are module-scoped fixtures; most
cases fail in config or data checks, before jax is imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Callable

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFIER_TINY = ("--config.train.steps=2", "--config.model.width=8",
                   "--config.data.image_size=8", "--config.train.batch_size=16",
                   "--config.train.eval_batch_size=32", "--config.data.threads=1")
# A tiny ViT trains and compiles in a few seconds (a ResNet-18 takes twice as long).
VIT_TINY = ("--config.model.name=vit_s", "--config.model.depths=(1,)",
            "--config.model.num_heads=(2,)", "--config.model.embed_dim=16",
            "--config.model.patch_size=4")
DIFFUSION_TINY = ("--config.train.steps=1", "--config.data.image_size=8",
                  "--config.model.dit.hidden_size=16", "--config.model.dit.depth=1",
                  "--config.model.dit.num_heads=2", "--config.model.dit.patch_size=4",
                  "--config.diffusion.num_timesteps=100", "--config.diffusion.val_batches=0",
                  "--config.train.sample_every=0", "--config.train.batch_size=8",
                  "--config.train.eval_batch_size=8", "--config.data.threads=1")
UNET_TINY = ("--config.train.steps=1", "--config.data.image_size=8",
             "--config.model.unet.channels=(8,16)", "--config.model.unet.res_blocks=1",
             "--config.model.unet.attn_resolutions=()", "--config.model.unet.norm_groups=4",
             "--config.model.unet.mid_attention=False", "--config.diffusion.num_timesteps=100",
             "--config.diffusion.val_batches=0", "--config.train.sample_every=0",
             "--config.train.batch_size=8", "--config.data.threads=1")
NAMES = ("normal", "benign", "rare")
# An absl warning line (W1202 03:39:20.733002 12345 imbalance.py:47] ...).
ABSL_WARNING = re.compile(r"^W\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
  """`python -m jaxsynth.main ARGS` on CPU, sharing the tests' XLA compilation cache."""
  cache = os.environ.get("JAXSYNTH_TEST_XLA_CACHE") or os.path.join(tempfile.gettempdir(),
                                                                    "jaxsynth-test-xla-cache")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return subprocess.run([sys.executable, "-m", "jaxsynth.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def snapshot(root) -> dict:
  """{relative path: sha256 | 'dir' | 'link -> target' | stat} of everything under `root`."""
  root = str(root)
  out = {}
  if not os.path.lexists(root):
    return out
  for directory, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(directory, name)
      rel = os.path.relpath(path, root)
      if os.path.islink(path):
        out[rel] = f"link -> {os.readlink(path)}"
      elif os.path.isdir(path):
        out[rel] = "dir"
      else:
        try:
          with open(path, "rb") as f:
            out[rel] = hashlib.sha256(f.read()).hexdigest()
        except OSError:  # unreadable (chmod 000 as non-root): its size and times
          st = os.lstat(path)
          out[rel] = (st.st_size, st.st_mtime_ns, st.st_mode)
  return out


# ------------------------------------------------------------------------------ data makers


def images(n: int, size: int = 8, channels: int = 0, seed: int = 0) -> np.ndarray:
  """Random uint8 images (n, size, size[, channels])."""
  shape = (n, size, size) + ((channels,) if channels else ())
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def npz_arrays(train=(12, 8, 6), val=(3, 3, 3), test=(3, 3, 3)) -> dict:
  """A valid MedMNIST-style set: 3 named classes, 8x8 gray, (N, 1) uint8 labels."""
  arrays = {"class_names": np.array(NAMES)}
  for k, (split, counts) in enumerate((("train", train), ("val", val), ("test", test))):
    labels = np.repeat(np.arange(len(counts)), counts)
    arrays[f"{split}_images"] = images(labels.size, seed=k)
    arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
  return arrays


def write_npz(path, **changes) -> str:
  """Writes npz_arrays() with `changes` (None drops a key); returns the path."""
  arrays = npz_arrays()
  arrays.update(changes)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return str(path)


def write_folder(root, counts=(6, 6), splits=("train", "val", "test"), names=("a", "b")) -> str:
  """An image folder: img/{split}_{i}.png (8x8 gray), {split}.csv for `splits`, classes.txt."""
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  for k, split in enumerate(splits):
    rows = ["path,label"]
    labels = np.repeat(np.arange(len(counts)), counts)
    for i, (image, label) in enumerate(zip(images(labels.size, seed=k), labels)):
      rel = f"img/{split}_{i}.png"
      Image.fromarray(image).save(os.path.join(root, rel))
      rows.append(f"{rel},{label}")
    with open(os.path.join(root, f"{split}.csv"), "w", encoding="utf-8") as f:
      f.write("\n".join(rows) + "\n")
  with open(os.path.join(root, "classes.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(names) + "\n")
  return str(root)


def write_sweep(samples, counts=(10, 10), num_classes=2, image_shape=(8, 8, 1),
                manifest_shape=None) -> str:
  """A sweep directory in the documented format (GUIDE section 7): shards + manifest.json."""
  os.makedirs(samples, exist_ok=True)
  shards, start = [], 0
  for k, n in enumerate(counts):
    index = np.arange(start, start + n, dtype=np.int64)
    name = f"shard-{k:05d}.npz"
    np.savez(os.path.join(samples, name), images=images(n, image_shape[0], image_shape[2], k),
             labels=index % num_classes, index=index)
    shards.append({"file": name, "count": n})
    start += n
  manifest = {"num_classes": num_classes, "image_shape": list(manifest_shape or image_shape),
              "shards": shards}
  with open(os.path.join(samples, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  return str(samples)


def symlink_loop(path) -> str:
  """Makes `path` a symlink loop (path -> path.2 -> path); returns the path."""
  os.symlink(str(path) + ".2", str(path))
  os.symlink(str(path), str(path) + ".2")
  return str(path)


def unreadable(path) -> str:
  """chmod 000 `path`; skips the case where that does not stop reads (root, CAP_DAC_OVERRIDE)."""
  os.chmod(path, 0)
  try:
    with open(path, "rb"):
      pass
  except PermissionError:
    return str(path)
  os.chmod(path, 0o644)
  pytest.skip("chmod 000 does not stop reads here (root): run as a user to check this case")


def copy_run(run_dir: str, dest, edit: Callable[[dict], None] | None = None,
             checkpoints: bool = True) -> str:
  """A copy of a trained run (config.json, optionally its checkpoints), config edited."""
  os.makedirs(dest)
  with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  if edit:
    edit(config)
  with open(os.path.join(dest, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  if checkpoints:
    shutil.copytree(os.path.join(run_dir, "checkpoints"), os.path.join(dest, "checkpoints"))
  return str(dest)


# ---------------------------------------------------------------------------- trained runs


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> str:
  """A finished tiny train_classifier run on an .npz whose class 'rare' has ONE train image.

  That is legitimately trainable (val and test come with the file), so it must run: the
  `class with one image` input is an error only where a held-out split cannot have it.
  """
  root = tmp_path_factory.mktemp("classifier_run")
  path = root / "one_rare.npz"
  arrays = npz_arrays(train=(20, 12, 1), val=(4, 4, 2), test=(4, 4, 2))
  np.savez(path, **arrays)
  workdir = str(root / "run")
  proc = run_cli("--config", "configs/classifier.py:npz", "--workdir", workdir,
                 f"--config.data.path={path}", *CLASSIFIER_TINY, *VIT_TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads(open(os.path.join(workdir, "metrics.json"), encoding="utf-8").read())
  assert len(metrics["test"]["per_class_accuracy"]) == 3
  return workdir


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory) -> str:
  """A finished tiny train_diffusion run (DiT on digits, latest checkpoint only: no val)."""
  workdir = str(tmp_path_factory.mktemp("diffusion_run") / "run")
  proc = run_cli("--config", "configs/diffusion.py:dit", "--workdir", workdir, *DIFFUSION_TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


# ----------------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Bad:
  """One bad command: its arguments, the fragments its error line must hold, dirs it reads."""
  args: list
  expect: tuple
  reads: tuple = ()         # trained runs the command reads (hashed before and after)
  workdir: str | None = None  # default: the case's tmp/run


class Ctx:
  """What a case builds on: its tmp dir, its default workdir, the trained runs (lazily)."""

  def __init__(self, tmp, request):
    self.tmp, self.request = tmp, request
    self.workdir = str(tmp / "run")

  def classifier_run(self) -> str:
    return self.request.getfixturevalue("classifier_run")

  def diffusion_run(self) -> str:
    return self.request.getfixturevalue("diffusion_run")


CASES: dict[str, tuple[Callable[[Ctx], Bad], str | None]] = {}


def case(name: str, xfail: str | None = None):
  """Registers a case builder `fn(ctx) -> Bad`; `xfail` is the change it still needs."""
  def register(fn):
    assert name not in CASES, name
    CASES[name] = (fn, xfail)
    return fn
  return register


def merged(base, overrides) -> list:
  """`base` flags without those `overrides` sets again (repeated tuple flags would append)."""
  keys = {o.split("=", 1)[0] for o in overrides}
  return [b for b in base if b.split("=", 1)[0] not in keys] + list(overrides)


def classifier(ctx: Ctx, *overrides, variant: str = "npz") -> list:
  return ["--config", f"configs/classifier.py:{variant}", "--workdir", ctx.workdir,
          *merged(CLASSIFIER_TINY, overrides)]


def npz_case(ctx: Ctx, *overrides, **changes) -> list:
  """train_classifier on an .npz written with `changes`."""
  path = write_npz(ctx.tmp / "data.npz", **changes)
  return classifier(ctx, f"--config.data.path={path}", *overrides)


# -- config and command line

@case("config_unknown_key")
def _(ctx):
  return Bad(classifier(ctx, "--config.train.stepz=3", variant="digits"),
             ("unknown config key 'stepz'", "every key must exist"))


@case("config_misspelt_section")
def _(ctx):
  return Bad(classifier(ctx, "--config.trian.steps=3", variant="digits"),
             ("unknown config key 'trian' (did you mean 'train'?)",))


@case("config_wrong_type_int")
def _(ctx):
  return Bad(classifier(ctx, "--config.train.steps=abc", variant="digits"),
             ("config key 'train.steps' has bad value 'abc'", "use an int"))


@case("config_wrong_type_bool")
def _(ctx):
  return Bad(classifier(ctx, "--config.data.augment.hflip=maybe", variant="digits"),
             ("config key 'data.augment.hflip' has bad value 'maybe'", "use True or False"))


@case("config_wrong_type_in_tuple")
def _(ctx):
  return Bad(classifier(ctx, "--config.data.class_counts=abc", variant="digits"),
             ("config key 'data.class_counts'", "give whole numbers, one per class"))


@case("config_bad_value")
def _(ctx):
  return Bad(classifier(ctx, "--config.data.channels=2", variant="digits"),
             ("config key 'data.channels' has bad value 2", "use 0, 1 or 3"))


@case("config_nan_value")
def _(ctx):
  return Bad(classifier(ctx, "--config.data.mean=nan", variant="digits"),
             ("config key 'data.mean' has bad value nan", "use a finite number"))


@case("config_unknown_task")
def _(ctx):
  return Bad(classifier(ctx, "--config.task=train_gann", variant="digits"),
             ("config key 'task' has bad value 'train_gann'", "use one of"))


@case("config_file_missing")
def _(ctx):
  return Bad(["--config", "configs/nope.py", "--workdir", ctx.workdir], ("configs/nope.py",))


@case("config_file_syntax_error")
def _(ctx):
  (ctx.tmp / "mine.py").write_text("def get_config(:\n  pass\n")
  return Bad(["--config", str(ctx.tmp / "mine.py"), "--workdir", ctx.workdir],
             ("mine.py cannot be loaded (SyntaxError: invalid syntax", "fix the file"))


@case("config_unknown_variant")
def _(ctx):
  return Bad(["--config", "configs/diffusion.py:gan", "--workdir", ctx.workdir],
             ("unknown configs/diffusion.py variant 'gan'", "use one of unet, dit, ldm, sample"))


@case("config_unknown_model")
def _(ctx):
  return Bad(classifier(ctx, "--config.model.name=resnet19", variant="digits"),
             ("config key 'model.name' has unknown value 'resnet19'", "use one of"))


@case("config_select_metric")
def _(ctx):
  return Bad(classifier(ctx, "--config.train.select_metric=auroc", variant="digits"),
             ("config key 'train.select_metric' has bad value 'auroc'", "use one of"))


@case("config_evaluate_split")
def _(ctx):
  return Bad(classifier(ctx, "--config.evaluate.splits=('val','holdout')", variant="digits"),
             ("config key 'evaluate.splits'", "splits among train, val, test"))


@case("config_class_counts_length")
def _(ctx):
  return Bad(classifier(ctx, "--config.data.class_counts=(5,5)", variant="digits"),
             ("'data.class_counts' has 2 entries but the data has 10 classes",
              "one count per class"))


@case("config_class_counts_too_many")
def _(ctx):
  return Bad(npz_case(ctx, "--config.data.class_counts=(12,8,60)"),
             ("class 2 has 6 samples but 60 were asked for", "data.class_counts"))


@case("config_num_classes_mismatch")
def _(ctx):
  return Bad(npz_case(ctx, "--config.data.num_classes=4"),
             ("data.npz names 3 classes", "data.num_classes=4", "set data.num_classes=0"))


@case("pretrained_weights_missing")
def _(ctx):
  missing = ctx.tmp / "resnet18.safetensors"
  return Bad(classifier(ctx, f"--config.model.pretrained={missing}", variant="digits"),
             (str(missing), "do not exist", "set model.pretrained"))


# -- the workdir

@case("workdir_is_a_file")
def _(ctx):
  (ctx.tmp / "run").write_text("not a directory\n")
  return Bad(classifier(ctx, variant="digits"),
             (f"--workdir {ctx.workdir} is a file, not a directory", "choose another --workdir"))


@case("workdir_symlink_loop")
def _(ctx):
  symlink_loop(ctx.tmp / "run")
  return Bad(classifier(ctx, variant="digits"),
             (f"--workdir {ctx.workdir} is a symlink loop", "remove the link"))


@case("workdir_inside_a_file")
def _(ctx):
  (ctx.tmp / "file").write_text("x\n")
  ctx.workdir = str(ctx.tmp / "file" / "run")
  return Bad(classifier(ctx, variant="digits"),
             ("lies inside a file", "choose another --workdir"))


# -- .npz files

@case("npz_missing")
def _(ctx):
  return Bad(classifier(ctx, f"--config.data.path={ctx.tmp / 'absent.npz'}"),
             ("absent.npz does not exist", "set data.path"))


@case("npz_corrupt")
def _(ctx):
  (ctx.tmp / "bad.npz").write_bytes(b"PK\x03\x04 this is not really a zip file")
  return Bad(classifier(ctx, f"--config.data.path={ctx.tmp / 'bad.npz'}"),
             ("bad.npz is not a readable .npz file", "np.savez"))


@case("npz_is_npy")
def _(ctx):
  np.save(ctx.tmp / "images.npy", images(4))
  return Bad(classifier(ctx, f"--config.data.path={ctx.tmp / 'images.npy'}"),
             ("images.npy is not a readable .npz file", "np.savez"))


@case("npz_is_a_directory")
def _(ctx):
  (ctx.tmp / "data.npz").mkdir()
  return Bad(classifier(ctx, f"--config.data.path={ctx.tmp / 'data.npz'}"),
             ("data.npz is a directory, not a file", "set data.path"))


@case("npz_symlink_loop")
def _(ctx):
  return Bad(classifier(ctx, f"--config.data.path={symlink_loop(ctx.tmp / 'data.npz')}"),
             ("data.npz is a symlink loop", "fix the link"))


@case("npz_unreadable")
def _(ctx):
  path = unreadable(write_npz(ctx.tmp / "data.npz"))
  return Bad(classifier(ctx, f"--config.data.path={path}"),
             ("data.npz cannot be read (permission denied)", "chmod"))


@case("npz_wrong_keys")
def _(ctx):
  np.savez(ctx.tmp / "data.npz", x_train=images(4), y_train=np.zeros(4, np.int64))
  return Bad(classifier(ctx, f"--config.data.path={ctx.tmp / 'data.npz'}"),
             ("data.npz has no key 'train_images'", "keys present: ['x_train', 'y_train']",
              "Use the MedMNIST layout"))


@case("npz_label_out_of_range")
def _(ctx):
  labels = np.repeat(np.arange(3), (12, 8, 6))
  labels[5] = 3
  return Bad(npz_case(ctx, train_labels=labels),
             ("key 'train_labels' row 5 has label 3, outside the 3 classes", "fix the label"))


@case("npz_negative_label")
def _(ctx):
  labels = np.repeat(np.arange(3), (12, 8, 6)).astype(np.int64)
  labels[0] = -1
  return Bad(npz_case(ctx, train_labels=labels),
             ("key 'train_labels' row 0 has label -1", "fix the label"))


@case("npz_float_images")
def _(ctx):
  return Bad(npz_case(ctx, train_images=images(26).astype(np.float32) / 255),
             ("key 'train_images' has dtype float32, not uint8", ".astype(np.uint8)"))


@case("npz_nan_images")
def _(ctx):
  nan = np.full((26, 8, 8), np.nan)
  return Bad(npz_case(ctx, train_images=nan),
             ("key 'train_images' has dtype float64, not uint8", "scale the images to 0..255"))


@case("npz_images_wrong_rank")
def _(ctx):
  return Bad(npz_case(ctx, train_images=images(26).reshape(26, 64)),
             ("key 'train_images' has shape (26, 64)", "use (N, H, W) or (N, H, W, C)"))


@case("npz_empty_class")
def _(ctx):
  # class_names declares 3 classes; the train split has none of class 1.
  labels = np.repeat([0, 2], (13, 13))
  return Bad(npz_case(ctx, train_labels=labels),
             ("class 1 ('benign') has no samples in the train split", "add samples of it"))


@case("npz_declared_class_empty")
def _(ctx):
  # data.num_classes declares 4 classes; the file (no class_names) has labels 0..2 only.
  return Bad(npz_case(ctx, "--config.data.num_classes=4", class_names=None),
             ("class 3 ('3') has no samples in the train split", "set data.num_classes to the "
              "true number of classes"))


@case("npz_shape_mismatch")
def _(ctx):
  return Bad(npz_case(ctx, "--config.data.image_size=0", val_images=images(9, size=10)),
             ("split 'val' has 10x10 images but the train split has 8x8",
              "set data.image_size"))


@case("npz_channel_mismatch")
def _(ctx):
  return Bad(npz_case(ctx, val_images=images(9, channels=3)),
             ("split 'val' has 3-channel images but the train split has 1",
              "set data.channels=1 or 3"))


@case("npz_row_mismatch")
def _(ctx):
  return Bad(npz_case(ctx, test_labels=np.zeros(5, np.int64)),
             ("has 9 rows in 'test_images' but 5 in 'test_labels'", "every image needs one row"))


@case("npz_one_hot_labels")
def _(ctx):
  return Bad(npz_case(ctx, train_labels=np.eye(3, dtype=np.uint8)[np.repeat(np.arange(3),
                                                                           (12, 8, 6))]),
             ("key 'train_labels' has shape (26, 3)", "convert one-hot labels with argmax"))


@case("npz_pickled_objects")
def _(ctx):
  return Bad(npz_case(ctx, class_names=np.array(list(NAMES), dtype=object)),
             ("key 'class_names' holds Python objects", "save it as a plain array"))


# -- image folders

def folder(ctx: Ctx, *overrides, **kwargs) -> list:
  root = write_folder(ctx.tmp / "images", **kwargs)
  return classifier(ctx, f"--config.data.path={root}", *overrides, variant="folder")


@case("folder_missing")
def _(ctx):
  return Bad(classifier(ctx, f"--config.data.path={ctx.tmp / 'nope'}", variant="folder"),
             ("image folder", "nope does not exist", "set data.path to a directory"))


@case("folder_is_a_file")
def _(ctx):
  (ctx.tmp / "images.zip").write_bytes(b"PK")
  return Bad(classifier(ctx, f"--config.data.path={ctx.tmp / 'images.zip'}", variant="folder"),
             ("images.zip is a file, not a directory", "set data.path to a directory"))


@case("folder_no_train_csv")
def _(ctx):
  args = folder(ctx)
  os.remove(ctx.tmp / "images" / "train.csv")
  return Bad(args, ("train.csv does not exist", "'path,label' header"))


@case("folder_bad_header")
def _(ctx):
  args = folder(ctx)
  (ctx.tmp / "images" / "train.csv").write_text("file,class\nimg/train_0.png,0\n")
  return Bad(args, ("train.csv line 1", "header must be 'path,label'"))


@case("folder_label_not_a_class")
def _(ctx):
  args = folder(ctx)
  with open(ctx.tmp / "images" / "train.csv", "a", encoding="utf-8") as f:
    f.write("img/train_0.png,cat\n")
  return Bad(args, ("train.csv line 14 column 'label' is 'cat', not an integer",
                    "a name from classes.txt"))


@case("folder_missing_image")
def _(ctx):
  args = folder(ctx)
  os.remove(ctx.tmp / "images" / "img" / "train_7.png")
  return Bad(args, ("image img/train_7.png", "train.csv line 9", "does not exist",
                    "fix the path or remove the row"))


@case("folder_corrupt_image")
def _(ctx):
  args = folder(ctx)
  (ctx.tmp / "images" / "img" / "test_3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  return Bad(args, ("image img/test_3.png", "test.csv line 5", "cannot be read as an image",
                    "replace the file or remove its row"))


@case("folder_image_is_a_directory")
def _(ctx):
  args = folder(ctx)
  os.remove(ctx.tmp / "images" / "img" / "val_2.png")
  (ctx.tmp / "images" / "img" / "val_2.png").mkdir()
  return Bad(args, ("image img/val_2.png", "val.csv line 4", "Is a directory",
                    "replace the file or remove its row"))


@case("folder_image_symlink_loop")
def _(ctx):
  args = folder(ctx)
  os.remove(ctx.tmp / "images" / "img" / "train_4.png")
  symlink_loop(ctx.tmp / "images" / "img" / "train_4.png")
  return Bad(args, ("image img/train_4.png", "Too many levels of symbolic links",
                    "remove its row"))


@case("folder_unreadable_csv")
def _(ctx):
  args = folder(ctx)
  unreadable(ctx.tmp / "images" / "train.csv")
  return Bad(args, ("train.csv cannot be read", "check its permissions"))


@case("folder_size_mismatch")
def _(ctx):
  args = folder(ctx, "--config.data.image_size=0")
  Image.fromarray(images(1, size=12)[0]).save(ctx.tmp / "images" / "img" / "train_5.png")
  return Bad(args, ("image img/train_5.png", "is 12x12 but the first image img/train_0.png is "
                    "8x8", "set data.image_size"))


@case("folder_channel_mismatch")
def _(ctx):
  args = folder(ctx)
  Image.fromarray(images(1, channels=3)[0]).save(ctx.tmp / "images" / "img" / "train_9.png")
  return Bad(args, ("image img/train_9.png", "has 3 channel(s) but the first image",
                    "set data.channels=1 or 3"))


@case("folder_float_nan_image")
def _(ctx):
  args = folder(ctx)
  nan = np.full((8, 8), np.nan, np.float32)
  Image.fromarray(nan, mode="F").save(ctx.tmp / "images" / "img" / "train_2.tiff")
  csv = (ctx.tmp / "images" / "train.csv").read_text()
  (ctx.tmp / "images" / "train.csv").write_text(csv.replace("train_2.png", "train_2.tiff"))
  return Bad(args, ("image img/train_2.tiff", "is a 'F' image, not 8-bit", "convert it to 8-bit"))


@case("folder_class_with_one_image")
def _(ctx):
  # No val.csv/test.csv: both are held out of train by class, but class 'rare' has 1 image.
  return Bad(folder(ctx, counts=(10, 10, 1), splits=("train",), names=("a", "b", "rare")),
             ("class 2 ('rare') has 1 sample(s)", "too few to hold out a val split by class",
              "give the data set its own val split"))


# -- synthetic sweeps as data

def synthetic(ctx: Ctx, path) -> list:
  return classifier(ctx, f"--config.data.path={path}", variant="synthetic")


@case("synthetic_no_manifest")
def _(ctx):
  (ctx.tmp / "sweep").mkdir()
  return Bad(synthetic(ctx, ctx.tmp / "sweep"),
             ("no manifest.json in", "a workdir of a finished sampling run"))


@case("synthetic_manifest_not_json")
def _(ctx):
  samples = write_sweep(ctx.tmp / "sweep" / "samples")
  with open(os.path.join(samples, "manifest.json"), "w", encoding="utf-8") as f:
    f.write('{"num_classes": 2, "shards": [')
  return Bad(synthetic(ctx, ctx.tmp / "sweep"),
             ("manifest.json is not valid JSON", "re-run the sampling stage"))


@case("synthetic_shard_missing")
def _(ctx):
  samples = write_sweep(ctx.tmp / "sweep" / "samples")
  os.remove(os.path.join(samples, "shard-00001.npz"))
  return Bad(synthetic(ctx, ctx.tmp / "sweep"),
             ("shard-00001.npz listed in manifest.json does not exist",
              "re-run the sampling stage"))


@case("synthetic_shard_wrong_shape")
def _(ctx):
  write_sweep(ctx.tmp / "sweep" / "samples", image_shape=(8, 8, 1), manifest_shape=(16, 16, 1))
  return Bad(synthetic(ctx, ctx.tmp / "sweep"),
             ("shard-00000.npz has 'images' uint8 (10, 8, 8, 1)", "manifest.json says uint8",
              "re-run the sampling stage"))


@case("synthetic_label_out_of_range")
def _(ctx):
  samples = write_sweep(ctx.tmp / "sweep" / "samples", num_classes=3)
  manifest = json.loads(open(os.path.join(samples, "manifest.json"), encoding="utf-8").read())
  manifest["num_classes"] = 2
  with open(os.path.join(samples, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  return Bad(synthetic(ctx, ctx.tmp / "sweep"),
             ("has label 2, outside the 2 classes", "fix the label"))


# -- synthetic sets mixed into classifier training (data.synthetic)

def mixed(ctx: Ctx, *overrides, **sweep) -> list:
  """train_classifier on the 3-class npz plus one sweep written with `sweep`."""
  path = write_sweep(ctx.tmp / "sweep" / "samples", **sweep)
  return npz_case(ctx, f"--config.data.synthetic.paths=('{path}',)", *overrides)


@case("synthetic_mix_other_classes")
def _(ctx):
  return Bad(mixed(ctx, num_classes=2),
             ("synthetic set", "has 2 classes but the real data", "has 3",
              "a generator trained on this data"))


@case("synthetic_mix_other_shape")
def _(ctx):
  return Bad(mixed(ctx, "--config.data.image_size=0", num_classes=3, image_shape=(6, 6, 1)),
             ("gives 6x6x1 images but the real train split gives 8x8x1",
              "sample at the real data's size"))


@case("synthetic_mix_bad_fraction")
def _(ctx):
  return Bad(mixed(ctx, "--config.data.synthetic.mix=fraction",
                   "--config.data.synthetic.fraction=1.0", num_classes=3),
             ("data.synthetic.fraction", "use a fraction in (0, 1)"))


@case("synthetic_mix_fraction_decoupled")
def _(ctx):
  return Bad(mixed(ctx, "--config.data.synthetic.mix=fraction", "--config.recipe.name=crt",
                   "--config.recipe.stage2_epochs=1", num_classes=3),
             ("data.synthetic.mix", "recipe.name=crt", "use data.synthetic.mix=count"))


# -- evaluate

def evaluate(ctx: Ctx, run_dir, *overrides, data_path=None) -> list:
  data = data_path or write_npz(ctx.tmp / "data.npz")
  return ["--config", "configs/classifier.py:npz", "--workdir", ctx.workdir,
          "--config.task=evaluate", f"--config.evaluate.run_dir={run_dir}",
          f"--config.data.path={data}", *merged(CLASSIFIER_TINY + VIT_TINY, overrides)]


@case("evaluate_run_dir_missing")
def _(ctx):
  return Bad(evaluate(ctx, ctx.tmp / "nowhere"),
             ("config key 'evaluate.run_dir'", "does not exist",
              "set evaluate.run_dir to the --workdir of a train_classifier run"))


@case("evaluate_diffusion_run")
def _(ctx):
  run = ctx.diffusion_run()
  return Bad(evaluate(ctx, run), ("is a 'train_diffusion' run, not a train_classifier run",
                                  "set evaluate.run_dir"), reads=(run,))


@case("evaluate_corrupt_run_config")
def _(ctx):
  fake = ctx.tmp / "trained"
  fake.mkdir()
  (fake / "config.json").write_text('{"task": "train_classifier", "model": ')
  return Bad(evaluate(ctx, fake), ("trained/config.json is not valid JSON", "restore it"))


@case("evaluate_other_model")
def _(ctx):
  run = ctx.classifier_run()
  return Bad(evaluate(ctx, run, "--config.model.embed_dim=32"),
             ("model.embed_dim: 16 -> 32", "pass the same model keys"), reads=(run,))


@case("evaluate_other_class_count")
def _(ctx):
  run = ctx.classifier_run()
  args = evaluate(ctx, run, "--config.data.source=digits")
  return Bad(args, ("was trained on 3 classes", "has 10", "evaluate on data with the same "
                    "classes"), reads=(run,))


@case("evaluate_no_checkpoint")
def _(ctx):
  run = ctx.classifier_run()
  fake = copy_run(run, ctx.tmp / "trained", checkpoints=False)
  return Bad(evaluate(ctx, fake), ("no 'best' checkpoint in", "train the run first"),
             reads=(run,))


@case("evaluate_into_finished_workdir")
def _(ctx):
  run = ctx.classifier_run()
  ctx.workdir = run
  return Bad(evaluate(ctx, run), ("metrics.json exists", "pass --overwrite"), reads=(run,))


# -- train_diffusion

def diffusion(ctx: Ctx, *overrides, variant: str = "unet") -> list:
  return ["--config", f"configs/diffusion.py:{variant}", "--workdir", ctx.workdir,
          *merged(UNET_TINY, overrides)]


@case("diffusion_bad_schedule")
def _(ctx):
  return Bad(diffusion(ctx, "--config.diffusion.num_timesteps=20"),
             ("'diffusion.num_timesteps' (20)", "use more timesteps"))


@case("diffusion_norm_groups")
def _(ctx):
  return Bad(diffusion(ctx, "--config.model.unet.norm_groups=3"),
             ("config key 'model.unet.norm_groups' (3) must divide", "(8, 16)"))


@case("diffusion_image_size")
def _(ctx):
  return Bad(diffusion(ctx, "--config.model.unet.channels=(8,16,16)",
                       "--config.data.image_size=6"),
             ("6x6 images do not fit", "set data.image_size to a multiple of 4"))


@case("diffusion_data_missing")
def _(ctx):
  return Bad(diffusion(ctx, "--config.data.source=npz", f"--config.data.path={ctx.tmp / 'x.npz'}"),
             ("x.npz does not exist", "set data.path"))


@case("diffusion_condition_without_groups")
def _(ctx):
  return Bad(diffusion(ctx, "--config.diffusion.condition=class_group"),
             ("config key 'diffusion.condition' = 'class_group' needs group ids",
              "{split}_groups", "set diffusion.condition=class"))


# -- train_autoencoder and latent diffusion

def autoencoder(ctx: Ctx, *overrides) -> list:
  return ["--config", "configs/autoencoder.py:vq:tiny", "--workdir", ctx.workdir,
          "--config.data.threads=1", *overrides]


@case("autoencoder_factor_does_not_divide")
def _(ctx):
  return Bad(autoencoder(ctx, "--config.model.channels=(4,8,8,8)", "--config.model.norm_groups=4"),
             ("'model.channels'", "downsample by 8, which must divide the 12x12 images"))


@case("autoencoder_lpips_without_weights")
def _(ctx):
  return Bad(autoencoder(ctx, "--config.loss.lpips_weight=1.0", "--config.data.image_size=16"),
             ("'loss.lpips_weight'", "set loss.lpips_backbone", "or lpips_weight=0"))


@case("autoencoder_lpips_weights_missing")
def _(ctx):
  return Bad(autoencoder(ctx, "--config.loss.lpips_weight=1.0", "--config.data.image_size=16",
                         f"--config.loss.lpips_backbone={ctx.tmp / 'vgg16.pth'}",
                         f"--config.loss.lpips_lin={ctx.tmp / 'vgg.pth'}"),
             ("'loss.lpips_backbone'", "vgg16.pth", "no such file"))


@case("autoencoder_ssim_on_tiny_images")
def _(ctx):
  return Bad(autoencoder(ctx, "--config.data.image_size=8", "--config.model.channels=(8,16)"),
             ("'loss.ssim_weight'", "SSIM needs images of at least 11 px", "set 0"))


@case("ldm_autoencoder_run_missing")
def _(ctx):
  return Bad(diffusion(ctx, f"--config.latent.autoencoder_run={ctx.tmp / 'nowhere'}",
                       variant="ldm"),
             ("config key 'latent.autoencoder_run'", "does not exist",
              "--workdir of a train_autoencoder run"))


@case("ldm_autoencoder_run_is_a_diffusion_run")
def _(ctx):
  run = ctx.diffusion_run()
  return Bad(diffusion(ctx, f"--config.latent.autoencoder_run={run}", variant="ldm"),
             ("train_autoencoder",), reads=(run,))


# -- sample

def sample(ctx: Ctx, run_dir, *overrides) -> list:
  return ["--config", "configs/diffusion.py:sample", "--workdir", ctx.workdir,
          f"--config.sample.run_dir={run_dir}", "--config.sample.num_steps=2",
          "--config.sample.shard_size=6", "--config.sample.batch_size=4", *overrides]


@case("sample_without_run_dir")
def _(ctx):
  return Bad(["--config", "configs/diffusion.py:sample", "--workdir", ctx.workdir],
             ("config key 'sample.run_dir' has bad value ''", "set --config.sample.run_dir"))


@case("sample_run_dir_missing")
def _(ctx):
  return Bad(sample(ctx, ctx.tmp / "nowhere"),
             ("config key 'sample.run_dir'", "does not exist",
              "set sample.run_dir to the --workdir of a train_diffusion or train_gan run"))


@case("sample_classifier_workdir")
def _(ctx):
  run = ctx.classifier_run()
  return Bad(sample(ctx, run), ("is a 'train_classifier' run, not a train_diffusion or "
                                "train_gan run", "set sample.run_dir"), reads=(run,))


@case("sample_corrupt_run_config")
def _(ctx):
  run = ctx.diffusion_run()
  fake = copy_run(run, ctx.tmp / "trained", checkpoints=False)
  with open(os.path.join(fake, "config.json"), "r+", encoding="utf-8") as f:
    f.truncate(100)
  return Bad(sample(ctx, fake), ("trained/config.json is not valid JSON", "restore it"),
             reads=(run,))


@case("sample_run_data_gone")
def _(ctx):
  run = ctx.diffusion_run()

  def to_npz(config):
    config["data"].update(source="npz", path=str(ctx.tmp / "moved.npz"))

  fake = copy_run(run, ctx.tmp / "trained", to_npz, checkpoints=False)
  return Bad(sample(ctx, fake), ("the data of the trained run", "moved.npz does not exist",
                                 "restore the files the run was trained on"), reads=(run,))


@case("sample_no_best_checkpoint")
def _(ctx):
  run = ctx.diffusion_run()
  return Bad(sample(ctx, run, "--config.sample.checkpoint=best"),
             ("no 'best' checkpoint in", "diffusion.val_batches > 0",
              "set sample.checkpoint=latest"), reads=(run,))


@case("sample_budget_per_class")
def _(ctx):
  run = ctx.diffusion_run()
  return Bad(sample(ctx, run, "--config.sample.budget=counts",
                    "--config.sample.class_counts=(5,5)"),
             ("config key 'sample.class_counts'", "for each of the 10 classes"), reads=(run,))


@case("sample_cell_counts_for_a_class_run")
def _(ctx):
  run = ctx.diffusion_run()
  return Bad(sample(ctx, run, "--config.sample.budget=counts",
                    "--config.sample.cell_counts=(1,2)"),
             ("config key 'sample.cell_counts' is set", "diffusion.condition=class",
              "use sample.class_counts"), reads=(run,))


def _previous_sweep(ctx: Ctx, run: str, with_config: bool) -> None:
  """ctx.workdir holds a sweep of another plan (budget=counts) from `run`."""
  from configs import diffusion as diffusion_configs  # pylint: disable=import-outside-toplevel
  from jaxsynth import config as config_lib  # pylint: disable=import-outside-toplevel
  config = diffusion_configs.get_config("sample")
  config.sample.update(run_dir=run, budget="counts", class_counts=(2,) * 10, num_steps=2,
                       shard_size=6, batch_size=4)
  os.makedirs(ctx.workdir)
  if with_config:
    with open(os.path.join(ctx.workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config_lib.to_json(config))
  write_sweep(os.path.join(ctx.workdir, "samples"), counts=(6, 6), num_classes=10)


@case("sample_sweep_of_another_plan")
def _(ctx):
  run = ctx.diffusion_run()
  _previous_sweep(ctx, run, with_config=True)
  return Bad(sample(ctx, run), ("holds an unfinished run with another config",
                                "sample.budget: 'counts' -> 'balance'", "choose another --workdir"),
             reads=(run,))


@case("sample_sweep_of_another_plan_without_config")
def _(ctx):
  run = ctx.diffusion_run()
  _previous_sweep(ctx, run, with_config=False)
  return Bad(sample(ctx, run), ("samples", "--overwrite", "choose another --workdir"),
             reads=(run,))


@case("sample_checkpoint_of_another_model")
def _(ctx):
  run = ctx.diffusion_run()

  def wider(config):
    config["model"]["dit"]["hidden_size"] = 32

  fake = copy_run(run, ctx.tmp / "trained", wider)
  return Bad(sample(ctx, fake), ("checkpoint", "does not match", "model"), reads=(run,))


def filter_args(ctx: Ctx, *overrides, variant: str = "classifier") -> list:
  return ["--config", f"configs/filter.py:{variant}", "--workdir", ctx.workdir,
          "--config.filter.batch_size=8", *overrides]


def finished_sweep(ctx: Ctx, complete: bool = True) -> str:
  """A sweep of 2 classes at 8x8x1 outside the workdir, its manifest `complete` as given."""
  directory = write_sweep(ctx.tmp / "sweep" / "samples")
  manifest = json.load(open(os.path.join(directory, "manifest.json"), encoding="utf-8"))
  manifest["complete"] = complete
  with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  return directory


@case("filter_input_missing")
def _(ctx):
  return Bad(filter_args(ctx, f"--config.filter.input={ctx.tmp / 'nowhere'}",
                         f"--config.filter.classifier={ctx.tmp}"),
             ("config key 'filter.input'", "does not exist"))


@case("filter_input_unfinished")
def _(ctx):
  directory = finished_sweep(ctx, complete=False)
  return Bad(filter_args(ctx, f"--config.filter.input={directory}",
                         f"--config.filter.classifier={ctx.tmp}"),
             ("is unfinished", "rerun its sample command first"))


@case("filter_classifier_missing")
def _(ctx):
  return Bad(filter_args(ctx, f"--config.filter.input={finished_sweep(ctx)}",
                         f"--config.filter.classifier={ctx.tmp / 'nowhere'}"),
             ("config key 'filter.classifier'", "does not exist",
              "finished train_classifier --workdir"))


@case("filter_classifier_is_a_diffusion_run")
def _(ctx):
  run = ctx.diffusion_run()
  return Bad(filter_args(ctx, f"--config.filter.input={finished_sweep(ctx)}",
                         f"--config.filter.classifier={run}"),
             ("is a 'train_diffusion' run, not a train_classifier run",), reads=(run,))


@case("filter_classifier_of_other_classes")
def _(ctx):
  run = ctx.classifier_run()
  return Bad(filter_args(ctx, f"--config.filter.input={finished_sweep(ctx)}",
                         f"--config.filter.classifier={run}"),
             ("predicts 3 classes but the samples have 2", "same classes"), reads=(run,))


@case("filter_features_unknown_form")
def _(ctx):
  return Bad(filter_args(ctx, f"--config.filter.input={finished_sweep(ctx)}",
                         "--config.filter.features=resnet50", variant="realism"),
             ("feature extractor 'resnet50' is not one of the known forms", "classifier:WORKDIR",
              "inception:WEIGHTS", "pixels"))


@case("filter_features_weights_missing")
def _(ctx):
  return Bad(filter_args(ctx, f"--config.filter.input={finished_sweep(ctx)}",
                         f"--config.filter.features=inception:{ctx.tmp / 'pt_inception.pth'}",
                         variant="realism"),
             ("the weights file", "pt_inception.pth does not exist", "give an existing path"))


@case("filter_realism_without_real_images")
def _(ctx):
  return Bad(filter_args(ctx, f"--config.filter.input={finished_sweep(ctx)}",
                         "--config.filter.features=pixels", variant="realism"),
             ("names no generator run", "config key 'filter.real'"))


@case("filter_realism_needs_features")
def _(ctx):
  return Bad(filter_args(ctx, f"--config.filter.input={finished_sweep(ctx)}",
                         variant="realism_class"),
             ("config key 'filter.features'", "classifier:WORKDIR", "inception:WEIGHTS"))


@case("sample_filter_without_classifier")
def _(ctx):
  run = ctx.diffusion_run()
  return Bad(sample(ctx, run, "--config.sample.filter.name=classifier"),
             ("config key 'sample.filter.classifier'", "finished train_classifier"),
             reads=(run,))


@case("sample_filter_of_other_classes")
def _(ctx):
  run, judge = ctx.diffusion_run(), ctx.classifier_run()
  return Bad(sample(ctx, run, "--config.sample.filter.name=classifier",
                    f"--config.sample.filter.classifier={judge}"),
             ("predicts 3 classes but the samples have 10",), reads=(run, judge))


@case("train_on_checkpoints_of_another_model")
def _(ctx):
  run = ctx.classifier_run()
  os.makedirs(ctx.workdir)
  shutil.copytree(os.path.join(run, "checkpoints"), os.path.join(ctx.workdir, "checkpoints"))
  return Bad(npz_case(ctx), ("checkpoints", "config.json", "choose another --workdir"),
             reads=(run,))


# -- train.init_from and the pretrain_finetune / diffupt recipes

@case("init_from_missing_dir")
def _(ctx):
  return Bad(npz_case(ctx, f"--config.train.init_from={ctx.tmp / 'nowhere'}"),
             ("config key 'train.init_from'", "does not exist", "train_classifier run"))


@case("init_from_unfinished_run")
def _(ctx):
  run = copy_run(ctx.classifier_run(), ctx.tmp / "unfinished", checkpoints=False)
  return Bad(npz_case(ctx, f"--config.train.init_from={run}"),
             ("config key 'train.init_from'", "unfinished run", "finish it first"))


@case("init_from_other_architecture")
def _(ctx):
  run = ctx.classifier_run()   # a ViT; this command trains a ResNet-18
  return Bad(npz_case(ctx, f"--config.train.init_from={run}"),
             ("config key 'train.init_from'", "model.name: 'vit_s' -> 'resnet18'",
              "pass the same model keys"), reads=(run,))


@case("init_from_on_another_task")
def _(ctx):
  return Bad(["--config", "configs/diffusion.py:dit", "--workdir", ctx.workdir,
              f"--config.train.init_from={ctx.tmp}"],
             ("config key 'train.init_from'", "only train_classifier", "leave it empty"))


@case("recipe_ratio_parts_differ_from_classes")
def _(ctx):
  return Bad(["--config", "configs/synthesis.py:pretrain_finetune_tiny", "--workdir",
              ctx.workdir, "--config.recipe.ratio=30-70"],
             ("config key 'recipe.ratio'", "gives 2 parts", "10 classes", "one part per class"))


@case("recipe_generator_of_other_classes")
def _(ctx):
  run = ctx.diffusion_run()    # digits, 10 classes; the recipe's data has 3
  path = write_npz(ctx.tmp / "data.npz")
  return Bad(["--config", "configs/synthesis.py:diffupt_tiny", "--workdir", ctx.workdir,
              "--config.data.source=npz", f"--config.data.path={path}",
              "--config.data.imbalance_ratio=0.0", f"--config.recipe.generator_workdir={run}"],
             ("config key 'recipe.generator_workdir'", "10 classes", "has 3",
              "give a generator trained on this data"), reads=(run,))


@case("recipe_equal_scale_without_groups")
def _(ctx):
  path = write_npz(ctx.tmp / "data.npz")    # no {split}_groups
  return Bad(["--config", "configs/synthesis.py:equal_scale_tiny", "--workdir", ctx.workdir,
              f"--config.data.path={path}"],
             ("recipe.name=equal_scale needs groups", "{split}_groups", "another recipe"))


@case("recipe_report_features_missing_weights")
def _(ctx):
  return Bad(["--config", "configs/synthesis.py:augment_tiny", "--workdir", ctx.workdir,
              f"--config.recipe.report_features=inception:{ctx.tmp / 'nope.pth'}"],
             ("config key 'recipe.report_features'", "does not exist", "leave it empty"))


@case("recipe_filter_key_checked_before_the_generator")
def _(ctx):
  return Bad(["--config", "configs/synthesis.py:diffupt_tiny", "--workdir", ctx.workdir,
              "--config.filter.min_confidence=2.0"],
             ("stage filter of recipe diffupt", "filter.min_confidence", "probability in [0, 1]"))


@case("recipe_online_budget_below_classes")
def _(ctx):
  return Bad(["--config", "configs/synthesis.py:online_tiny", "--workdir", ctx.workdir,
              "--config.recipe.budget=5"],
             ("config key 'recipe.budget'", "less than the 10 classes", "use at least 10"))


# -- train_gan

def gan(ctx: Ctx, *overrides, variant: str = "bagan_gp:tiny") -> list:
  return ["--config", f"configs/bagan_gp.py:{variant}", "--workdir", ctx.workdir,
          "--config.data.threads=1", *overrides]


@case("gan_class_without_train_images")
def _(ctx):
  path = write_npz(ctx.tmp / "data.npz", **{k: v for k, v in npz_arrays(train=(12, 0, 6)).items()
                                             if k.startswith("train_")})
  return Bad(gan(ctx, "--config.data.source=npz", f"--config.data.path={path}"),
             ("class 1 ('benign') has no samples in the train split", "set data.num_classes"))


@case("gan_image_size_the_architecture_cannot_take")
def _(ctx):
  return Bad(gan(ctx, "--config.data.image_size=10"),
             ("config key 'model.channels'", "multiples of 4", "set data.image_size"))


@case("gan_normalisation_outside_tanh_range")
def _(ctx):
  return Bad(gan(ctx, "--config.data.std=0.25"),
             ("config key 'data.mean'", "tanh output spans [-1, 1]", "data.std=0.5"))


@case("gan_wrong_label_term_with_wasserstein_loss")
def _(ctx):
  return Bad(gan(ctx, "--config.gan.wrong_label_term=True", variant="wgan_gp:tiny"),
             ("config key 'gan.wrong_label_term'", "logistic loss (eq. 14)"))


@case("gan_bagan_with_a_gradient_penalty")
def _(ctx):
  return Bad(gan(ctx, "--config.gan.gp_weight=10.0", variant="bagan:tiny"),
             ("config key 'gan.init'", "gan.gp_weight=0"))


@case("gan_cyclegan_source_is_target")
def _(ctx):
  return Bad(["--config", "configs/cyclegan.py:tiny", "--workdir", ctx.workdir,
              "--config.cyclegan.target_class=0"],
             ("config key 'cyclegan.target_class'", "two different classes"))


@case("gan_cyclegan_image_size_the_generator_cannot_take")
def _(ctx):
  return Bad(["--config", "configs/cyclegan.py:tiny", "--workdir", ctx.workdir,
              "--config.data.image_size=9"],
             ("config key 'model.downsamplings'", "multiples of 2", "set data.image_size"))


def _params():
  for name, (fn, xfail) in CASES.items():
    marks = [pytest.mark.xfail(reason=xfail, strict=False)] if xfail else []
    yield pytest.param(fn, id=name, marks=marks)


@pytest.mark.parametrize("build", list(_params()))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(build, tmp_path, request):
  ctx = Ctx(tmp_path, request)
  bad = build(ctx)
  workdir = bad.workdir or ctx.workdir
  watched = [str(tmp_path), *bad.reads]
  if not os.path.abspath(workdir).startswith(str(tmp_path)):
    watched.append(workdir)
  existed = os.path.lexists(workdir)
  before = {root: snapshot(root) for root in watched}

  proc = run_cli(*bad.args)

  lines = [line for line in proc.stderr.splitlines()
           if line.strip() and not ABSL_WARNING.match(line)]
  assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
  assert len(lines) == 1 and lines[0].startswith("jaxsynth: error: "), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  for fragment in bad.expect:
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
  if not existed and os.path.isdir(workdir) and not os.path.islink(workdir):
    assert not os.listdir(workdir), f"a new --workdir must stay empty: {os.listdir(workdir)}"
    os.rmdir(workdir)
  for root in watched:
    assert snapshot(root) == before[root], f"{root} changed"


def test_a_class_with_one_train_image_trains(classifier_run):
  """Not an error: the .npz brings val and test, so class 'rare' with one train image trains."""
  with open(os.path.join(classifier_run, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  assert set(metrics) >= {"val", "test"}
  with open(os.path.join(classifier_run, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["data"]["path"].endswith("one_rare.npz")


def test_corpus_covers_at_least_25_kinds_on_every_task():
  names = list(CASES)
  assert len(names) >= 25
  for prefix in ("config_", "npz_", "folder_", "synthetic_", "evaluate_", "diffusion_",
                 "sample_", "workdir_", "filter_", "autoencoder_", "ldm_", "gan_"):
    assert any(n.startswith(prefix) for n in names), prefix
