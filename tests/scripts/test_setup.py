"""The set-up: fetching the assets (hash checked, one line per failure), finding them, and the pinned-set check."""

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading

import httpx2
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

from tools import fetch_assets, pinned_env
from tools.fetch_assets import ASSETS


@pytest.fixture(autouse=True)
def no_shared_folder(tmp_path, monkeypatch):
    """Nothing is found in a shared folder unless a test puts it there; nothing leaves tmp_path."""
    monkeypatch.setenv("SHARED_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        """Requests are not logged: the tests read stderr."""


@pytest.fixture
def serve(tmp_path):
    """`serve(bytes)`: the URL of a 127.0.0.1 HTTP server that serves these bytes as /waimai_10k.csv."""
    servers = []

    def start(content: bytes) -> str:
        folder = tmp_path / f"site{len(servers)}"
        folder.mkdir()
        (folder / "waimai_10k.csv").write_bytes(content)
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/waimai_10k.csv"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def fetch(capsys, *args):
    code = fetch_assets.main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_waimai_is_downloaded_and_checked(waimai_csv, serve, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAIMAI_URL", serve(waimai_csv.read_bytes()))
    code, out, err = fetch(capsys, "waimai", "--data_dir", tmp_path / "data")
    assert (code, err) == (0, "")
    assert "fetched" in out and "sha256 verified" in out
    assert (tmp_path / "data" / "waimai_10k.csv").read_bytes() == waimai_csv.read_bytes()

    monkeypatch.setenv("WAIMAI_URL", "http://127.0.0.1:9/unreachable.csv")  # already there: no download at all
    code, out, err = fetch(capsys, "waimai", "--data_dir", tmp_path / "data")
    assert (code, err) == (0, "") and "found at" in out


def test_wrong_download_is_one_line_and_saves_nothing(serve, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAIMAI_URL", serve(b"label,review\n1,fake\n"))
    code, out, err = fetch(capsys, "waimai", "--data_dir", tmp_path / "data")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "is not the expected" in err
    assert "copy the published file" in err
    assert not (tmp_path / "data" / "waimai_10k.csv").exists()


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:9/waimai_10k.csv", "download failed"),  # nothing listens: as with no network
    ("file:///nonexistent/waimai_10k.csv", "download failed"),
])
def test_no_network_is_one_line_naming_what_to_do(url, reason, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAIMAI_URL", url)
    code, _, err = fetch(capsys, "waimai", "--data_dir", tmp_path / "data")
    assert code == 2 and err.count("\n") == 1 and reason in err
    assert f"to {tmp_path / 'data' / 'waimai_10k.csv'}" in err

    code, _, err = fetch(capsys, "waimai", "--optional", "--data_dir", tmp_path / "data")
    assert code == 0 and err.count("\n") == 1
    assert err.startswith("warning: waimai_10k.csv missing, the tests that need it will be skipped")


def hub_returning(path):
    def download(repo_id, filename):
        assert (repo_id, filename) == ("baichuan-inc/Baichuan2-7B-Base", "tokenizer.model")
        return str(path)

    return download


def test_tokenizer_comes_from_the_hub_and_is_checked(baichuan_tokenizer_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch_assets, "hf_hub_download", hub_returning(baichuan_tokenizer_model))
    code, out, err = fetch(capsys, "tokenizer", "--data_dir", tmp_path / "data")
    assert (code, err) == (0, "") and "fetched" in out
    assert (tmp_path / "data" / "baichuan2" / "tokenizer.model").read_bytes() == baichuan_tokenizer_model.read_bytes()


def test_tokenizer_with_the_wrong_hash_is_not_saved(tmp_path, monkeypatch, capsys):
    other = tmp_path / "other.model"
    other.write_bytes(b"not the Baichuan2 vocabulary")
    monkeypatch.setattr(fetch_assets, "hf_hub_download", hub_returning(other))
    code, _, err = fetch(capsys, "tokenizer", "--data_dir", tmp_path / "data")
    assert code == 2 and err.count("\n") == 1 and "is not the expected" in err
    assert not (tmp_path / "data" / "baichuan2" / "tokenizer.model").exists()


@pytest.mark.parametrize("error, reason", [
    (LocalEntryNotFoundError("Cannot find the requested files in the disk cache\nand outgoing traffic is off"),
     "not reachable"),
    (RemoteEntryNotFoundError("404 Client Error", response=httpx2.Response(404, request=httpx2.Request("HEAD", "x"))),
     "no such file"),
])
def test_hub_failures_are_one_line(error, reason, tmp_path, monkeypatch, capsys):
    def fail(repo_id, filename):
        raise error

    monkeypatch.setattr(fetch_assets, "hf_hub_download", fail)
    code, _, err = fetch(capsys, "tokenizer", "--data_dir", tmp_path / "data")
    assert code == 2 and err.count("\n") == 1 and reason in err and "copy the published file" in err


def test_offline_hub_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    code, _, err = fetch(capsys, "tokenizer", "--data_dir", tmp_path / "data", "--optional")
    assert code == 0 and err.count("\n") == 1
    assert err.startswith("warning: baichuan2/tokenizer.model missing") and "HF_HUB_OFFLINE" in err


def test_assets_in_the_shared_folder_are_used_and_checked(waimai_csv, tmp_path, capsys):
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    shutil.copyfile(waimai_csv, shared / "waimai_10k.csv")
    assert fetch_assets.find_asset(ASSETS["waimai"], tmp_path / "data") == shared / "waimai_10k.csv"
    code, out, _ = fetch(capsys, "waimai", "--data_dir", tmp_path / "data")
    assert code == 0 and f"found at {shared / 'waimai_10k.csv'}" in out

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "waimai_10k.csv").write_text("label,review\n", encoding="utf-8")  # data/ comes first
    code, _, err = fetch(capsys, "waimai", "--data_dir", tmp_path / "data")
    assert code == 2 and err.count("\n") == 1 and "not the expected file" in err and "move it away" in err


def test_the_demo_splits_the_csv_that_the_asset_step_found(waimai_csv, repo_root, tmp_path, capsys):
    """make demo in a fresh clone with ../shared beside it: make_data.py reads the CSV found there, not data/'s."""
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    shutil.copyfile(waimai_csv, shared / "waimai_10k.csv")
    code, out, err = fetch(capsys, "waimai", "--print_path", "--data_dir", tmp_path / "data")
    assert code == 0 and out == f"{shared / 'waimai_10k.csv'}\n" and "sha256 verified" in err
    run_demo = (repo_root / "tools" / "setup.sh").read_text(encoding="utf-8").split("run_demo() {")[1].split("\n}")[0]
    assert 'csv="$(python tools/fetch_assets.py waimai --print_path)"' in run_demo
    assert 'python make_data.py --csv "$csv"' in run_demo
    result = subprocess.run([sys.executable, str(repo_root / "make_data.py"), "--csv", out.strip(), "--output_dir",
                             str(tmp_path / "split")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "split" / "train.jsonl").is_file() and (tmp_path / "split" / "eval.jsonl").is_file()


def test_print_path_takes_one_asset(capsys):
    with pytest.raises(SystemExit):
        fetch_assets.main(["--print_path"])
    assert "--print_path needs exactly one asset" in capsys.readouterr().err


def test_missing_assets_are_named_in_the_test_summary(repo_root, tmp_path):
    """A suite without the assets says which tests it skipped and the command that fetches each asset."""
    clone = tmp_path / "clone"
    shutil.copytree(repo_root / "tools", clone / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "tests").mkdir()
    shutil.copyfile(repo_root / "tests" / "conftest.py", clone / "tests" / "conftest.py")
    (clone / "tests" / "test_needs_assets.py").write_text(
        "def test_reads_reviews(waimai_csv):\n    pass\n\n\n"
        "def test_tokenizes(baichuan_tokenizer_model):\n    pass\n\n\n"
        "def test_needs_nothing():\n    pass\n",
        encoding="utf-8",
    )
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=clone, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    waimai = next(line for line in lines if line.startswith("1 tests skipped: waimai_10k.csv"))
    assert "fetch it with `python tools/fetch_assets.py waimai`" in waimai
    assert str(clone / "data" / "waimai_10k.csv") in waimai
    tokenizer = next(line for line in lines if line.startswith("1 tests skipped: baichuan2/tokenizer.model"))
    assert "fetch it with `python tools/fetch_assets.py tokenizer`" in tokenizer
    assert "  tests/test_needs_assets.py::test_reads_reviews" in lines
    assert "  tests/test_needs_assets.py::test_tokenizes" in lines
    assert "1 passed, 2 skipped" in lines[-1]


def test_pinned_set_check_names_the_first_difference():
    pins = pinned_env.pinned_versions("# comment\npytest==9.2.0\nruff==0.14.0  # lint\n", "torch")
    assert pins == {"pytest": "9.2.0", "ruff": "0.14.0", "torch": None}
    assert pinned_env.first_difference({"pytest": "0.0.1"}).startswith("pytest is ")
    assert pinned_env.first_difference({"no-such-package-here": None}) == "no-such-package-here is not installed"


def _python_stub(path, version: str):
    """An interpreter that says it is Python `version` (setup.sh asks with -c) and does nothing else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/usr/bin/env bash\necho {version}\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def test_setup_needs_python_3_11_and_says_so_in_one_line_before_anything_else(repo_root, tmp_path):
    """The pinned transformers 5.24, numpy, pandas and matplotlib require Python 3.11 (3.10 is common on Ascend)."""
    old = _python_stub(tmp_path / "bin" / "python3.10", "3.10.12")
    env = {**os.environ, "PYTHON": str(old), "VENV": str(tmp_path / "venv")}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["bash", "tools/setup.sh", "env"], cwd=repo_root, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: Python 3.10.12 at {old} is too old: this project needs Python 3.11 or newer (the pinned transformers, "
        "numpy, pandas and matplotlib require it); install one and set PYTHON=/path/to/python3.11"]
    assert not (tmp_path / "venv").exists()
    _python_stub(tmp_path / "venv" / "bin" / "python", "3.10.12")  # an environment made with it earlier
    result = subprocess.run(["bash", "tools/setup.sh", "env"], cwd=repo_root, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'venv'} has Python 3.10.12, too old: this project needs Python 3.11 or newer (the pinned "
        f"transformers, numpy, pandas and matplotlib require it); remove {tmp_path / 'venv'} and run this again with "
        "PYTHON=/path/to/python3.11"]


def test_the_pinned_set_check_refuses_python_3_10(monkeypatch):
    monkeypatch.setattr(pinned_env.sys, "version_info", (3, 10, 12, "final", 0))
    assert pinned_env.first_difference({}) == "Python 3.10.12 is older than 3.11"
