"""serve.py as a process: a signal finishes the requests in flight and exits 0; what cannot be served is one line."""

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from serve_client import REPO_ROOT, classify, serve_process

import serve
from tuning.eval import inference, precision
from tuning.runtime.errors import DataError
from tuning.runtime.memory import Room
from tuning.serve import server
from tuning.serve.flags import parse_args


def run_serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "serve.py"), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO_ROOT)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed serve.py printed (after the weights' loading bar, if any)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "serving " not in result.stderr
    return lines[0]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_requests_in_flight_then_exits_0(tuned_run, stop):
    # a 3 s batching wait holds the requests in the server when the signal comes, 1 s after they were sent
    with serve_process("--model", str(tuned_run["run"]), "--batch_wait_ms", "3000") as served:
        answers = []
        clients = [threading.Thread(target=lambda review=review: answers.append(classify(served.url, [review])))
                   for review in tuned_run["reviews"][:3]]
        for client in clients:
            client.start()
        time.sleep(1.0)
        served.process.send_signal(stop)
        for client in clients:
            client.join(timeout=60)
        code = served.process.wait(timeout=60)
        time.sleep(0.2)  # the last log lines
    assert code == 0, "".join(served.log)[-2000:]
    assert [status for status, _ in answers] == [200, 200, 200]
    assert sorted(answer["predictions"][0]["review"] for _, answer in answers) == sorted(tuned_run["reviews"][:3])
    assert "Traceback" not in "".join(served.log)


def test_a_model_that_cannot_be_loaded_is_one_line_before_listening(tuned_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tuned_run["run"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = run_serve("--model", str(broken), "--port", "0")
    assert result.returncode == 2
    assert error_line(result).startswith(f"error: {weights}: damaged or truncated weight file (")
    assert serve.main(["--model", str(tmp_path / "missing")]) == 2


def test_a_busy_port_is_refused_before_the_model_loads(tuned_run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve.main(["--model", str(tuned_run["run"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen there (") and err.count("\n") == 1


def test_the_listening_socket_is_a_tcp_one():
    """asyncio turns Nagle's algorithm off only on sockets made for TCP; with it on, each answer on a kept-alive
    connection waited for the client's delayed acknowledgement (about 40 ms)."""
    with server.bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_an_empty_api_key_is_refused(tuned_run, monkeypatch, capsys):
    monkeypatch.setenv("SERVE_API_KEY", " ")
    assert serve.main(["--model", str(tuned_run["run"])]) == 2
    assert capsys.readouterr().err == "error: SERVE_API_KEY is set but empty: give it a key, or unset it to serve " \
                                      "without one\n"


def test_compare_uses_the_base_model_the_run_recorded(tuned_run, tmp_path, capsys):
    with serve_process("--model", str(tuned_run["run"]), "--compare") as served:
        status, answer = classify(served.url, ["送餐很快"])
    assert status == 200 and answer["base_model"] == str(tuned_run["base"])
    assert set(answer["predictions"][0]["base"]) == {"label", "probability"}

    copied = tmp_path / "copied"  # a model folder without the run's manifest
    shutil.copytree(tuned_run["run"], copied, ignore=shutil.ignore_patterns("run_manifest.json"))
    assert serve.main(["--model", str(copied), "--compare"]) == 2
    assert capsys.readouterr().err == f"error: --compare: {copied} has no run_manifest.json naming its base " \
                                      "model; pass --base_model DIR\n"


def test_the_default_model_is_predict_pys_and_use_lora_picks_the_lora_runs(tuned_run, tmp_path, monkeypatch):
    missing = tmp_path / "output" / "demo" / "tiny-tuned"
    monkeypatch.setattr(server, "default_run_dirs", lambda lora: [missing.with_name(missing.name + "-lora" * lora)])
    args = parse_args(["--port", "0"])
    monkeypatch.setenv("USE_LORA", "true")
    with pytest.raises(DataError, match=f"no tuned model in {missing}-lora; "):
        server.run(args)
    monkeypatch.setenv("USE_LORA", "false")
    with pytest.raises(DataError, match=f"no tuned model in {missing};"):
        server.run(args)


def test_both_compared_models_must_fit_together_before_any_loads(tuned_run, monkeypatch, capsys):
    assert parse_args(["--dtype", "bf16"]).dtype == "bf16" and parse_args([]).dtype == "auto"
    one_model = inference.inference_setup("auto", [tuned_run["run"]]).parameters
    room = precision.needed_bytes(one_model, torch.bfloat16)  # one model fits in bf16, two in no precision
    monkeypatch.setattr(inference, "available_memory", lambda: Room(room, "MemAvailable"))
    assert serve.main(["--model", str(tuned_run["run"]), "--compare", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tuned_run['run']} and {tuned_run['base']} together needs ") and err.count("\n") == 1
    assert "nothing was loaded" in err
