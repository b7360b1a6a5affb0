"""bench/serve_load.py on the tiny tuned model: a short run of each level against a real serve.py on loopback."""

import re

from bench import serve_load


def test_serve_load_reports_each_level_beside_predict_py(tuned_run, capsys):
    code = serve_load.main(["--model", str(tuned_run["run"]), "--data", str(tuned_run["eval"]), "--reviews", "16",
                            "--reviews_per_request", "2", "--clients", "1,4", "--seconds", "1", "--rounds", "1"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert any(re.fullmatch(r"predict\.py: [\d.]+ reviews/s \(its Classifier on all 16 reviews, .*\); [\d.]+ "
                            r"reviews/s on 16 reviews at a time in input order, [\d.]+ one review at a time", line)
               for line in out)
    rows = {line.split()[0]: line.split() for line in out if re.match(r"^(1|4)\s+\d+\s", line)}
    assert set(rows) == {"1", "4"}
    for clients, row in rows.items():
        requests, requests_per_s, reviews_per_s, errors = int(row[1]), float(row[2]), float(row[3]), int(row[6])
        assert requests > 0 and errors == 0
        assert abs(reviews_per_s - 2 * requests_per_s) <= 0.11  # two reviews in each request
    assert "serve.py exit code after SIGTERM: 0" in out
    assert re.fullmatch(r"serve_vs_predict_4_clients: [\d.]+", out[-1])


def test_serve_load_bad_clients_flag_is_a_usage_error(capsys):
    try:
        serve_load.parse_args(["--clients", "1,0"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "every count must be at least 1" in capsys.readouterr().err
