"""The autoencoder and latent diffusion study of docs/results/autoencoders.md (issue #14),
resumable across sessions.

Each cell is one `python -m jaxsynth.main` run (or one `bench/sampler.py --latent` call) under
--runs (checkpoints, samples, logs: never committed) whose small result is written into the
repository as docs/results/autoencoders/<cell>.json (metrics, command, wall time, machine). A
cell whose JSON exists is skipped; a cell whose input run directory is missing (a fresh
machine) runs that input's command again first. Then the document is rebuilt from the cells.

  python bench/autoencoder_study.py --deadline 6000 --commit
  python bench/autoencoder_study.py --cells speed_64,speed_128 --commit
  python bench/autoencoder_study.py --dry-run          # every cell's command
  python bench/autoencoder_study.py --aggregate-only   # rebuild the document only

Cells:
- `ae_{vq,kl}_{set}`: a VQ and a KL autoencoder (factor 4) on the two largest-resolution sets,
  BreastMNIST at 64 px and BUSI at 128 px; validation PSNR / SSIM / L1 overall and per class.
- `speed_{64,128}`: LDM against pixel sampling images/s at equal image size, one run each.
- on BreastMNIST 64 px: `classifier` (the domain features of KID), `ldm` (the UNet on the KL
  autoencoder's latents) and `pixel` (the same UNet on pixels, attention at the same level),
  trained for the same steps; `sample_{ldm,pixel}` (balanced sweeps of equal size, the same
  sampler); `kid` (per-class KID/FID/precision/recall of both sweeps against the real train
  split, classifier features).
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import study  # noqa: E402  (after the path)
from bench.study import Cell, cell_path, run_dir  # noqa: E402,F401  (the spec's API)

OUT = os.path.join("docs", "results", "autoencoders")
DOC = os.path.join("docs", "results", "autoencoders.md")
SETS = {"breastmnist_64": 64, "busi_128": 128}
#: Autoencoders sized for the 2-core CPU machine (widths 32/64/128 at batch 16 ran 0.19 steps/s
#: at 64 px with two other runs beside it): factor 4 (3 levels), one res block per level.
AE_MODEL = ("--config.model.channels=(16,32,64)", "--config.model.res_blocks=1",
            "--config.model.norm_groups=8")
AE_LATENT = {"kl": ("--config.model.latent_channels=4",),
             "vq": ("--config.model.latent_channels=4", "--config.model.num_codes=512")}
AE_TRAIN = {64: ("--config.train.batch_size=8", "--config.train.steps=2000"),
            128: ("--config.train.batch_size=4", "--config.train.steps=2000")}
AE_COMMON = ("--config.train.eval_every=1000", "--config.train.checkpoint_every=500",
             "--config.train.sample_every=1000", "--config.train.log_every=50")
#: The denoiser of the LDM-vs-pixel comparison: the study's generator UNet; attention at the
#: lowest level (latent 16 px -> 4 px; pixel 64 px -> 16 px).
DENOISER = ("--config.model.unet.channels=(32,64,64)", "--config.model.unet.res_blocks=1",
            "--config.model.unet.head_dim=32", "--config.model.unet.norm_groups=8")
DIFFUSION_TRAIN = ("--config.train.batch_size=32", "--config.train.steps=3000",
                   "--config.train.learning_rate=0.0003", "--config.train.eval_every=500",
                   "--config.train.checkpoint_every=500", "--config.train.sample_every=1000",
                   "--config.train.log_every=50", "--config.diffusion.grid_per_class=4")
SAMPLE = ("--config.sample.budget=counts", "--config.sample.class_counts=(200,200)",
          "--config.sample.sampler=ddim", "--config.sample.num_steps=50",
          "--config.sample.cfg_scale=2.0", "--config.sample.batch_size=50",
          "--config.sample.shard_size=200", "--config.sample.dtype=auto")
#: bench/sampler.py --latent: a KL autoencoder of factor 4 (LDM's kl-f4 widths) and the
#: reference-sized UNet (attention at its lowest level), batch 4, DDIM 50, float32.
SPEED = ("--latent", "--ae", "kl", "--ae-channels", "128,256,512", "--ae-res-blocks", "2",
         "--latent-channels", "4", "--image-channels", "1", "--channels", "64,128,128",
         "--batch", "4", "--steps", "50", "--reps", "1", "--forward-reps", "1",
         "--matmul-reps", "2", "--dtype", "float32")


def cells_of() -> dict[str, Cell]:
  out = {}
  for ae in ("kl", "vq"):
    for dataset in SETS:
      out[f"ae_{ae}_{dataset}"] = Cell("run")
  out["speed_64"] = Cell("speed")
  out["speed_128"] = Cell("speed")
  out["classifier"] = Cell("run")
  out["ldm"] = Cell("run", ("ae_kl_breastmnist_64",))
  out["pixel"] = Cell("run")
  out["sample_ldm"] = Cell("run", ("ldm",))
  out["sample_pixel"] = Cell("run", ("pixel",))
  out["kid"] = Cell("kid", ("classifier", "sample_ldm", "sample_pixel"), subprocess=False)
  return out


NAME = "autoencoder_study"
CELLS = cells_of()


def data_path(args, dataset: str) -> str:
  return os.path.join(args.data_dir, dataset + ".npz")


def data_keys(args, dataset: str) -> list[str]:
  return ["--config.data.source=npz", f"--config.data.path={data_path(args, dataset)}",
          f"--config.data.image_size={SETS[dataset]}", "--config.data.imbalance_ratio=0.0"]


def command(args, name: str) -> list[str]:
  """The argv of cell `name` (python first), run from the repository root."""
  head = ["python", "-m", "jaxsynth.main"]
  workdir = ["--workdir", run_dir(args, name)]
  if name.startswith("ae_"):
    _, ae, dataset = name.split("_", 2)
    return head + ["--config", f"configs/autoencoder.py:{ae}", *workdir, "--config.seed=0",
                   *data_keys(args, dataset), *AE_MODEL, *AE_LATENT[ae],
                   *AE_TRAIN[SETS[dataset]], *AE_COMMON]
  if name.startswith("speed_"):
    return ["python", "bench/sampler.py", *SPEED, "--image-size", name.split("_")[1],
            "--attn-res", str(int(name.split("_")[1]) // 16)]
  data = data_keys(args, "breastmnist_64")
  if name == "classifier":
    return head + ["--config", "configs/recipes.py:ce,npz", *workdir, "--config.seed=0", *data,
                   "--config.train.epochs=30", "--config.train.batch_size=64",
                   "--config.train.optimizer=adam", "--config.train.learning_rate=0.001",
                   "--config.model.width=16", "--config.train.checkpoint_every=1000000"]
  if name == "ldm":
    return head + ["--config", "configs/diffusion.py:ldm", *workdir, "--config.seed=0", *data,
                   f"--config.latent.autoencoder_run={run_dir(args, 'ae_kl_breastmnist_64')}",
                   *DENOISER, "--config.model.unet.attn_resolutions=(4,)", *DIFFUSION_TRAIN]
  if name == "pixel":
    return head + ["--config", "configs/diffusion.py:unet", *workdir, "--config.seed=0", *data,
                   *DENOISER, "--config.model.unet.attn_resolutions=(16,)", *DIFFUSION_TRAIN]
  if name.startswith("sample_"):
    return head + ["--config", "configs/diffusion.py:sample", *workdir, "--config.seed=0",
                   f"--config.sample.run_dir={run_dir(args, name.removeprefix('sample_'))}",
                   *SAMPLE]
  raise KeyError(name)


def result_of(args, name: str, wall: float, stdout: str) -> dict:
  """The small JSON of a finished cell."""
  if CELLS[name].kind == "speed":
    bench = json.loads(stdout.strip().splitlines()[-1])
    keep = ("images_per_s", "sampler_s_median", "params", "gflops_per_forward",
            "matmul_gflops", "device", "cpu", "versions", "batch", "steps")
    return {"bench": {k: bench[k] for k in keep}, "latent": bench["latent"]}
  if CELLS[name].kind == "kid":
    return {"metrics": kid_metrics(args)}
  out = {"metrics": study._read(os.path.join(run_dir(args, name), "metrics.json"))}
  grid = study.last_grid(run_dir(args, name))
  if grid:
    out["grid"] = study.copy_figure(args, grid, f"{name}_grid.png")
    out["figures"] = [out["grid"]]
  return out


def kid_metrics(args) -> dict:
  """Per-class generation metrics of both sweeps against the real train split."""
  from jaxsynth.metrics import compare  # pylint: disable=import-outside-toplevel
  features = f"classifier:{os.path.abspath(run_dir(args, 'classifier'))}"
  real = data_path(args, "breastmnist_64")
  from jaxsynth.metrics import image_sets  # pylint: disable=import-outside-toplevel
  out = {"features": "classifier:runs/.../classifier (ce, BreastMNIST 64 px)"}
  for kind in ("ldm", "pixel"):
    out[kind] = compare.compare_sets(image_sets.load_set(real, "train"),
                                     run_dir(args, f"sample_{kind}"), features=features,
                                     per_class=True, progress=False)
  out["real_test"] = compare.compare_sets(image_sets.load_set(real, "train"),
                                          image_sets.load_set(real, "test"), features=features,
                                          per_class=True, progress=False)
  return out


def execute(args, name: str, stop_at: float) -> str:
  """Runs cell `name` (and first any missing input run); returns ran | failed | late."""
  return study.execute(sys.modules[__name__], args, name, stop_at)


def run_only(args, name: str, stop_at: float, record: bool = False) -> str:
  """Runs the command of `name` (resuming its run); with `record`, writes and commits its JSON."""
  return study.run_only(sys.modules[__name__], args, name, stop_at, record)


# --- the document --------------------------------------------------------------------------------

def _f(x, digits=3) -> str:
  return "-" if x is None else f"{x:.{digits}f}"


def render(args, cells: dict) -> str:
  """docs/results/autoencoders.md from the committed cells."""
  lines = ["# Autoencoders and latent diffusion (issue #14)", "",
           "Generated by `python bench/autoencoder_study.py` from the cells in "
           "`docs/results/autoencoders/` (one JSON per finished run: metrics, command, wall "
           "time, machine). Cells not yet run are listed as such.", "",
           "## Reconstruction (validation split)", "",
           "Per class in label order (BreastMNIST: malignant / normal+benign; BUSI: normal / "
           "benign / malignant). `last call s` is the wall time of the call that finished the "
           "run: a run resumed across sessions counts only its last part. Grids: validation "
           "images above their reconstructions.", "",
           "| autoencoder | set | PSNR dB | SSIM | L1 | per-class PSNR | per-class SSIM | "
           "codebook usage | steps | last call s |", "|---|---|---|---|---|---|---|---|---|---|"]
  for name in (n for n in CELLS if n.startswith("ae_")):
    c = cells.get(name)
    _, ae, dataset = name.split("_", 2)
    if c is None:
      lines.append(f"| {ae} | {dataset} | not run yet | | | | | | | |")
      continue
    val = c["metrics"]["val"]
    pc = val.get("per_class", {})
    lines.append(
        f"| {ae} | {dataset} | {_f(val['psnr'], 2)} | {_f(val.get('ssim'))} | "
        f"{_f(val['l1'], 4)} | {' / '.join(_f(v, 2) for v in pc.get('psnr', []))} | "
        f"{' / '.join(_f(v) for v in pc.get('ssim', []))} | "
        f"{_f(val.get('codebook_usage'), 2)} | {c['metrics'].get('steps')} | {c['wall_s']:.0f} |")
  lines += ["", "## Sampling speed: LDM against pixel diffusion at equal image size", ""]
  speeds = [cells[n] for n in ("speed_64", "speed_128") if n in cells]
  if speeds and speeds[0].get("bench"):
    b = speeds[0]["bench"]
    lines += [
        f"`bench/sampler.py --latent` (cells `speed_*`): DDIM {b['steps']} steps, batch "
        f"{b['batch']}, float32, on {speeds[0]['machine'].get('cpu')} "
        f"({speeds[0]['machine'].get('machine_class')}). The latent denoiser is a "
        f"UNet of {b['params'] / 1e6:.1f} M parameters (channels 64/128/128, 2 res blocks, "
        "attention at its lowest level) on the latents of a KL autoencoder with LDM's kl-f4 "
        "widths (128/256/512, factor 4, random weights: only cost is measured). The pixel model "
        "is the same UNet on the images, attending at the same level; both in one process, one "
        "after the other, each beside a float32 matmul probe (its GFLOP/s in the cell). The "
        "decoder is timed apart and added. Other runs may have shared the cores: the load "
        "column is the 1-minute load average when the cell started (2 = both cores busy), and "
        "the ratio, measured in one run, is the figure to read.", ""]
  lines += ["| image px | latent | decode s / batch | LDM images/s (sampler + decode) | "
            "pixel images/s | LDM / pixel | load |", "|---|---|---|---|---|---|---|"]
  for name in ("speed_64", "speed_128"):
    c = cells.get(name)
    if c is None:
      lines.append(f"| {name.split('_')[1]} | not run yet | | | | | |")
      continue
    lat = c["latent"]
    lines.append(f"| {lat['image_shape'][0]} | {'x'.join(map(str, lat['latent_shape']))} | "
                 f"{_f(lat['decode_s_median'])} | {_f(lat['images_per_s_end_to_end'])} | "
                 f"{_f(lat.get('pixel', {}).get('images_per_s'))} | "
                 f"{_f(lat.get('latent_over_pixel_images_per_s'), 2)} | "
                 f"{_f(c.get('bench', {}).get('device', {}).get('load_avg_1min_at_start'), 1)} |")
  lines += ["", "## LDM against pixel DDPM on BreastMNIST 64 px: per-class KID", ""]
  kid = cells.get("kid")
  if kid is None:
    lines.append("Not run yet (cells classifier, ldm, pixel, sample_ldm, sample_pixel, kid).")
  else:
    m = kid["metrics"]
    lines += ["| set | KID (all) | KID per class | FID | precision | recall |",
              "|---|---|---|---|---|---|"]
    for kind in ("real_test", "ldm", "pixel"):
      r = m[kind]
      per_kid = " / ".join(f"{k.split('.')[1]} {_f(v, 4)}" for k, v in sorted(r.items())
                           if k.startswith("per_class.") and k.endswith(".kid_mean"))
      lines.append(f"| {kind} | {_f(r.get('kid_mean'), 4)} | {per_kid} | {_f(r.get('fid'), 1)} "
                   f"| {_f(r.get('precision'))} | {_f(r.get('recall'))} |")
    lines += ["", "Each set against the real train split, in the features of a CE classifier "
              "trained on BreastMNIST 64 px (`classifier`); `real_test` is the floor."]
  grids = [(n, c["grid"]) for n, c in cells.items() if c.get("grid")]
  if grids:
    lines += ["", "## Grids", ""]
    lines += [f"- `{n}`: ![{n}]({g})" for n, g in grids]
  lines += ["", "## Commands", ""]
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
