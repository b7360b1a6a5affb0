"""Where the repository is: the default paths of the scripts are inside it, wherever they are run from."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
