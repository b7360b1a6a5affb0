"""Serve the fine-tuned model over HTTP: POST /v1/classify, a page at /, the API reference at /docs (see docs/serve.md)."""

import sys

from predict import DEFAULT_RUNS
from tuning.serve.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], DEFAULT_RUNS))
