#!/usr/bin/env bash
# The set-up behind `make demo`, `make test` and `make wheels` (docs/install.md):
#
#   bash tools/setup.sh demo     # environment, waimai_10k.csv, train.jsonl/eval.jsonl, ds_run_bf16.sh, run_test.sh
#   bash tools/setup.sh test     # environment, pip check, ruff, missing test assets, the whole pytest suite
#   bash tools/setup.sh env      # only the environment
#   WHEELS=dir bash tools/setup.sh wheels   # on a machine with network: every wheel the pinned set needs, into dir
#
# Environment: VENV when set; else the active virtual environment when it has the pinned set (tools/pinned_env.py);
# else .venv, created and filled with the pinned set when it lacks it. Every step is skipped when already done, so
# the commands can be run again, and offline once everything is in place.
# Variables: PYTHON (the Python 3.11+ that creates the environment, default python3), VENV, TORCH (default
# torch==2.13.0), TORCH_INDEX_URL (where torch comes from, default pip's configured index), WHEELS (install only from
# this folder, no network; for `wheels` the folder to fill), the target of `wheels`: WHEEL_ARCH (default this
# machine's), WHEEL_PLATFORM (pip platform tags, default manylinux_2_28 ... manylinux2014 of WHEEL_ARCH) and
# WHEEL_PYTHON (default 3.11); WAIMAI_URL, SHARED_DIR, HF_ENDPOINT (see tools/fetch_assets.py).
# Each failure is one line `error: ...` saying what to do, and a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH="${TORCH:-torch==2.13.0}"
export TORCH
# transformers 5.24, numpy 2.4, pandas 3.1 and matplotlib 3.11 of the pinned set require it (their Requires-Python)
MIN_PYTHON=3.11

fail() {
    echo "error: $*" >&2
    exit 1
}

pip_sources() {
    if [ -n "${WHEELS:-}" ]; then
        [ -d "$WHEELS" ] || fail "WHEELS=${WHEELS}: folder not found; fill it with \`make wheels WHEELS=${WHEELS}\` on a machine with network"
        echo "--no-index --find-links $WHEELS"
    fi
}

# The version of Python interpreter $1 (e.g. 3.11.7), or a one-line error.
python_version() {
    "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null ||
        fail "$1 does not run: install Python ${MIN_PYTHON} or newer and set PYTHON=/path/to/python${MIN_PYTHON}"
}

# 0 when version $1 is MIN_PYTHON or newer.
new_enough() {
    printf '%s\n%s\n' "$MIN_PYTHON" "$1" | sort -V -C
}

base_python() {
    local python="${PYTHON:-python3}" version
    command -v "$python" >/dev/null || fail "${python} not found: install Python ${MIN_PYTHON} or newer, or set PYTHON=/path/to/python${MIN_PYTHON}"
    version="$(python_version "$python")"
    new_enough "$version" ||
        fail "Python ${version} at $(command -v "$python") is too old: this project needs Python ${MIN_PYTHON} or newer (the pinned transformers, numpy, pandas and matplotlib require it); install one and set PYTHON=/path/to/python${MIN_PYTHON}"
    echo "$python"
}

# Installs the pinned set the way CI does: torch first, then requirements.txt without build isolation (DeepSpeed
# builds against the installed torch), then this project.
install_pinned_set() {
    local venv="$1" log="$1/install.log" sources torch_sources requirements
    sources="$(pip_sources)"
    torch_sources="$sources"
    if [ -z "${WHEELS:-}" ] && [ -n "${TORCH_INDEX_URL:-}" ]; then torch_sources="--index-url $TORCH_INDEX_URL"; fi
    requirements="$(mktemp)"
    grep -v '^torch==' requirements.txt >"$requirements"
    echo "installing the pinned set into ${venv} (${TORCH}${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}${WHEELS:+ from $WHEELS}); log ${log}"
    local -a steps=(
        "$sources setuptools>=68 wheel"
        "$torch_sources $TORCH"
        "$sources --no-build-isolation -r $requirements"
        "--no-build-isolation --no-deps -e ."
    )
    local step
    for step in "${steps[@]}"; do
        # shellcheck disable=SC2086  # the step is a list of pip arguments
        if ! "$venv/bin/python" -m pip install --disable-pip-version-check $step >>"$log" 2>&1; then
            rm -f "$requirements"
            fail "pip install ${step} failed ($(grep -m1 -E '^ERROR|Error' "$log" | tail -c 160)); no network? collect the wheels with \`make wheels WHEELS=dir\` on a machine with network and run this with WHEELS=dir (full log: ${log})"
        fi
    done
    rm -f "$requirements"
    "$venv/bin/python" -m pip check >>"$log" 2>&1 || fail "pip check found broken requirements in ${venv} (see ${log}); remove ${venv} and run this again"
}

