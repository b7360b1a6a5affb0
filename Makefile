# The two set-up commands (docs/install.md); tools/setup.sh does the work and lists its variables.
#   make demo                  environment, data, the tiny CPU demo trained (ds_run_bf16.sh) and compared (run_test.sh)
#   make test                  environment, missing test assets, ruff and the whole test suite
#   make wheels WHEELS=dir     on a machine with network: the wheels for an offline machine (then make test WHEELS=dir)
#   make serve                 the tuned model over HTTP on 127.0.0.1:8000 with a page (serve.py; SERVE_ARGS=--compare)
.PHONY: demo test wheels serve

demo:
	@bash tools/setup.sh demo

test:
	@bash tools/setup.sh test $(PYTEST_ARGS)

wheels:
	@bash tools/setup.sh wheels

serve:
	@$(if $(wildcard .venv/bin/python),.venv/bin/python,python) serve.py $(SERVE_ARGS)
