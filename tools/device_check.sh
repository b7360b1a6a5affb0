#!/usr/bin/env bash
# One command for a machine with an NPU or GPU: the tests that need one (among them the recipes' optimizer under
# ZeRO-2 on the device), with two or more devices a 2-rank ZeRO-2 run over HCCL/NCCL, the training benchmark on a
# 1B model and the evaluation benchmark, in one report with MFU (output/device_check/<time>/report.md). Each step has
# a time limit; together they stay under 8 minutes.
#
#   bash tools/device_check.sh                      # this machine's python (its own torch / torch_npu is kept)
#   WHEELS=wheels bash tools/device_check.sh        # offline: what is missing comes from a folder of wheels
#   bash tools/device_check.sh --make-wheels wheels # on an online machine: make that folder (see docs/hardware.md)
#
# What the pinned set (requirements.txt) has and this python lacks, torch excepted, is installed into a scratch
# virtual environment (SCRATCH, default output/device_check/venv) that sees the machine's packages; nothing is
# installed into the machine's python. Variables: PYTHON (default python), WHEELS, SCRATCH, SHARED_DIR (the folder
# with data/waimai_10k.csv and baichuan2/tokenizer.model for the tests and benchmarks), CHECK_DIR (where the
# report's folder goes, default output/device_check).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

requirements_without_torch() {
    grep -E '^[A-Za-z0-9_.-]+==' requirements.txt | grep -v -E '^torch=='
}

if [ "${1:-}" = --make-wheels ]; then
    # Run with the python of an installed pinned set (pip install -r requirements.txt), of the device machine's
    # python version and CPU architecture (Ascend hosts are often aarch64), or pass pip's --platform,
    # --python-version and --only-binary=:all: in DOWNLOAD_ARGS. torch and its GPU libraries are left out.
    folder="${2:?usage: bash tools/device_check.sh --make-wheels FOLDER}"
    mkdir -p "$folder"
    "$PYTHON" -m pip freeze --exclude-editable \
        | grep -v -i -E '^(torch|torch[-_]npu|triton|nvidia-[a-z0-9_-]*|deepspeed)==' >"$folder/requirements-frozen.txt"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download --no-deps --dest "$folder" ${DOWNLOAD_ARGS:-} -r "$folder/requirements-frozen.txt"
    # deepspeed is published as source only: built here into a pure-python wheel (its kernels compile at run time)
    "$PYTHON" -m pip wheel --no-deps --wheel-dir "$folder" "$(grep -E '^deepspeed==' requirements.txt)"
    echo "wheels in ${folder}; copy it to the device machine and run: WHEELS=${folder} bash tools/device_check.sh"
    exit 0
fi

missing="$("$PYTHON" -c 'from transformers_modify.versions import version_problems; print("; ".join(version_problems()))')"
if [ -n "$missing" ]; then
    echo "missing from this python: ${missing}"
    SCRATCH="${SCRATCH:-output/device_check/venv}"
    if [ ! -x "$SCRATCH/bin/python" ]; then
        "$PYTHON" -m venv --system-site-packages "$SCRATCH"
    fi
    source_args=()
    if [ -n "${WHEELS:-}" ]; then source_args=(--no-index --find-links "$WHEELS"); fi
    # The machine's torch satisfies deepspeed's and transformers' torch requirement: it is never replaced.
    "$SCRATCH/bin/python" -m pip install --quiet ${source_args[@]+"${source_args[@]}"} -r <(requirements_without_torch)
    PYTHON="$SCRATCH/bin/python"
    export PATH="$(cd "$SCRATCH/bin" && pwd):$PATH"
    missing="$("$PYTHON" -c 'from transformers_modify.versions import version_problems; print("; ".join(version_problems()))')"
    if [ -n "$missing" ]; then
        echo "error: still missing after installing into ${SCRATCH}: ${missing}" >&2
        exit 2
    fi
fi
export PYTHON

source tuning/runtime/launch.sh
waimai_setup_device
if [ "$DEVICE_KIND" = cpu ]; then
    echo "error: no NPU or GPU found (torch sees only the CPU); this check needs one" >&2
    exit 2
