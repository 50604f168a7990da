"""Download a public MedMNIST `.npz` file by name, verify its MD5 and store it atomically.

The files come from the public MedMNIST v3 (MedMNIST+) Zenodo record 10519652:
`https://zenodo.org/records/10519652/files/{name}{suffix}.npz?download=1`, with suffix "" for
28 px and "_64", "_128", "_224" for the larger sizes. The MD5 table below is the one the
official `medmnist` package (v3.0.2, `medmnist/info.py`) checks those files against.

Command line: `python -m jaxsynth.data.fetch NAME --root DIR [--size 28] [--md5 X]`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from jaxsynth.errors import DataError, JaxsynthError

log = logging.getLogger(__name__)

#: URL template of the public Zenodo record; `{filename}` is e.g. "breastmnist_64.npz".
DEFAULT_URL = "https://zenodo.org/records/10519652/files/{filename}?download=1"

SIZES = (28, 64, 128, 224)

#: MD5 of each 2D data set at 28, 64, 128 and 224 px in Zenodo record 10519652, as listed by
#: the official medmnist package v3.0.2 (medmnist/info.py). Zenodo records are immutable.
KNOWN_MD5: dict[str, tuple[str, str, str, str]] = {
    "pathmnist": ("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
                  "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec"),
    "chestmnist": ("02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
                   "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa"),
    "dermamnist": ("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
                   "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d"),
    "octmnist": ("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
                 "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3"),
    "pneumoniamnist": ("28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
                       "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1"),
    "retinamnist": ("bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
                    "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348"),
    "breastmnist": ("750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
                    "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b"),
    "bloodmnist": ("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
                   "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601"),
    "tissuemnist": ("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
                    "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c"),
    "organamnist": ("68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
                    "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170"),
    "organcmnist": ("b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
                    "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1"),
    "organsmnist": ("9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
                    "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1"),
}

NAMES = tuple(sorted(KNOWN_MD5))

_CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_PROGRESS_SECONDS = 10.0


def medmnist_filename(name: str, size: int = 28) -> str:
  """The record's file name for `name` at `size` px, e.g. "breastmnist_64.npz"."""
  if size not in SIZES:
    raise DataError(f"MedMNIST size must be one of {SIZES}, got {size!r}")
  return f"{name}{'' if size == 28 else f'_{size}'}.npz"


def expected_md5(name: str, size: int = 28) -> str | None:
  """The known MD5 of `name` at `size` px in the public record, or None if not in the table."""
  sums = KNOWN_MD5.get(name)
  return None if sums is None else sums[SIZES.index(size)]


def file_md5(path: str | os.PathLike) -> str:
  """Hex MD5 of a file, read in chunks."""
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _url(base_url: str, filename: str) -> str:
  """`base_url` with `{filename}` filled in, or `base_url/filename` when it has no placeholder."""
  if "{filename}" in base_url:
    return base_url.format(filename=filename)
  return base_url.rstrip("/") + "/" + filename


def _network_error(url: str, why: str, filename: str) -> DataError:
  """The DataError for a failed download, with the manual way out."""
  return DataError(
      f"could not download {url}: {why}. Download the file by hand (e.g. in a browser) and "
      f"use it with data.source=npz data.path=FILE (FILE = the saved {filename})")


def _download(url: str, dest: Path, filename: str, timeout: float) -> str:
  """Streams `url` into the new file `dest`; returns its MD5. Raises DataError on failure."""
  digest = hashlib.md5()
  received = 0
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "xb") as out:
      total = response.headers.get("Content-Length")
      total = int(total) if total and total.isdigit() else None
      last = time.monotonic()
      while True:
        try:
          chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:
          raise _network_error(url, f"connection failed after {received} bytes ({e})",
                               filename) from e
        if not chunk:
          break
        out.write(chunk)
        digest.update(chunk)
        received += len(chunk)
        if time.monotonic() - last >= _PROGRESS_SECONDS:
          last = time.monotonic()
          done = f"{received / 2**20:.1f} MiB" + (f" of {total / 2**20:.1f} MiB" if total else "")
          log.info("downloading %s: %s", url, done)
      if total is not None and received != total:
        raise _network_error(url, f"the transfer ended after {received} of {total} bytes",
                             filename)
      out.flush()
      os.fsync(out.fileno())
  except urllib.error.HTTPError as e:
    e.close()  # it holds the open response; do not leave the socket to the garbage collector
    raise _network_error(url, f"HTTP {e.code} {e.reason}", filename) from e
  except urllib.error.URLError as e:
    raise _network_error(url, str(e.reason), filename) from e
  except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
    raise _network_error(url, f"{type(e).__name__}: {e}", filename) from e
  return digest.hexdigest()


