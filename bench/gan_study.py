"""The GAN study of docs/results/gans.md (issue #15), resumable across sessions.

Per set (Chula RBC-11 at 32 px, RetinaMNIST at 28 px): BAGAN, cDRAGAN and BAGAN-GP trained
with `train_gan`, a balanced sweep of each, and per-class FID / KID in the features of a CE
classifier trained on the set (domain features), against the real validation split, beside
the paper's two baselines (the BAGAN-GP autoencoder's reconstructions of the train split; the
real train split itself) and, where the reproduction study trained one, its pixel diffusion
generator (runs/synthesis_recipes/<set>/generator_unet/seed0, swept the same way).

  python bench/gan_study.py --deadline 6000 --commit
  python bench/gan_study.py --cells classifier_retinamnist,bagan_gp_retinamnist --commit
  python bench/gan_study.py --dry-run          # every cell's command
  python bench/gan_study.py --aggregate-only   # rebuild the document only

The GANs are sized for the 2-core CPU machine (the paper's widths 64/128/128/256 at batch 128
ran 0.02 rounds/s at 32 px there, beside another run): encoder widths 32/64(/128), batch 64,
latent 128, the paper's losses and optimiser; BAGAN-GP 100 epochs on RetinaMNIST, 10 on Chula
(an epoch is ceil(N / batch) rounds, as the authors' Keras fit), autoencoders 30 and 5 epochs.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import study  # noqa: E402  (after the path)
from bench.study import Cell, cell_path, run_dir  # noqa: E402,F401  (the spec's API)

NAME = "gan_study"
OUT = os.path.join("docs", "results", "gans")
DOC = os.path.join("docs", "results", "gans.md")
#: set -> (image size, encoder widths, GAN epochs, autoencoder epochs, classifier epochs)
SETS = {"retinamnist": (28, (32, 64), 100, 30, 30),
        "chula_rbc11": (32, (32, 64, 128), 10, 5, 10)}
GANS = ("bagan", "cdragan", "bagan_gp")
PER_CLASS = 200          # images per class in every sweep
BATCH = 64
DIFFUSION_RUN = os.path.join("runs", "synthesis_recipes", "{set}", "generator_unet", "seed0")
#: The reproduction study's sampler for its diffusion generators (bench/synthesis_recipes.py).
DIFFUSION_SAMPLE = ("--config.sample.sampler=ddim", "--config.sample.num_steps=50",
                    "--config.sample.cfg_scale=0.0", "--config.sample.dtype=auto")


def cells_of() -> dict[str, Cell]:
  out = {}
  for dataset in SETS:
    out[f"classifier_{dataset}"] = Cell("run")
    for gan in GANS:
      out[f"{gan}_{dataset}"] = Cell("run")
      out[f"sample_{gan}_{dataset}"] = Cell("run", (f"{gan}_{dataset}",))
    out[f"sample_diffusion_{dataset}"] = Cell("run")
    out[f"metrics_{dataset}"] = Cell(
        "metrics", (f"classifier_{dataset}", f"bagan_gp_{dataset}",
                    *(f"sample_{gan}_{dataset}" for gan in GANS)), subprocess=False)
  return out


CELLS = cells_of()


def data_path(args, dataset: str) -> str:
  return os.path.join(args.data_dir, dataset + ".npz")


def data_keys(args, dataset: str) -> list[str]:
  return ["--config.data.source=npz", f"--config.data.path={data_path(args, dataset)}",
          f"--config.data.image_size={SETS[dataset][0]}", "--config.data.imbalance_ratio=0.0"]


def diffusion_run(dataset: str) -> str:
  return DIFFUSION_RUN.format(set=dataset)


def _split(name: str) -> tuple[str, str]:
  """(kind, dataset) of a cell name, e.g. ('sample_bagan', 'retinamnist')."""
  for dataset in SETS:
    if name.endswith("_" + dataset):
      return name[:-len(dataset) - 1], dataset
  raise KeyError(name)


def command(args, name: str) -> list[str]:
  """The argv of cell `name` (python first), run from the repository root."""
  kind, dataset = _split(name)
  size, widths, gan_epochs, ae_epochs, classifier_epochs = SETS[dataset]
  head = ["python", "-m", "jaxsynth.main"]
  workdir = ["--workdir", run_dir(args, name)]
  if kind == "classifier":
    return head + ["--config", "configs/recipes.py:ce,npz", *workdir, "--config.seed=0",
                   *data_keys(args, dataset), f"--config.train.epochs={classifier_epochs}",
                   f"--config.train.batch_size={BATCH}", "--config.train.optimizer=adam",
                   "--config.train.learning_rate=0.001", "--config.model.width=16",
                   "--config.train.checkpoint_every=1000000"]
  if kind in GANS:
    return head + ["--config", f"configs/bagan_gp.py:{kind}", *workdir, "--config.seed=0",
                   *data_keys(args, dataset), f"--config.model.channels={widths!r}",
                   f"--config.train.batch_size={BATCH}", f"--config.train.epochs={gan_epochs}",
                   f"--config.gan.autoencoder_epochs={ae_epochs}",
                   "--config.train.checkpoint_every=100", "--config.train.sample_every=500",
                   "--config.train.log_every=20"]
  if kind.startswith("sample_"):
    source = kind.removeprefix("sample_")
    run = diffusion_run(dataset) if source == "diffusion" else run_dir(args, f"{source}_{dataset}")
    classes = len(_class_names(args, dataset))
    return head + ["--config", "configs/diffusion.py:sample", *workdir, "--config.seed=0",
                   f"--config.sample.run_dir={run}", "--config.sample.budget=counts",
                   f"--config.sample.class_counts={(PER_CLASS,) * classes!r}",
                   "--config.sample.batch_size=50", "--config.sample.shard_size=200",
                   *(DIFFUSION_SAMPLE if source == "diffusion" else ())]
  raise KeyError(name)


def _class_names(args, dataset: str) -> list[str]:
  import numpy as np  # pylint: disable=import-outside-toplevel
  with np.load(data_path(args, dataset), allow_pickle=False) as arrays:
    return [str(n) for n in arrays["class_names"]]


def train_counts(args, dataset: str) -> list[int]:
  import numpy as np  # pylint: disable=import-outside-toplevel
  with np.load(data_path(args, dataset), allow_pickle=False) as arrays:
    return np.bincount(arrays["train_labels"].ravel(),
                       minlength=len(arrays["class_names"])).tolist()


def metrics_of(args, dataset: str) -> dict:
  """Per-class FID / KID of every set against the real validation split, classifier features."""
  from jaxsynth.metrics import compare, image_sets  # pylint: disable=import-outside-toplevel
  features = f"classifier:{os.path.abspath(run_dir(args, f'classifier_{dataset}'))}"
  real = image_sets.load_set(data_path(args, dataset), "val")
  candidates = {gan: run_dir(args, f"sample_{gan}_{dataset}") for gan in GANS}
  if study.finished(args, f"sample_diffusion_{dataset}"):
    candidates["diffusion"] = run_dir(args, f"sample_diffusion_{dataset}")
  recon = os.path.join(run_dir(args, f"bagan_gp_{dataset}"), "autoencoder", "reconstructions.npz")
  candidates["autoencoder"] = image_sets.load_set(recon, "train")
  candidates["real_train"] = image_sets.load_set(data_path(args, dataset), "train")
  out = {"features": f"classifier:runs/{NAME}/classifier_{dataset} (ce, width 16)",
         "reference": f"{dataset} val split"}
  for label, fake in candidates.items():
    out[label] = compare.compare_sets(real, fake, features=features, per_class=True,
                                      families=("fid", "kid"), progress=False)
  return out


def result_of(args, name: str, wall: float, stdout: str) -> dict:
  """The small JSON of a finished cell (with the figures it copied beside the cells)."""
  del wall, stdout
  kind, dataset = _split(name)
  if kind == "metrics":
    return {"metrics": metrics_of(args, dataset), "train_counts": train_counts(args, dataset),
            "class_names": _class_names(args, dataset)}
  out = {"metrics": study._read(os.path.join(run_dir(args, name), "metrics.json"))}
  figures = []
  grid = study.last_grid(run_dir(args, name))
  if grid:
    figures.append(study.copy_figure(args, grid, f"{name}_grid.png"))
  latents = os.path.join(run_dir(args, name), "autoencoder", "latents.png")
  if os.path.isfile(latents):
    figures.append(study.copy_figure(args, latents, f"{name}_latents.png"))
  if figures:
    out["figures"] = figures
  return out


def execute(args, name: str, stop_at: float) -> str:
  """Runs cell `name` (and first any missing input run); returns ran | failed | late."""
  return study.execute(sys.modules[__name__], args, name, stop_at)


def run_only(args, name: str, stop_at: float, record: bool = False) -> str:
  """Runs the command of `name` (resuming its run); with `record`, writes and commits its JSON."""
  kind, dataset = _split(name)
  if kind == "sample_diffusion" and not os.path.isfile(
      os.path.join(diffusion_run(dataset), "metrics.json")):
    study.log(sys.modules[__name__], f"  {name}: no finished diffusion generator at "
              f"{diffusion_run(dataset)} (bench/synthesis_recipes.py trains it); skipped")
    return "failed"
  return study.run_only(sys.modules[__name__], args, name, stop_at, record)


# --- the document --------------------------------------------------------------------------------

def _f(x, digits=1) -> str:
  return "-" if x is None else f"{x:.{digits}f}"


ROWS = (("bagan", "BAGAN"), ("cdragan", "cDRAGAN"), ("bagan_gp", "BAGAN-GP"),
        ("diffusion", "pixel diffusion (#9's UNet)"), ("autoencoder", "autoencoder reconstructions"),
        ("real_train", "real train split"))


def render(args, cells: dict) -> str:
  """docs/results/gans.md from the committed cells."""
  lines = ["# GANs for minority classes (issue #15)", "",
           "Generated by `python bench/gan_study.py` from the cells in `docs/results/gans/` (one "
           "JSON per finished run: metrics, command, wall time, machine). Cells not yet run are "
           "listed as such.", "",
           "Per-class FID and KID (x 1000) of a balanced sweep of "
           f"{PER_CLASS} images per class against the real validation split, in the features of "
           "a CE classifier trained on the set (`classifier_<set>`). Minority classes first "
           "(by train count). The baselines are the paper's: the BAGAN-GP autoencoder's "
           "reconstructions of the train split, and the real train split itself (the floor). "
           "Few validation images per class make FID unstable (its covariance needs many "
           "more images than it has for the rarest classes); KID is unbiased at any size and "
           "is the figure to read there.", ""]
  for dataset in SETS:
    lines += [f"## {dataset}", ""]
    cell = cells.get(f"metrics_{dataset}")
    if cell is None:
      done = [n for n in CELLS if n.endswith(dataset) and n in cells]
      lines += [f"Not measured yet (finished cells: {', '.join(done) or 'none'}).", ""]
    else:
      names, counts, m = cell["class_names"], cell["train_counts"], cell["metrics"]
      order = sorted(range(len(names)), key=lambda c: counts[c])
      head = " | ".join(f"{names[c]} (n={counts[c]})" for c in order)
      for metric, key, scale, digits in (("FID", "fid", 1.0, 1), ("KID x 1000", "kid_mean",
                                                                  1000.0, 2)):
        lines += [f"{metric}, per class:", "", f"| generator | all | {head} |",
                  "|---|---|" + "---|" * len(order)]
        for label, title in ROWS:
          r = m.get(label)
          if r is None:
            lines.append(f"| {title} | not run |" + " |" * len(order))
            continue
          scaled = lambda v: None if v is None else v * scale  # noqa: E731
          per = " | ".join(_f(scaled(r.get(f"per_class.{names[c]}.{key}")), digits)
                           for c in order)
          lines.append(f"| {title} | {_f(scaled(r.get(key)), digits)} | {per} |")
        lines.append("")
    figures = [(n, f) for n, c in cells.items() if n.endswith(dataset)
               for f in c.get("figures", [])]
    if figures:
      lines += ["Grids (eq. 16: row 0 real images, one column per class, one row per fixed "
                "noise vector) and latent plots (PCA of the labelled latents, Fig. 10):", ""]
      lines += [f"- `{n}`: ![{n}]({f})" for n, f in figures]
      lines.append("")
  lines += ["## Commands", ""]
  for name in CELLS:
    c = cells.get(name)
    lines.append(f"- `{name}`: " + (f"`{c['command']}` ({c['wall_s']:.0f} s on "
                                    f"{c['machine'].get('cpu')})" if c else "not run yet"))
  return "\n".join(lines) + "\n"


def parse_args(argv=None):
  return study.parse_args(sys.modules[__name__], argv, runs=os.path.join("runs", NAME), out=OUT,
                          doc=DOC, description=__doc__.splitlines()[0])


def main(argv=None) -> None:
  study.main(sys.modules[__name__], parse_args(argv))


if __name__ == "__main__":
  main()