fi
report_dir="${CHECK_DIR:-output/device_check}/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$report_dir"
report="$report_dir/report.md"
device_name="$(TORCH_DEVICE_BACKEND_AUTOLOAD=0 "$PYTHON" -c \
    'from tuning.runtime.devices import detect_device; print(detect_device().name())')"

# Each step gets a time limit, 460 s in all, so that the whole check stays under 8 minutes; a failed step is
# reported, not fatal.
run_step() {
    local name="$1" limit="$2"
    shift 2
    echo "== ${name}"
    local status=0
    timeout "$limit" "$@" >"$report_dir/${name}.log" 2>&1 || status=$?
    tail -n 40 "$report_dir/${name}.log"
    echo "${name}: exit ${status}" >>"$report_dir/status"
}

# The evaluation benchmark's model: the tiny demo base, built from data/ or from the shared waimai_10k.csv.
data_dir=data
if [ ! -f "$data_dir/train.jsonl" ]; then
    data_dir="$report_dir/data"
    "$PYTHON" make_data.py --csv "${SHARED_DIR:-../shared}/data/waimai_10k.csv" --output_dir "$data_dir" \
        >"$report_dir/make_data.log" 2>&1 || true
fi
"$PYTHON" -m tuning.model.tiny --train_data "$data_dir/train.jsonl" --output_dir "$report_dir/eval-model" \
    >"$report_dir/eval-model.log" 2>&1 || true
run_step accelerator_tests 250 "$PYTHON" -m pytest -m accelerator -k "not two_devices" tests -q -rs \
    -p no:cacheprovider
skipped_steps="- none for lack of devices"
if [ "$DEVICE_COUNT" -ge 2 ]; then
    run_step two_devices 60 "$PYTHON" -m pytest -m accelerator -k two_devices tests -q -rs -p no:cacheprovider
else
    skipped_steps="- two_devices, the 2-rank ZeRO-2 run over ${DEVICE_BACKEND}: this machine has ${DEVICE_COUNT} device"
fi
run_step train_throughput 120 "$PYTHON" bench/train_throughput.py --preset 1b --configs original,ours \
    --data "$data_dir/train.jsonl" \
    --rounds 1 --steps 2 --max_length 512
run_step eval_throughput 30 "$PYTHON" bench/eval_throughput.py --model "$report_dir/eval-model" \
    --data "$data_dir/eval.jsonl" --reviews 200 \
    --rounds 1

{
    echo "# Device check $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- device: ${DEVICE_KIND} x ${DEVICE_COUNT} (${device_name}), bf16 native: ${DEVICE_BF16}"
    echo "- versions: $("$PYTHON" -c 'import importlib.metadata as m
names = ("torch", "torch_npu", "transformers", "accelerate", "deepspeed", "peft", "flash_attn")
found = []
for name in names:
    try:
        found.append(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        pass
print(", ".join(found))')"
    echo "- steps: $(paste -sd ';' "$report_dir/status")"
    echo
    echo "## Skipped"
    echo
    echo "Steps skipped for lack of devices:"
    echo "$skipped_steps"
    echo
    echo "Tests skipped, with pytest's reason:"
    grep -h '^SKIPPED' "$report_dir"/accelerator_tests.log "$report_dir"/two_devices.log 2>/dev/null |
        sed 's/^/- /' || echo "- none"
    echo
    echo "## MFU (training benchmark, 1B model)"
    echo
    echo '```'
    grep -i -B 12 "^MFU:" "$report_dir/train_throughput.log" || echo "no MFU: the benchmark did not finish, or this device's peak is not in transformers_modify/step_metrics.py"
    echo '```'
    for step in accelerator_tests two_devices train_throughput eval_throughput; do
        [ -f "$report_dir/${step}.log" ] || continue
        echo
        echo "## ${step}"
        echo
        echo '```'
        tail -n 60 "$report_dir/${step}.log"
        echo '```'
    done
} >"$report"
echo "report: ${report}"
grep -q -v ': exit 0$' "$report_dir/status" && exit 1
exit 0
