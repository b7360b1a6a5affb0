"""The HTTP API on a tiny tuned model, served by uvicorn on loopback: predict.py's answers, bad input, the API key,
32 concurrent clients, and the page and API reference served without any other origin."""

import io
import json
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from serve_client import call, classify, serving

import predict
from tuning.runtime.devices import detect_device
from tuning.serve.app import MAX_BODY_BYTES, STATIC_DIR, ServeSettings, create_app
from tuning.serve.service import load_models

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def models(tuned_run):
    """The tuned model and its base (--compare), batch size 4 as predict.py's --batch_size 4 below."""
    return load_models(tuned_run["run"], tuned_run["base"], detect_device(), torch.float32, batch_size=4)


@pytest.fixture(scope="module")
def tuned_only(tuned_run):
    return load_models(tuned_run["run"], None, detect_device(), torch.float32, batch_size=4)


@pytest.fixture(scope="module")
def server(tuned_only):
    app = create_app(tuned_only, ServeSettings(max_reviews=8, batch_size=4, batch_wait_s=0.005, api_key=None))
    with serving(app) as url:
        yield url, app


def predict_records(argv: list[str], monkeypatch, capsys) -> tuple[list[dict], str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert predict.main(argv) == 0
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_answers_equal_predict_py(tuned_run, tuned_only, monkeypatch, capsys):
    reviews = tuned_run["reviews"]
    expected, err = predict_records(["--model", str(tuned_run["run"]), "--batch_size", "4", *reviews],
                                    monkeypatch, capsys)
    cut = int(re.search(r"cut (\d+) reviews longer than model_max_length", err).group(1))
    assert cut > 0
    app = create_app(tuned_only, ServeSettings(max_reviews=256, batch_size=4, batch_wait_s=0.005, api_key=None))
    with serving(app) as url:
        status, answer = classify(url, reviews)
    assert status == 200
    assert answer["predictions"] == expected  # the same labels and probabilities, in input order
    assert answer["truncated"] == cut
    assert answer["model"] == str(tuned_run["run"]) and "base_model" not in answer
    assert {record["label"] for record in expected} == {"积极", "消极"}


def test_health(server, tuned_run):
    url, _ = server
    status, answer, _ = call(url + "/health")
    assert status == 200
    assert answer == {"status": "ok", "model": str(tuned_run["run"]), "base_model": None, "device": "cpu",
                      "dtype": "float32", "label_words": ["积极", "消极"], "batch_size": 4, "max_reviews": 8}


BIG = json.dumps({"reviews": ["好" * 1000] * 400}).encode("utf-8")


def _chunked(data: bytes):
    """The body in pieces without a Content-Length (http.client sends it chunked)."""
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


BAD_REQUESTS = {
    "malformed JSON": ({"raw": b'{"reviews": ["a",'}, 400, "malformed JSON at character"),
    "not an object": ({"body": ["a"]}, 422, 'must be a JSON object {"reviews": ["...", ...]}, got a list'),
    "no body": ({"raw": b""}, 422, "empty body"),
    "missing reviews": ({"body": {"review": ["a"]}}, 422, 'missing "reviews"'),
    "reviews not a list": ({"body": {"reviews": "a"}}, 422, '"reviews" must be a list of strings, got a string'),
    "a number among the reviews": ({"body": {"reviews": ["a", 3]}}, 422, "reviews[1] must be a string, got a number"),
    "null among the reviews": ({"body": {"reviews": [None]}}, 422, "reviews[0] must be a string, got null"),
    "an empty list": ({"body": {"reviews": []}}, 422, '"reviews" is an empty list'),
    "empty reviews": ({"body": {"reviews": ["a", " ", "\t\u200b"]}}, 422, "reviews[1], reviews[2] are empty"),
    "too many reviews": ({"body": {"reviews": ["a"] * 9}}, 413, "9 reviews in one request; at most 8"),
    "a body over 1 MB": ({"raw": BIG}, 413, f"over {MAX_BODY_BYTES:,} bytes"),
    "a body over 1 MB, chunked": ({"raw": _chunked(BIG)}, 413, f"over {MAX_BODY_BYTES:,} bytes"),
    "not JSON": ({"raw": b'{"reviews": ["a"]}', "headers": {"Content-Type": "text/plain"}}, 415,
                 "Content-Type: application/json"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(server, case):
    url, _ = server
    request, status, message = BAD_REQUESTS[case]
    headers = request.get("headers", {"Content-Type": "application/json"})
    raw = request.get("raw")
    got_status, answer, answer_headers = call(url + "/v1/classify", "POST", request.get("body"), headers, raw)
    assert (got_status, answer_headers["content-type"]) == (status, "application/json")
    assert message in answer["detail"] and "\n" not in answer["detail"]
    assert classify(url, ["送餐很快"])[0] == 200


def test_unknown_paths_and_methods_get_json_errors(server):
    url, _ = server
    assert call(url + "/v2/classify", "POST", {"reviews": ["a"]})[:2] == (404, {"detail": "Not Found"})
    assert call(url + "/v1/classify")[:2] == (405, {"detail": "Method Not Allowed"})


def test_compare_adds_the_base_models_answers(tuned_run, models, monkeypatch, capsys):
    short = [review for review in tuned_run["reviews"] if len(review) < 20][:6]  # cut by neither model
    tuned, _ = predict_records(["--model", str(tuned_run["run"]), *short], monkeypatch, capsys)
    # the base model's own defaults are the tuned run's settings here (the default template and label words)
    base, _ = predict_records(["--model", str(tuned_run["base"]), *short], monkeypatch, capsys)
    app = create_app(models, ServeSettings(max_reviews=8, batch_size=4, batch_wait_s=0.005, api_key=None))
    with serving(app) as url:
        status, answer = classify(url, short)
        health = call(url + "/health")[1]
    assert status == 200 and answer["base_model"] == health["base_model"] == str(tuned_run["base"])
    assert [{key: p[key] for key in ("review", "label", "probability")} for p in answer["predictions"]] == tuned
    assert [p["base"] for p in answer["predictions"]] == [
        {"label": record["label"], "probability": record["probability"]} for record in base
    ]
    assert answer["predictions"] != [p | {"base": {k: p[k] for k in ("label", "probability")}}
                                     for p in answer["predictions"]]  # the two models do answer differently


def test_the_api_key_guards_everything_but_health(tuned_only):
    app = create_app(tuned_only, ServeSettings(max_reviews=8, batch_size=4, batch_wait_s=0.005, api_key=KEY))
    good = {"Authorization": f"Bearer {KEY}"}
    paths = ["/", "/docs", "/openapi.json", "/static/page.js", "/docs/assets/swagger-ui.css"]
    with serving(app) as url:
        assert call(url + "/health")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}):
            status, answer = classify(url, ["送餐很快"], headers)
            assert status == 401 and "API key" in answer["detail"], headers
            assert all(call(url + path, headers=headers)[0] == 401 for path in paths)
        assert classify(url, ["送餐很快"], good)[0] == 200
        assert classify(url, ["送餐很快"], {"Authorization": f"bearer {KEY}"})[0] == 200  # the scheme in any case
        assert all(call(url + path, headers=good)[0] == 200 for path in paths)
        status, _, headers = call(url + "/v1/classify", "POST", {"reviews": ["a"]})
        assert status == 401 and headers["www-authenticate"] == "Bearer"


def test_32_concurrent_clients_are_answered_correctly_and_batched(tuned_run, tuned_only):
    reviews = tuned_run["reviews"]
    requests = [[reviews[(index * 5 + offset) % len(reviews)] for offset in range(index % 3 + 1)]
                for index in range(32)]
    app = create_app(tuned_only, ServeSettings(max_reviews=8, batch_size=16, batch_wait_s=0.005, api_key=None))
    with serving(app) as url:
        alone = {review: classify(url, [review])[1]["predictions"][0] for review in set(sum(requests, []))}
        batches_before = app.state.batcher.batches
        start = threading.Barrier(32)

        def client(request: list[str]) -> tuple[int, dict]:
            start.wait()
            return classify(url, request)

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(client, requests))
        batches = app.state.batcher.batches - batches_before
    for request, (status, answer) in zip(requests, answers):
        assert status == 200
        assert [p["review"] for p in answer["predictions"]] == request
        for prediction in answer["predictions"]:
            assert prediction["label"] == alone[prediction["review"]]["label"]
            assert prediction["probability"] == pytest.approx(alone[prediction["review"]]["probability"], abs=1e-4)
    assert batches < len(requests)  # requests that arrived together were scored together


def test_the_page_and_the_api_reference_load_nothing_from_another_origin(server):
    url, _ = server
    status, page, headers = call(url + "/")
    assert status == 200 and headers["content-security-policy"] == "default-src 'self'"
    assert "<textarea" in page and 'id="example"' in page
    for html, base in ((page, url + "/"), (call(url + "/docs")[1], url)):
        links = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert links and not [link for link in links if "//" in link], links
        for link in links:
            target = base + link if not link.startswith("/") else url + link
            assert call(target.split("?")[0])[0] == 200, link
    for path in STATIC_DIR.iterdir():  # the page's own files name no other origin either
        assert not re.search(r"https?://", path.read_text(encoding="utf-8")), path.name
    status, schema, _ = call(url + "/openapi.json")
    assert status == 200 and {"/v1/classify", "/health"} <= set(schema["paths"])
