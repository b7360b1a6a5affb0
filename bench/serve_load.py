"""Load on serve.py: N concurrent clients for a bounded time against a local server, beside predict.py's rate.

Starts `python serve.py` on a free port of 127.0.0.1 (loopback only) with the demo's tuned model, then for each
number of clients (default 1, 8, 32) lets every client send requests of --reviews_per_request eval reviews, one
after the other on its own keep-alive connection, for --seconds (and at most --max_requests in all). Reports
requests/s, reviews/s, p50 / p99 latency and errors per level, and predict.py's reviews/s on the same reviews
(its Classifier in this process, --batch_size reviews per forward pass, before the server starts): on all of them
at once, and for reference on --batch_size of them at a time in input order and on one at a time. The last line
is `serve_vs_predict_<N>_clients: <ratio>` for the largest N.

Run from the repository root:  python bench/serve_load.py   (or python -m bench.serve_load)
"""

import argparse
import http.client
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO_ROOT, default_data, display_path, format_table, header_lines, split_jsonl
from bench.eval_throughput import DEMO_RUN
from tuning.eval.inference import inference_setup
from tuning.eval.predicting import Classifier, find_model
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.devices import timed
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import read_jsonl

LISTENING = re.compile(r" on http://127\.0\.0\.1:(\d+) ")
START_TIMEOUT_S = 120


def client_counts(text: str) -> list[int]:
    """An argparse type: comma-separated whole numbers, e.g. 1,8,32."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"every count must be at least 1, got {text!r}")
    return counts


def predict_rates(model_dir: Path, reviews: list[str], batch_size: int, rounds: int) -> dict[str, float]:
    """predict.py's reviews/s, its Classifier in this process with the model loaded: on all the reviews at once
    (sorted by length into batches: its real rate), on `batch_size` reviews at a time in input order (what a
    server can reach when full batches arrive in any order), and on one review at a time."""
    setup = inference_setup()
    classifier = Classifier.load(model_dir, setup.device, setup.dtype, batch_size)
    classifier.classify(reviews[:batch_size])  # warm-up, untimed
    ways = {
        "all at once": lambda: classifier.classify(reviews),
        "in arrival order": lambda: [classifier.classify(reviews[start : start + batch_size])
                                     for start in range(0, len(reviews), batch_size)],
        "one at a time": lambda: [classifier.classify([review]) for review in reviews],
    }
    rates = {}
    for name, way in ways.items():
        seconds = [timed(setup.device, way)[1] for _ in range(rounds)]
        rates[name] = len(reviews) * rounds / sum(seconds)
    return rates


class Server:
    """`python serve.py --port 0` as a child process, its stderr read as it comes."""

    def __init__(self, model_dir: Path, batch_size: int):
        command = [sys.executable, str(REPO_ROOT / "serve.py"), "--model", str(model_dir), "--port", "0",
                   "--batch_size", str(batch_size)]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.log: list[str] = []
        self.port = None
        for line in self.process.stderr:
            self.log.append(line)
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                break
        if self.port is None:
            raise DataError(f"serve.py exited with {self.process.wait()} before listening: {self.log[-1].strip()}")
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise DataError("serve.py did not answer /health")
            time.sleep(0.1)

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def _healthy(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def run_clients(port: int, requests: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    """`clients` threads, each sending requests one after the other for `seconds`; latencies and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    lock = threading.Lock()
    start = threading.Barrier(clients)
    deadline = [0.0]

    def client(index: int) -> None:
        nonlocal sent
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        position = index
        while time.perf_counter() < deadline[0]:
            with lock:
                if sent >= max_requests:
                    return
                sent += 1
            body = requests[position % len(requests)]
            position += clients
            began = time.perf_counter()
            try:
                connection.request("POST", "/v1/classify", body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = response.read()
                problem = None if response.status == 200 else f"HTTP {response.status}: {answer[:200]!r}"
            except (OSError, http.client.HTTPException) as error:
                problem = f"{type(error).__name__}: {error}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - began
            with lock:
                if problem:
                    errors.append(problem)
                else:
                    latencies.append(elapsed)
        connection.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    began = time.perf_counter()
    deadline[0] = began + seconds
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - began, "latencies": sorted(latencies), "errors": errors}


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))] if sorted_values else 0.0


