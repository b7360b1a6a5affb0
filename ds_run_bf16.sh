#!/usr/bin/env bash
# Full-parameter bf16 fine-tuning of Baichuan2-7B-Base with DeepSpeed ZeRO-2: the original recipe's settings
# (global batch 32, lr 1e-5 cosine, warmup 0.03, 1 epoch, gradient checkpointing, a checkpoint per epoch), read from
# the recipe file configs/baichuan2_7b.yaml, except that batches are padded to their longest example instead of to
# 1024 tokens and each device takes up to 4 reviews per pass instead of accumulating 4 passes of one.
#
#   bash ds_run_bf16.sh                            # all NPUs/GPUs of this machine; 2 CPU processes without any
#   bash ds_run_bf16.sh --learning_rate 2e-5       # hyperparameters: flags after the script go to train.py (they
#   CONFIG=my_recipe.yaml bash ds_run_bf16.sh      # win over the recipe), or another recipe file
#   NUM_DEVICES=4 bash ds_run_bf16.sh              # the first 4 devices
#   HOSTFILE=hostfile bash ds_run_bf16.sh          # several machines (DeepSpeed hostfile: "host slots=8" lines)
#   HOSTFILE=hostfile NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash ds_run_bf16.sh   # the same without passwordless ssh:
#                                                  # run it on every machine, each with its NODE_RANK (0 = MASTER_ADDR)
#   ASCEND_RT_VISIBLE_DEVICES=4,5,6,7 bash ds_run_bf16.sh   # only these NPUs (CUDA_VISIBLE_DEVICES on GPUs); with
#                                                  # HOSTFILE the same devices on every machine
#   bash ds_run_bf16.sh --bf16 false --fp16 true   # GPUs without bf16 (V100, T4): fp16 with loss scaling (automatic)
#   USE_LORA=true bash ds_run_bf16.sh              # LoRA on one device (configs/baichuan2_7b_lora.yaml, lr 1e-4)
#   USE_LORA=true NUM_DEVICES=8 DS_CONFIG=ds_config_bf16.json bash ds_run_bf16.sh   # LoRA with ZeRO-2 on 8 devices
#
# Without a model folder at the default MODEL (models/Baichuan2-7B-Base), or with DEMO=1, it runs the tiny demo
# instead (configs/tiny_demo.yaml); a MODEL you set that does not exist is an error. USE_LORA=true trains a LoRA
# adapter instead of every weight (docs/lora.md): the recipe configs/baichuan2_7b_lora.yaml (demo:
# configs/tiny_demo_lora.yaml), one device unless NUM_DEVICES says otherwise (the demo: 2 processes, ZeRO-2), and
# output folders ending in -lora; the run ends with the merged model there. OUTPUT_DIR must be one file
# system shared by all machines (checked at start). Re-running the same command continues from the latest complete
# checkpoint whose files match their SHA-256 record. A second launch into an OUTPUT_DIR in use stops at once, naming
# the other run's host and PID (docs/guarantees.md). Relative paths are relative to the repository. The output is
# also written to OUTPUT_DIR/train_<time>.log. On one machine an unset MASTER_PORT is a free port; with HOSTFILE it is 29500.
# Variables: MODEL, OUTPUT_DIR, DEMO_BASE_MODEL, DEMO_OUTPUT_DIR, CONFIG, DS_CONFIG (the DeepSpeed config instead
# of the recipe's), TRAIN_DATA, EVAL_DATA, NUM_DEVICES, HOSTFILE, NODE_RANK, MASTER_ADDR, MASTER_PORT, DEMO,
# USE_LORA. Every hyperparameter is in the recipe or a flag (python train.py --help). Device variables:
# WAIMAI_DEVICE (npu|cuda|cpu), ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES, HCCL_CONNECT_TIMEOUT,
# HCCL_EXEC_TIMEOUT, PYTORCH_NPU_ALLOC_CONF / PYTORCH_CUDA_ALLOC_CONF; with HOSTFILE and ssh these and the others
# train.py reads reach every machine through DeepSpeed's .deepspeed_env (your own entries there are kept).
set -euo pipefail
cd "$(dirname "$0")"
source tuning/runtime/launch.sh
case "${1:-}" in -h | --help)
    waimai_usage ds_run_bf16.sh
    echo "train.py's own flags: python train.py --help"
    exit 0 ;;
esac
waimai_reject_recipe_variables ds_run_bf16.sh || exit 2
if [ -n "${HOSTFILE:-}" ] && [ ! -f "$HOSTFILE" ]; then
    echo "error: HOSTFILE=${HOSTFILE}: file not found" >&2  # DeepSpeed would run on this machine alone
    exit 2
fi
waimai_setup_device
waimai_select_model

