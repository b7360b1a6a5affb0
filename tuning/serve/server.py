"""serve.py's flow: flags, the model predict.py would use, the listening socket, uvicorn, a clean exit on a signal."""

import argparse
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from tuning.eval.predicting import find_model
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.devices import compute_dtype, detect_device, prepare_device
from tuning.runtime.errors import DataError, report_errors
from tuning.serve.app import ServeSettings, create_app, shown_path
from tuning.serve.service import base_model_of, load_models
from tuning.train.run_folder import lora_run, use_lora_from_environment

API_KEY_VARIABLE = "SERVE_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve.py",
        description=(
            "Serve the fine-tuned model over HTTP: POST /v1/classify with {\"reviews\": [...]} answers each review's "
            "label and probability with predict.py's label scoring; GET / is a page to try it, GET /docs the API "
            "reference, GET /health the model and device. Requests that arrive together are scored together (up "
            "to --batch_size reviews). With SERVE_API_KEY set, every path but /health needs the header "
            "'Authorization: Bearer <key>'. Ctrl-C or SIGTERM finishes the requests in flight, then exits 0. Runs "
            "on the NPU or GPU when there is one (bf16), else on the CPU (fp32)."
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
    parser.add_argument("--fp32", action="store_true",
                        help="compute in fp32 even on an accelerator with native bf16")
    return parser.parse_args(argv)


def api_key_from_environment() -> str | None:
    """SERVE_API_KEY; set but empty is an error (it would look protected and be open)."""
    key = os.environ.get(API_KEY_VARIABLE)
    if key is not None and not key.strip():
        raise DataError(f"{API_KEY_VARIABLE} is set but empty: give it a key, or unset it to serve without one")
    return key.strip() if key else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port but not yet listening, so that a busy port fails before the model loads.

    It is made with the protocol number getaddrinfo gives (TCP): asyncio turns Nagle's algorithm off only on
    sockets that say so, and with it on every answer on a kept-alive connection waits for the client's delayed
    acknowledgement (about 40 ms).
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise DataError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None
    return sock


def serve_until_signal(server: uvicorn.Server, sock: socket.socket) -> None:
    """uvicorn's graceful shutdown on SIGINT / SIGTERM (in-flight requests finish), then a normal return.

    uvicorn re-raises the signal it caught once it has shut down; the handlers installed here take it, so the
    process exits 0 instead of dying by the signal.
    """
    previous = {number: signal.signal(number, lambda *_: None) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run(args: argparse.Namespace, default_runs: Sequence[Path]) -> int:
    if args.base_model and not args.compare:
        raise DataError("--base_model is the base model for --compare: add --compare")
    api_key = api_key_from_environment()
    runs = tuple(lora_run(run) for run in default_runs) if use_lora_from_environment() else default_runs
    model_dir = find_model(args.model, runs)
    base_dir = (args.base_model or base_model_of(model_dir)) if args.compare else None
    sock = bind(args.host, args.port)
    device = detect_device()
    prepare_device(device)
    dtype = compute_dtype(device, want_bf16=not args.fp32)
    models = load_models(model_dir, base_dir, device, dtype, args.batch_size)
    settings = ServeSettings(args.max_reviews, args.batch_size, args.batch_wait_ms / 1000, api_key)
    app = create_app(models, settings)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    compared = f", compared with {shown_path(base_dir)}" if base_dir else ""
    print(f"serving {shown_path(model_dir)} ({device.kind}, {str(dtype).removeprefix('torch.')}){compared} on "
          f"http://{url_host}:{port} (page /, API /v1/classify, reference /docs)"
          + ("; API key required" if api_key else ""), file=sys.stderr, flush=True)
    if not api_key and not is_loopback(args.host):
        print(f"warning: listening on {args.host} without {API_KEY_VARIABLE}: anyone who reaches this port can use "
              "the model (see docs/serve.md)", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=None))
    serve_until_signal(server, sock)
    return 0


def main(argv: list[str] | None, default_runs: Sequence[Path]) -> int:
    args = parse_args(argv)
    return report_errors(lambda: run(args, default_runs))
