"""The MedMNIST fetcher against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import logging
import threading

import numpy as np
import pytest

from jaxsynth.data import fetch
from jaxsynth.errors import DataError

NAME = "fakemnist"  # not in the known-MD5 table, so only an explicit md5 is checked


def _fake_npz() -> bytes:
  """A tiny MedMNIST-shaped .npz file."""
  rng = np.random.default_rng(0)
  buf = io.BytesIO()
  arrays = {}
  for split, n in (("train", 6), ("val", 2), ("test", 2)):
    arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    arrays[f"{split}_labels"] = rng.integers(0, 2, size=(n, 1), dtype=np.uint8)
  np.savez(buf, **arrays)
  return buf.getvalue()


class _Server:
  """A threaded HTTP server on 127.0.0.1 that serves a directory and counts requests."""

  def __init__(self, directory):
    self.requests: list[str] = []
    server = self

    class Handler(http.server.SimpleHTTPRequestHandler):
      def do_GET(self):  # noqa: N802 (http.server's naming)
        server.requests.append(self.path)
        if self.path.startswith("/truncated"):  # promises 1000 bytes, sends 10, hangs up
          self.send_response(200)
          self.send_header("Content-Length", "1000")
          self.end_headers()
          self.wfile.write(b"0123456789")
          self.close_connection = True
          return
        super().do_GET()

      def log_message(self, *args):  # keep test output quiet
        pass

    handler = functools.partial(Handler, directory=str(directory))
    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self.httpd.timeout = 5
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                   daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path, monkeypatch):
  """Serves tmp_path/served (holding fakemnist.npz and fakemnist_64.npz) on 127.0.0.1."""
  for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  served = tmp_path / "served"
  served.mkdir()
  data = _fake_npz()
  (served / f"{NAME}.npz").write_bytes(data)
  (served / f"{NAME}_64.npz").write_bytes(data[::-1])
  srv = _Server(served)
  srv.data = data
  srv.md5 = hashlib.md5(data).hexdigest()
  yield srv
  srv.close()


def _leftovers(root):
  """Files in root other than the final ones (temporary downloads)."""
  return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_download_and_md5(server, tmp_path):
  root = tmp_path / "root"
  path = fetch.fetch_medmnist(NAME, root, base_url=server.url, md5=server.md5, timeout=5)
  assert path == root / f"{NAME}.npz"
  assert path.read_bytes() == server.data
  assert fetch.file_md5(path) == server.md5
  assert server.requests == [f"/{NAME}.npz"]
  assert _leftovers(root) == []
  with np.load(path, allow_pickle=False) as z:
    assert z["train_images"].shape == (6, 28, 28)


def test_size_suffix_and_url_template(server, tmp_path):
  root = tmp_path / "root"
  md5 = hashlib.md5(server.data[::-1]).hexdigest()
  path = fetch.fetch_medmnist(NAME, root, size=64, md5=md5, timeout=5,
                              base_url=server.url + "/{filename}?download=1")
  assert path.name == f"{NAME}_64.npz"
  assert server.requests == [f"/{NAME}_64.npz?download=1"]


def test_refetch_is_skipped(server, tmp_path):
  root = tmp_path / "root"
  first = fetch.fetch_medmnist(NAME, root, base_url=server.url, md5=server.md5, timeout=5)
  again = fetch.fetch_medmnist(NAME, root, base_url=server.url, md5=server.md5, timeout=5)
  assert first == again
  assert len(server.requests) == 1


def test_no_md5_known_is_logged_and_not_verified(server, tmp_path, caplog):
  root = tmp_path / "root"
  with caplog.at_level(logging.WARNING, logger=fetch.__name__):
    path = fetch.fetch_medmnist(NAME, root, base_url=server.url, timeout=5)
  assert path.read_bytes() == server.data
  assert "NOT verified" in caplog.text


def test_wrong_md5_raises_and_leaves_no_file(server, tmp_path):
  root = tmp_path / "root"
  wrong = "0" * 32
  with pytest.raises(DataError) as info:
    fetch.fetch_medmnist(NAME, root, base_url=server.url, md5=wrong, timeout=5)
  msg = str(info.value)
  assert f"{server.url}/{NAME}.npz" in msg and wrong in msg and server.md5 in msg
  assert list(root.iterdir()) == []


def test_known_table_is_checked_for_known_names(server, tmp_path):
  (tmp_path / "served" / "breastmnist.npz").write_bytes(server.data)
  root = tmp_path / "root"
  with pytest.raises(DataError, match=fetch.KNOWN_MD5["breastmnist"][0]):
    fetch.fetch_medmnist("breastmnist", root, base_url=server.url, timeout=5)
  assert list(root.iterdir()) == []


def test_404_names_url(server, tmp_path):
  root = tmp_path / "root"
  with pytest.raises(DataError) as info:
    fetch.fetch_medmnist("missingmnist", root, base_url=server.url, timeout=5)
  msg = str(info.value)
  assert f"{server.url}/missingmnist.npz" in msg and "404" in msg
  assert "data.source=npz" in msg and "data.path=" in msg and "missingmnist.npz)" in msg
  assert _leftovers(root) == [] and list(root.iterdir()) == []


def test_truncated_transfer_raises_and_leaves_no_file(server, tmp_path):
  root = tmp_path / "root"
  with pytest.raises(DataError, match=r"truncated\.npz: the transfer ended after 10 of 1000"):
    fetch.fetch_medmnist("truncated", root, base_url=server.url, timeout=5)
  assert list(root.iterdir()) == []


def test_connection_refused_names_url(tmp_path):
  srv = _Server(tmp_path)  # take a free port, then close it so nothing listens there
  url = srv.url
  srv.close()
  with pytest.raises(DataError, match="could not download http://127.0.0.1"):
    fetch.fetch_medmnist(NAME, tmp_path / "root", base_url=url, timeout=2)


def test_existing_file_with_wrong_md5_is_not_overwritten(server, tmp_path):
  root = tmp_path / "root"
  root.mkdir()
  dest = root / f"{NAME}.npz"
  dest.write_bytes(b"not the real file")
  with pytest.raises(DataError) as info:
    fetch.fetch_medmnist(NAME, root, base_url=server.url, md5=server.md5, timeout=5)
  msg = str(info.value)
  assert "delete" in msg and "md5" in msg and str(dest) in msg
  assert dest.read_bytes() == b"not the real file"
  assert server.requests == []


def test_invalid_arguments():
  with pytest.raises(DataError, match="size"):
    fetch.fetch_medmnist("breastmnist", "unused", size=32)
  with pytest.raises(DataError, match="unknown MedMNIST"):
    fetch.fetch_medmnist("notamnist", "unused")
  with pytest.raises(DataError, match="invalid MedMNIST name"):
    fetch.fetch_medmnist("../etc/passwd", "unused", base_url="http://127.0.0.1:1")
  with pytest.raises(DataError, match="32 hexadecimal"):
    fetch.fetch_medmnist("breastmnist", "unused", md5="xyz")


def test_known_table_shape():
  assert set(fetch.NAMES) == {
      "pneumoniamnist", "breastmnist", "retinamnist", "dermamnist", "bloodmnist", "pathmnist",
      "octmnist", "chestmnist", "organamnist", "organcmnist", "organsmnist", "tissuemnist"}
  for sums in fetch.KNOWN_MD5.values():
    assert len(sums) == len(fetch.SIZES) and len(set(sums)) == len(sums)
    assert all(len(s) == 32 and int(s, 16) >= 0 for s in sums)


def test_cli(server, tmp_path, capsys):
  root = tmp_path / "root"
  argv = [NAME, "--root", str(root), "--md5", server.md5, "--base-url", server.url,
          "--timeout", "5"]
  assert fetch.main(argv) == 0
  assert capsys.readouterr().out.strip() == str(root / f"{NAME}.npz")
  assert fetch.main([NAME, "--root", str(root), "--md5", "1" * 32, "--base-url", server.url]) == 1
  assert "error:" in capsys.readouterr().err
