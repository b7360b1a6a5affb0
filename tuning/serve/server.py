"""serve.py's flow: flags, the model predict.py would use, the listening socket, uvicorn, a clean exit on a signal."""

import argparse
import ipaddress
import os
import signal
import socket
import sys

import uvicorn

from tuning.eval.inference import inference_setup
from tuning.eval.predicting import find_model
from tuning.run_layout import default_run_dirs, use_lora_from_environment
from tuning.runtime.errors import DataError
from tuning.serve.app import ServeSettings, create_app, shown_path
from tuning.serve.service import base_model_of, load_models

API_KEY_VARIABLE = "SERVE_API_KEY"


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


def run(args: argparse.Namespace) -> int:
    if args.base_model and not args.compare:
        raise DataError("--base_model is the base model for --compare: add --compare")
    api_key = api_key_from_environment()
    model_dir = find_model(args.model, default_run_dirs(use_lora_from_environment()))
    base_dir = (args.base_model or base_model_of(model_dir)) if args.compare else None
    sock = bind(args.host, args.port)
    setup = inference_setup(args.dtype, [model_dir, base_dir] if base_dir else [model_dir], together=True)
    models = load_models(model_dir, base_dir, setup.device, setup.dtype, args.batch_size)
    settings = ServeSettings(args.max_reviews, args.batch_size, args.batch_wait_ms / 1000, api_key)
    app = create_app(models, settings)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    compared = f", compared with {shown_path(base_dir)}" if base_dir else ""
    print(f"serving {shown_path(model_dir)} ({setup.describe()}){compared} on "
          f"http://{url_host}:{port} (page /, API /v1/classify, reference /docs)"
          + ("; API key required" if api_key else ""), file=sys.stderr, flush=True)
    if not api_key and not is_loopback(args.host):
        print(f"warning: listening on {args.host} without {API_KEY_VARIABLE}: anyone who reaches this port can use "
              "the model (see docs/serve.md)", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=None))
    serve_until_signal(server, sock)
    return 0
