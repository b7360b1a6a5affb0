"""Serve the fine-tuned model over HTTP: POST /v1/classify, a page at /, the API reference at /docs (see docs/serve.md)."""

import sys

from tuning.runtime.errors import report_errors
from tuning.serve.flags import parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tuning.serve.server import run  # torch, transformers and uvicorn load only once the flags are parsed

    return report_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