TRAIN_DATA="${TRAIN_DATA:-data/train.jsonl}"
EVAL_DATA="${EVAL_DATA-data/eval.jsonl}"
if [ ! -f "$TRAIN_DATA" ]; then
    echo "error: ${TRAIN_DATA}: file not found; make it with \`python make_data.py --download\`" >&2
    exit 2
fi
CONFIG="${CONFIG:-$DEFAULT_CONFIG}"
if [ ! -f "$CONFIG" ]; then
    echo "error: CONFIG=${CONFIG}: recipe file not found (see configs/)" >&2
    exit 2
fi
mkdir -p "$TRAIN_OUTPUT_DIR"
# One launch per output folder: a second one stops here, before any process starts (docs/guarantees.md). With
# NODE_RANK the launch on node 0 holds the lock for every machine.
if [ "${NODE_RANK:-0}" = 0 ]; then waimai_lock_output_dir "$TRAIN_OUTPUT_DIR" || exit; fi
if [ "$DEMO" = 1 ]; then
    # The demo's settings were measured with 2 processes; its global batch stays 32 on any count. With a hostfile
    # its slots say how many processes each machine runs.
    if [ -z "${HOSTFILE:-}" ] && { [ "$DEVICE_KIND" = cpu ] || [ "$DEVICE_COUNT" -ge 2 ]; }; then
        : "${NUM_DEVICES:=2}"
    elif [ -z "${HOSTFILE:-}" ]; then
        : "${NUM_DEVICES:=1}"
    fi
    waimai_ensure_demo_base "$TRAIN_DATA"
else
    if [ "$LORA" = 1 ] && [ -z "${HOSTFILE:-}" ]; then
        : "${NUM_DEVICES:=1}"  # LoRA trains the 7B on one card; NUM_DEVICES=N DS_CONFIG=ds_config_bf16.json: ZeRO-2
    fi
fi

# The launcher's own choices that train.py takes as flags: only those that are set.
flags=()
if [ -n "${DS_CONFIG:-}" ]; then flags+=(--deepspeed "$DS_CONFIG"); fi
if [ -n "${USE_LORA:-}" ]; then flags+=(--use_lora "$USE_LORA"); fi

include="$(waimai_device_include)" || exit 2  # --num_gpus would take devices 0..N-1 whatever is visible
port="$(waimai_master_port)"
if [ "$DEVICE_KIND" = cpu ]; then waimai_on_exit "waimai_remove_shm_buffers $port"; fi
launcher=(deepspeed --master_port "$port")
if [ -n "${HOSTFILE:-}" ]; then
    launcher+=(--hostfile "$HOSTFILE")
    if [ -n "$include" ]; then
        launcher+=(--include "$include")
    elif [ -n "${NUM_DEVICES:-}" ]; then
        launcher+=(--num_gpus "$NUM_DEVICES")
    fi
    if [ -n "${NODE_RANK:-}" ]; then
        # Clusters without passwordless ssh: the same command on every machine, each with its NODE_RANK.
        if [ -z "${MASTER_ADDR:-}" ]; then
            echo "error: NODE_RANK=${NODE_RANK} needs MASTER_ADDR, the address of the machine with NODE_RANK=0" >&2
            exit 2
        fi
        launcher+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR")
    else
        environment_file="$(mktemp "${TMPDIR:-/tmp}/waimai-deepspeed-env.XXXXXX")"
        waimai_on_exit 'rm -f "$environment_file"'
        waimai_forward_environment "$environment_file"
    fi
elif [ "$DEVICE_KIND" = cpu ]; then
    processes="${NUM_DEVICES:-2}"  # DeepSpeed's CPU accelerator: gloo processes sharing the cores
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / processes > 0 ? $(nproc) / processes : 1 ))}"
    launcher+=(--num_gpus "$processes")
elif [ -n "$include" ]; then
    launcher+=(--include "$include")
else
    launcher+=(--num_gpus "${NUM_DEVICES:-$DEVICE_COUNT}")
fi

log="$TRAIN_OUTPUT_DIR/train_$(date +%Y%m%d-%H%M%S)${NODE_RANK:+_node$NODE_RANK}.log"
echo "device: ${DEVICE_KIND} (${DEVICE_BACKEND}); recipe ${CONFIG}; ${BASE_MODEL} -> ${TRAIN_OUTPUT_DIR}; log ${log}"
"${launcher[@]}" train.py "$CONFIG" \
    --model_name_or_path "$BASE_MODEL" \
    --train_data "$TRAIN_DATA" \
    --eval_data "$EVAL_DATA" \
    --output_dir "$TRAIN_OUTPUT_DIR" \
    ${flags[@]+"${flags[@]}"} \
    "$@" 2>&1 | tee -a "$log"
