# The two set-up commands (docs/install.md); tools/setup.sh does the work and lists its variables.
#   make demo                  environment, data, the tiny CPU demo trained (ds_run_bf16.sh) and compared (run_test.sh)
#   make test                  environment, missing test assets, ruff and the whole test suite
#   make wheels WHEELS=dir     on a machine with network: the wheels for an offline machine (then make test WHEELS=dir)
.PHONY: demo test wheels

demo:
	@bash tools/setup.sh demo

test:
	@bash tools/setup.sh test $(PYTEST_ARGS)

wheels:
	@bash tools/setup.sh wheels
