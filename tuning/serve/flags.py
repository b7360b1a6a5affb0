"""serve.py's flags, parsed before torch, transformers and uvicorn load."""

import argparse
from pathlib import Path

from tuning.eval.flags import add_dtype_flag
from tuning.runtime.cli import HelpFormatter, whole_number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve.py",
        description=(
            "Serve the fine-tuned model over HTTP: POST /v1/classify with {\"reviews\": [...]} answers each review's "
            "label and probability with predict.py's label scoring; GET / is a page to try it, GET /docs the API "
            "reference, GET /health the model and device. Requests that arrive together are scored together (up "
            "to --batch_size reviews). With SERVE_API_KEY set, every path but /health needs the header "
            "'Authorization: Bearer <key>'. Ctrl-C or SIGTERM finishes the requests in flight, then exits 0. Runs "
            "on the NPU or GPU when there is one, else on the CPU, in the precision --dtype chooses (as predict.py; "
            "with --compare both models must fit at once)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None,
                        help="the model to serve, as predict.py's --model; default: the one predict.py uses (the "
                             "latest tuned run; the LoRA runs' merged models with USE_LORA=true)")
    parser.add_argument("--compare", action="store_true",
                        help="also answer with the base model the run was trained from (its run_manifest.json), "
                             "for side-by-side answers")
    parser.add_argument("--base_model", type=Path, default=None,
                        help="the base model for --compare, instead of the one the run recorded")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; the default answers this machine only (see docs/serve.md "
                             "before exposing it)")
    parser.add_argument("--port", type=whole_number(0), default=8000, help="port to listen on (0: any free port)")
    parser.add_argument("--batch_size", type=whole_number(1), default=16,
                        help="reviews per forward pass; requests arriving together are scored together up to this")
    parser.add_argument("--batch_wait_ms", type=whole_number(0), default=5,
                        help="how long the first request of a batch waits for others to join it")
    parser.add_argument("--max_reviews", type=whole_number(1), default=256, help="most reviews in one request")
    add_dtype_flag(parser)
    return parser.parse_args(argv)
