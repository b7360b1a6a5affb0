"""The service tests' HTTP side: a real uvicorn server on a free loopback port, and a plain HTTP client."""

import http.client
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn

from tuning.serve.server import bind

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r" on (http://127\.0\.0\.1:\d+) ")


@contextmanager
def serving(app) -> Iterator[str]:
    """`app` served by uvicorn in a thread of this process on a free port of 127.0.0.1; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def call(url: str, method: str = "GET", body: object = None, headers: dict | None = None,
         raw: bytes | None = None) -> tuple[int, object, dict]:
    """Status, the answer (JSON decoded when it is JSON) and the headers of one request."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    headers = dict(headers or {})
    if body is not None:
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=raw, headers=headers)
        response = connection.getresponse()
        content = response.read()
        answer_headers = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    if answer_headers.get("content-type", "").startswith("application/json"):
        return response.status, json.loads(content), answer_headers
    return response.status, content.decode("utf-8", "replace"), answer_headers


def classify(base_url: str, reviews: list, headers: dict | None = None) -> tuple[int, dict]:
    status, answer, _ = call(base_url + "/v1/classify", "POST", {"reviews": reviews}, headers)
    return status, answer


def _read_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


@dataclass
class ServeProcess:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: list[str]  # its stderr lines, as they come


@contextmanager
def serve_process(*args: str, env: dict | None = None) -> Iterator[ServeProcess]:
    """A real `python serve.py --port 0 ARGS` process, once it answers /health; its stderr is read as it comes."""
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "serve.py"), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
    )
    try:
        base_url, log = None, []
        for line in process.stderr:
            log.append(line)
            match = LISTENING.search(line)
            if match:
                base_url = match.group(1)
                break
        assert base_url, f"serve.py exited with {process.wait()} before listening: {''.join(log)[-2000:]}"
        threading.Thread(target=_read_lines, args=(process.stderr, log), daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(base_url + "/health")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve.py did not answer /health"
                time.sleep(0.05)
        yield ServeProcess(process, base_url, log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        process.stdout.close()