def benchmark(args: argparse.Namespace) -> list[str]:
    model_dir = find_model(args.model, [DEMO_RUN])
    setup = inference_setup()
    for line in header_lines(setup.device, setup.dtype):
        print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="serve_load.") as workdir:
        reviews = [record["review"] for record in read_jsonl(split_jsonl(args.data, "eval", Path(workdir)))]
    reviews = reviews[: args.reviews]
    per = args.reviews_per_request
    requests = [json.dumps({"reviews": reviews[start : start + per]}, ensure_ascii=False).encode("utf-8")
                for start in range(0, len(reviews) - per + 1, per)]
    rates = predict_rates(model_dir, reviews, args.batch_size, args.rounds)
    predict = rates["all at once"]
    print(f"predict.py: {predict:.1f} reviews/s", file=sys.stderr, flush=True)

    server = Server(model_dir, args.batch_size)
    try:
        run_clients(server.port, requests, 1, 1.0, 50)  # warm-up, untimed
        results = {}
        for clients in args.clients:
            results[clients] = result = run_clients(server.port, requests, clients, args.seconds, args.max_requests)
            print(f"{clients} clients: {len(result['latencies']) / result['seconds']:.1f} requests/s, "
                  f"{len(result['errors'])} errors", file=sys.stderr, flush=True)
    finally:
        code = server.stop()
    rows = []
    for clients, result in results.items():
        answered = len(result["latencies"])
        review_rate = answered * per / result["seconds"]
        rows.append([str(clients), str(answered), f"{answered / result['seconds']:.1f}", f"{review_rate:.1f}",
                     f"{1000 * percentile(result['latencies'], 0.5):.1f}",
                     f"{1000 * percentile(result['latencies'], 0.99):.1f}", str(len(result["errors"])),
                     f"{review_rate / predict:.2f}"])
    largest = max(results)
    first_errors = sorted({error for result in results.values() for error in result["errors"]})[:3]
    return [
        f"model:    {display_path(model_dir)}, served by serve.py --batch_size {args.batch_size} on 127.0.0.1",
        f"data:     the first {len(reviews)} eval reviews of {display_path(args.data)}, {per} per request",
        f"load:     each client sends its next request when the last is answered, {args.seconds:g} s per level "
        f"(at most {args.max_requests} requests), on its own keep-alive connection; clients run in this process",
        f"predict.py: {predict:.1f} reviews/s (its Classifier on all {len(reviews)} reviews, --batch_size "
        f"{args.batch_size}, {args.rounds} rounds, model loaded); {rates['in arrival order']:.1f} reviews/s on "
        f"{args.batch_size} reviews at a time in input order, {rates['one at a time']:.1f} one review at a time",
        "",
        *format_table(["clients", "requests", "requests/s", "reviews/s", "p50 ms", "p99 ms", "errors",
                       "vs predict.py"], rows),
        "",
        f"serve.py exit code after SIGTERM: {code}" + (f"; errors: {first_errors}" if first_errors else ""),
        f"serve_vs_predict_{largest}_clients: "
        f"{len(results[largest]['latencies']) * per / results[largest]['seconds'] / predict:.2f}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure serve.py under load: start it on a free port of 127.0.0.1 with a tuned model, then for each "
            "number of concurrent clients let them send requests one after another for a bounded time. Reports "
            "requests/s, reviews/s, p50 / p99 latency and errors per level, beside predict.py's reviews/s on the "
            "same reviews; the last line is `serve_vs_predict_<N>_clients: <ratio>`."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None,
                        help=f"the tuned model folder or training output folder; default: the CPU demo's {display_path(DEMO_RUN)}")
    parser.add_argument("--data", type=Path, default=default_data("eval"),
                        help="eval reviews: eval.jsonl from make_data.py, or waimai_10k.csv (split as make_data.py "
                             "does); by default data/eval.jsonl, else $SHARED_DIR/data/waimai_10k.csv")
    parser.add_argument("--reviews", type=whole_number(), default=512, help="how many eval reviews (the first ones)")
    parser.add_argument("--reviews_per_request", type=whole_number(), default=1, help="reviews in each request")
    parser.add_argument("--clients", type=client_counts, default=[1, 8, 32],
                        help="numbers of concurrent clients, one level each")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each level sends requests")
    parser.add_argument("--max_requests", type=whole_number(), default=100_000,
                        help="most requests in one level, whatever the time")
    parser.add_argument("--batch_size", type=whole_number(), default=16,
                        help="serve.py's and predict.py's reviews per forward pass")
    parser.add_argument("--rounds", type=whole_number(), default=3, help="rounds of predict.py's timing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def measure() -> int:
        print("\n".join(benchmark(args)))
        return 0

    return report_errors(measure)


if __name__ == "__main__":
    sys.exit(main())