def fetch_medmnist(name: str, root: str | os.PathLike, *, size: int = 28,
                   base_url: str = DEFAULT_URL, md5: str | None = None,
                   timeout: float = 60) -> Path:
  """Downloads MedMNIST `name` at `size` px into `root` (if not there yet); returns its path.

  The file is `root/{name}{suffix}.npz` (suffix "" for 28 px, else "_{size}"), fetched from
  `base_url`, by default the public Zenodo record 10519652 of MedMNIST v3
  (https://zenodo.org/records/10519652/files/{name}{suffix}.npz?download=1). `base_url` may
  hold a `{filename}` placeholder; otherwise the file name is appended to it.

  The MD5 checked is `md5` when given, else the known one for the public record (`KNOWN_MD5`);
  for a name not in that table nothing is verified, which is logged. An existing file with the
  right MD5 is used as is (no network access); one with another MD5 is never replaced: that is
  a DataError asking to delete it or pass the right `md5`. A download goes to a temporary file
  in `root`, is checked, then renamed into place; on any failure the temporary file is removed.
  Failures raise `jaxsynth.errors.DataError`.
  """
  name = str(name).strip().lower()
  if not _NAME_RE.match(name):
    raise DataError(f"invalid MedMNIST name {name!r}: use lower-case letters, digits and "
                    f"underscores, e.g. one of {', '.join(NAMES)}")
  if base_url == DEFAULT_URL and name not in KNOWN_MD5:
    raise DataError(f"unknown MedMNIST data set {name!r}; known 2D sets: {', '.join(NAMES)}")
  filename = medmnist_filename(name, size)
  if md5 is not None:
    md5 = str(md5).strip().lower()
    if not _MD5_RE.match(md5):
      raise DataError(f"md5 must be 32 hexadecimal digits, got {md5!r}")
  else:
    md5 = expected_md5(name, size)

  root = Path(root).expanduser()
  dest = root / filename
  url = _url(base_url, filename)

  if dest.exists():
    if md5 is None:
      log.warning("%s exists; no MD5 is known for it, so it is used unverified", dest)
      return dest
    got = file_md5(dest)
    if got != md5:
      raise DataError(
          f"{dest} exists but its MD5 is {got}, not the expected {md5}. It was left untouched: "
          f"delete it to download it again, or pass md5={got} if this file is the one you want")
    log.info("%s already present, MD5 %s verified", dest, md5)
    return dest

  try:
    root.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f"cannot create the download directory {root}: {e}") from e
  tmp = root / f".{filename}.{secrets.token_hex(4)}.part"
  log.info("downloading %s to %s", url, dest)
  try:
    got = _download(url, tmp, filename, timeout)
    if md5 is None:
      log.warning("no MD5 is known for %s: the download was NOT verified (got MD5 %s; pass "
                  "md5=... to check it)", filename, got)
    elif got != md5:
      raise DataError(f"MD5 mismatch for {url}: expected {md5}, got {got}. The download was "
                      f"deleted; try again, or check the md5 you passed")
    if dest.exists():  # another process finished first: keep its file, do not overwrite
      raise DataError(f"{dest} appeared while downloading; run again to verify and use it")
    os.replace(tmp, dest)
  except OSError as e:
    raise DataError(f"could not write {dest}: {e}") from e
  finally:
    tmp.unlink(missing_ok=True)
  log.info("saved %s (MD5 %s)", dest, got)
  return dest


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point; returns the process exit code."""
  parser = argparse.ArgumentParser(
      prog="python -m jaxsynth.data.fetch",
      description="Download a MedMNIST .npz file from the public Zenodo record, MD5-checked.")
  parser.add_argument("name", help=f"data set name, e.g. {', '.join(NAMES)}")
  parser.add_argument("--root", required=True, help="directory to store the file in")
  parser.add_argument("--size", type=int, default=28, choices=SIZES, help="image size in px")
  parser.add_argument("--md5", default=None, help="expected MD5 (default: the known one)")
  parser.add_argument("--base-url", default=DEFAULT_URL,
                      help="URL template with {filename}, or a prefix (default: Zenodo record)")
  parser.add_argument("--timeout", type=float, default=60, help="network timeout in seconds")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    path = fetch_medmnist(args.name, args.root, size=args.size, base_url=args.base_url,
                          md5=args.md5, timeout=args.timeout)
  except JaxsynthError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
