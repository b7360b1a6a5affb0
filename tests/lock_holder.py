"""Another process holding an output folder's lock, for the tests of the lock, train.py and the launcher."""

import os
import subprocess
import sys
from pathlib import Path

from tuning.runtime.paths import REPO_ROOT

# Takes the lock named by argv[1], says so, holds it until a line arrives on stdin, then releases it; a refusal is
# the one-line error and exit code of report_errors.
HOLDER = (
    "import sys\n"
    "from tuning.runtime.lock import FolderLock\n"
    "from tuning.runtime.errors import report_errors\n"
    "def hold():\n"
    "    lock = FolderLock.take(sys.argv[1])\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.readline()\n"
    "    lock.release()\n"
    "    return 0\n"
    "sys.exit(report_errors(hold))\n"
)


def start_lock_holder(path: Path) -> subprocess.Popen:
    """The holder of the lock file `path`; it prints `held` once it has it and releases it on a line of stdin."""
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
