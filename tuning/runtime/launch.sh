# Shared shell logic of ds_run_bf16.sh and run_test.sh. Source it from the repository root, then call:
#   waimai_setup_device      sources CANN's set_env.sh when present; exports DEVICE_KIND (npu|cuda|cpu),
#                            DEVICE_COUNT, DEVICE_BACKEND (hccl|nccl|gloo) and DEVICE_BF16 (1|0)
#   waimai_select_model      exports BASE_MODEL, TRAIN_OUTPUT_DIR and DEMO (0|1): MODEL (default
#                            models/Baichuan2-7B-Base) and OUTPUT_DIR (default output/baichuan2-7b-waimai), or,
#                            when the MODEL folder does not exist, the tiny demo: DEMO_BASE_MODEL (default
#                            output/demo/tiny-base) and DEMO_OUTPUT_DIR (default output/demo/tiny-tuned)
#   waimai_ensure_demo_base TRAIN_JSONL
#                            in the demo, builds the tiny base model from TRAIN_JSONL unless it exists
#   waimai_usage SCRIPT      prints SCRIPT's leading comment block (its --help text)
# Each returns non-zero after printing a one-line error. PYTHON picks the interpreter (default: python).

waimai_setup_device() {
    local toolkit="${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit/latest}"
    local candidate cann_env=""
    for candidate in "$toolkit/set_env.sh" "$toolkit/../set_env.sh" /usr/local/Ascend/ascend-toolkit/set_env.sh; do
        if [ -f "$candidate" ]; then
            cann_env="$candidate"
            break
        fi
    done
    if [ -n "$cann_env" ]; then
        # CANN's script reads unset variables; nounset is restored after it.
        local had_nounset=0
        case $- in *u*) had_nounset=1 ;; esac
        set +u
        # shellcheck disable=SC1090
        source "$cann_env"
        if [ "$had_nounset" = 1 ]; then set -u; fi
    elif [ "${WAIMAI_DEVICE:-}" = npu ]; then
        echo "error: WAIMAI_DEVICE=npu but CANN is not installed: no set_env.sh under ${toolkit} or" \
            "/usr/local/Ascend/ascend-toolkit (set ASCEND_TOOLKIT_HOME)" >&2
        return 1
    fi
    local detected
    detected="$("${PYTHON:-python}" -m tuning.runtime.devices)" || return 1
    read -r DEVICE_KIND DEVICE_COUNT DEVICE_BACKEND DEVICE_BF16 <<<"$detected"
    export DEVICE_KIND DEVICE_COUNT DEVICE_BACKEND DEVICE_BF16
}

waimai_select_model() {
    local model="${MODEL:-models/Baichuan2-7B-Base}"
    if [ -d "$model" ]; then
        DEMO=0
        BASE_MODEL="$model"
        TRAIN_OUTPUT_DIR="${OUTPUT_DIR:-output/baichuan2-7b-waimai}"
    else
        DEMO=1
        BASE_MODEL="${DEMO_BASE_MODEL:-output/demo/tiny-base}"
        TRAIN_OUTPUT_DIR="${DEMO_OUTPUT_DIR:-output/demo/tiny-tuned}"
        cat <<EOF
======================================================================
 No Baichuan2 model at MODEL=${model}: running the tiny demo instead.
 Base model: ${BASE_MODEL} (random init, ~1.4M parameters, vocabulary
 trained on the training reviews); tuned model: ${TRAIN_OUTPUT_DIR}.
 For the real run put Baichuan2-7B-Base there or set MODEL=<folder>.
======================================================================
EOF
    fi
    export BASE_MODEL TRAIN_OUTPUT_DIR DEMO
}

waimai_ensure_demo_base() {
    local train_data="$1"
    if [ "$DEMO" != 1 ] || [ -d "$BASE_MODEL" ]; then
        return 0
    fi
    "${PYTHON:-python}" -m tuning.model.tiny --train_data "$train_data" --output_dir "$BASE_MODEL"
}

waimai_usage() {
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$1"
}