setup_env() {
    local venv
    if [ -n "${VENV:-}" ]; then
        venv="$VENV"
    elif [ -n "${VIRTUAL_ENV:-}" ] && "$VIRTUAL_ENV/bin/python" tools/pinned_env.py >/dev/null 2>&1; then
        venv="$VIRTUAL_ENV"
    else
        venv=.venv
    fi
    if [ -x "$venv/bin/python" ]; then
        local version
        version="$(python_version "$venv/bin/python")"
        new_enough "$version" ||
            fail "${venv} has Python ${version}, too old: this project needs Python ${MIN_PYTHON} or newer (the pinned transformers, numpy, pandas and matplotlib require it); remove ${venv} and run this again with PYTHON=/path/to/python${MIN_PYTHON}"
    else
        local python
        python="$(base_python)"
        "$python" -m venv "$venv" >/dev/null 2>&1 ||
            fail "${python} -m venv ${venv} failed: install the venv module (Debian/Ubuntu: apt install python3-venv) or set PYTHON"
    fi
    if "$venv/bin/python" tools/pinned_env.py >/dev/null; then
        echo "environment: ${venv} has the pinned set (${TORCH})"
    else
        install_pinned_set "$venv"
    fi
    VIRTUAL_ENV="$(cd "$venv" && pwd)"
    PATH="$VIRTUAL_ENV/bin:$PATH"
    PYTHON="$VIRTUAL_ENV/bin/python"  # the launchers' interpreter (tuning/runtime/launch.sh)
    export VIRTUAL_ENV PATH PYTHON
}

run_demo() {
    setup_env
    local csv
    # the CSV found and verified (data/ or the shared folder) is the one make_data.py splits
    csv="$(python tools/fetch_assets.py waimai --print_path)"
    if [ -f data/train.jsonl ] && [ -f data/eval.jsonl ]; then
        echo "data/train.jsonl and data/eval.jsonl are in place (remove them to split again)"
    else
        python make_data.py --csv "$csv"
    fi
    bash ds_run_bf16.sh
    bash run_test.sh
}

run_tests() {
    setup_env
    python -m pip check >/dev/null || fail "pip check found broken requirements in ${VIRTUAL_ENV} (run \`python -m pip check\` there); reinstall them"
    python -m ruff check --quiet . || fail "ruff found the problems listed above; fix them"
    python tools/fetch_assets.py --optional
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python -m pytest -q "$@"  # pyproject.toml: testpaths = tests
}

# The wheels of the pinned set for another machine (WHEEL_PLATFORM, WHEEL_PYTHON); DeepSpeed is published only as
# source, so its archive is collected and built on the target at install time.
collect_wheels() {
    [ -n "${WHEELS:-}" ] || fail "set WHEELS to the folder to fill, e.g. \`make wheels WHEELS=wheels\`"
    local python platform deepspeed requirements
    python="$(base_python)"
    # pip takes each platform tag literally: a glibc 2.28 machine also runs manylinux_2_27 ... manylinux2014 wheels.
    local arch="${WHEEL_ARCH:-$(uname -m)}"
    platform="${WHEEL_PLATFORM:-$(for minor in $(seq 28 -1 17); do printf 'manylinux_2_%s_%s ' "$minor" "$arch"; done)manylinux2014_$arch}"
    local -a target=(--only-binary=:all: --python-version "${WHEEL_PYTHON:-3.11}" --implementation cp)
    local tag
    for tag in $platform; do target+=(--platform "$tag"); done
    mkdir -p "$WHEELS"
    deepspeed="$(grep '^deepspeed==' requirements.txt)"
    requirements="$(mktemp)"
    grep -v -e '^torch==' -e '^deepspeed==' requirements.txt >"$requirements"
    local log="$WHEELS/download.log"
    download() {
        "$python" -m pip download --disable-pip-version-check -d "$WHEELS" "$@" >>"$log" 2>&1 ||
            fail "pip download $* failed ($(grep -m1 -E '^ERROR' "$log" | tail -c 160)); check the network and WHEEL_PLATFORM/WHEEL_PYTHON (full log: ${log})"
    }
    echo "collecting wheels for ${platform%% *}..., Python ${WHEEL_PYTHON:-3.11} into ${WHEELS} (log ${log})"
    download --no-deps --no-binary=:all: "$deepspeed"
    tar -xzOf "$WHEELS/${deepspeed/==/-}.tar.gz" "${deepspeed/==/-}/PKG-INFO" |
        sed -n 's/^Requires-Dist: \([^;]*\)$/\1/p' | grep -v '^torch' >>"$requirements"
    download "${target[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH"
    # torch again, now found in WHEELS: the others' requirement on torch must not pull another version.
    download "${target[@]}" --find-links "$WHEELS" -r "$requirements" "$TORCH" "setuptools>=68" wheel
    rm -f "$requirements"
    echo "done: $(find "$WHEELS" -name '*.whl' | wc -l) wheels and the DeepSpeed source in ${WHEELS}; on the offline machine: \`make test WHEELS=${WHEELS}\`"
}

case "${1:-}" in
    env) setup_env ;;
    demo) run_demo ;;
    test) shift; run_tests "$@" ;;
    wheels) collect_wheels ;;
    *) fail "usage: bash tools/setup.sh demo|test|env|wheels (see the comment at the top of tools/setup.sh)" ;;
esac
