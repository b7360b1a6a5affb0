"""Fetch the files the demo and the tests need into data/, each saved only when its SHA-256 matches.

    python tools/fetch_assets.py                # waimai_10k.csv and the Baichuan2 tokenizer.model
    python tools/fetch_assets.py tokenizer      # one of them
    python tools/fetch_assets.py --optional     # a failed fetch is one warning line, exit 0 (the test command)
    python tools/fetch_assets.py waimai --print_path   # only the verified file's path on stdout (make demo)

A file already in data/, or in the shared folder (SHARED_DIR, default ../shared), is not fetched again.
WAIMAI_URL replaces the CSV's download address; HF_ENDPOINT (a mirror) and HF_HUB_OFFLINE are huggingface_hub's own.
"""

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.utils import logging as hf_logging

from tuning.data import waimai_csv
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import atomic_writer, sha256_of

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
TOKENIZER_REPO = "baichuan-inc/Baichuan2-7B-Base"
TOKENIZER_SHA256 = "79452955be6b419a65984273a9f08af86042e1c2a75ee3ba989cbf620a133cc2"


@dataclass(frozen=True)
class Asset:
    name: str  # what the command line calls it
    path: str  # under data/
    shared_path: str  # under the shared folder
    sha256: str

    @property
    def fetch_command(self) -> str:
        return f"python tools/fetch_assets.py {self.name}"


ASSETS = {
    "waimai": Asset("waimai", "waimai_10k.csv", "data/waimai_10k.csv", waimai_csv.WAIMAI_SHA256),
    "tokenizer": Asset("tokenizer", "baichuan2/tokenizer.model", "baichuan2/tokenizer.model", TOKENIZER_SHA256),
}


def shared_dir() -> Path:
    """`SHARED_DIR` when set, else the `shared/` folder beside the repository."""
    return Path(os.environ.get("SHARED_DIR", REPO_ROOT.parent / "shared"))


def asset_places(asset: Asset, data_dir: Path = DATA_DIR) -> list[Path]:
    """Where the asset is looked for, in order: data/, then the shared folder."""
    return [data_dir / asset.path, shared_dir() / asset.shared_path]


def find_asset(asset: Asset, data_dir: Path = DATA_DIR) -> Path | None:
    return next((path for path in asset_places(asset, data_dir) if path.is_file()), None)


def download_tokenizer(dest: Path) -> None:
    """tokenizer.model of the Baichuan2-7B-Base model repository to `dest`, saved only when its SHA-256 matches."""
    source = f"{TOKENIZER_REPO}/tokenizer.model"
    hf_logging.set_verbosity_error()  # its retry warnings would add a line per attempt to the one-line error
    try:
        downloaded = Path(hf_hub_download(TOKENIZER_REPO, "tokenizer.model"))
    except LocalEntryNotFoundError:
        raise DataError(f"{source}: download failed ({constants.ENDPOINT} not reachable, "
                        "or HF_HUB_OFFLINE is set)") from None
    except EntryNotFoundError:
        raise DataError(f"{source}: download failed (no such file in the model repository)") from None
    except (HfHubHTTPError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{source}: download failed ({reason})") from None
    found = sha256_of(downloaded)
    if found != TOKENIZER_SHA256:
        raise DataError(f"{source}: sha256 {found} is not the expected {TOKENIZER_SHA256}; nothing was saved")
    with downloaded.open("rb") as source_file, atomic_writer(dest, "wb") as out:
        shutil.copyfileobj(source_file, out)


def fetch(asset: Asset, data_dir: Path = DATA_DIR) -> tuple[Path, str]:
    """Make sure the asset is in place: where it is (data/ or the shared folder), and the line that says what was
    done. Raises DataError naming what to do."""
    dest = data_dir / asset.path
    found = find_asset(asset, data_dir)
    if found is not None:
        digest = sha256_of(found)
        if digest != asset.sha256:
            raise DataError(f"{found}: not the expected file (sha256 {digest}, expected {asset.sha256}); "
                            f"move it away and run `{asset.fetch_command}` again")
        return found, f"{asset.path}: found at {found} (sha256 verified)"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if asset.name == "waimai":
            url = os.environ.get("WAIMAI_URL", waimai_csv.DOWNLOAD_URL)
            waimai_csv.fetch_csv(dest, url, asset.sha256)
        else:
            download_tokenizer(dest)
    except DataError as error:
        raise DataError(f"{error}; or copy the published file (sha256 {asset.sha256[:12]}…) to {dest}") from None
    return dest, f"{asset.path}: fetched to {dest} (sha256 verified)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("assets", nargs="*", metavar="ASSET", help=f"any of {', '.join(ASSETS)} (default: all)")
    parser.add_argument("--optional", action="store_true",
                        help="report a failed fetch as a warning and exit 0 (the tests that need it are skipped)")
    parser.add_argument("--data_dir", type=Path, default=DATA_DIR, help="where fetched files go")
    parser.add_argument("--print_path", action="store_true",
                        help="print only the verified file's path on stdout (the status line goes to stderr), for "
                             "the next step to read that file: the one found in the shared folder, or data/'s")
    args = parser.parse_args(argv)
    unknown = [name for name in args.assets if name not in ASSETS]
    if unknown:
        parser.error(f"unknown asset {unknown[0]!r}; choose from {', '.join(ASSETS)}")
    if args.print_path and (len(args.assets) != 1 or args.optional):
        parser.error("--print_path needs exactly one asset, and no --optional")
    return args


def warn_if_missing(asset: Asset, data_dir: Path) -> int:
    """--optional: fetch the asset, or say in one warning line that the tests that need it will be skipped."""
    try:
        print(fetch(asset, data_dir)[1], flush=True)
    except (DataError, OSError) as error:
        print(f"warning: {asset.path} missing, the tests that need it will be skipped: {error}", file=sys.stderr,
              flush=True)
    return 0


def fetch_and_say(asset: Asset, data_dir: Path, print_path: bool = False) -> int:
    """Fetch the asset and say so; with `print_path`, the status goes to stderr and its path alone to stdout."""
    path, line = fetch(asset, data_dir)
    print(line, file=sys.stderr if print_path else sys.stdout, flush=True)
    if print_path:
        print(path, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    codes = [
        warn_if_missing(ASSETS[name], args.data_dir) if args.optional
        else report_errors(lambda name=name: fetch_and_say(ASSETS[name], args.data_dir, args.print_path))
        for name in args.assets or ASSETS
    ]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
