#!/usr/bin/env bash
# Full-parameter bf16 fine-tuning of Baichuan2-7B-Base with DeepSpeed ZeRO-2: the original recipe's settings
# (global batch 32, lr 1e-5 cosine, warmup 0.03, 1 epoch, gradient checkpointing, a checkpoint per epoch), read from
# the recipe file configs/baichuan2_7b.yaml, except that batches are padded to their longest example instead of to
# 1024 tokens and each device takes up to 4 reviews per pass instead of accumulating 4 passes of one.
#
#   bash ds_run_bf16.sh                            # all NPUs/GPUs of this machine; 2 CPU processes without any
#   NUM_DEVICES=4 LR=2e-5 bash ds_run_bf16.sh      # settings are environment variables ...
#   bash ds_run_bf16.sh --max_steps 100            # ... and extra arguments go to train.py (they win)
#   CONFIG=my_recipe.yaml bash ds_run_bf16.sh      # another recipe file
#   HOSTFILE=hostfile bash ds_run_bf16.sh          # several machines (DeepSpeed hostfile: "host slots=8" lines)
#   HOSTFILE=hostfile NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash ds_run_bf16.sh   # the same without passwordless ssh:
#                                                  # run it on every machine, each with its NODE_RANK (0 = MASTER_ADDR)
#   ASCEND_RT_VISIBLE_DEVICES=4,5,6,7 bash ds_run_bf16.sh   # only these NPUs (CUDA_VISIBLE_DEVICES on GPUs)
#   BF16=false FP16=true bash ds_run_bf16.sh       # GPUs without bf16 (V100, T4): fp16 with loss scaling (automatic)
#   USE_LORA=true bash ds_run_bf16.sh              # LoRA on one device (configs/baichuan2_7b_lora.yaml, lr 1e-4)
#   USE_LORA=true NUM_DEVICES=8 DS_CONFIG=ds_config_bf16.json bash ds_run_bf16.sh   # LoRA with ZeRO-2 on 8 devices
#
# Without a model folder at the default MODEL (models/Baichuan2-7B-Base), or with DEMO=1, it runs the tiny demo
# instead (configs/tiny_demo.yaml); a MODEL you set that does not exist is an error. USE_LORA=true trains a LoRA
# adapter instead of every weight (docs/lora.md): the recipe configs/baichuan2_7b_lora.yaml (demo:
# configs/tiny_demo_lora.yaml), one device unless NUM_DEVICES says otherwise (the demo: 2 processes, ZeRO-2), and
# output folders ending in -lora; the run ends with the merged model there. OUTPUT_DIR must be one file
# system shared by all machines (checked at start). Re-running the same command continues from the latest complete
# checkpoint. Relative paths are relative to the repository. The output is also written to
# OUTPUT_DIR/train_<time>.log.
# Variables: MODEL, OUTPUT_DIR, DEMO_BASE_MODEL, DEMO_OUTPUT_DIR, CONFIG, DS_CONFIG, TRAIN_DATA, EVAL_DATA,
# NUM_DEVICES, HOSTFILE, NODE_RANK, MASTER_ADDR, MASTER_PORT, DEMO, USE_LORA; overrides of the recipe: LR, EPOCHS,
# BATCH_SIZE (largest per device), GLOBAL_BATCH_SIZE, GRAD_ACCUM (with GLOBAL_BATCH_SIZE=0), MAX_LENGTH,
# GRADIENT_CHECKPOINTING, EVAL_BATCH_SIZE, LOGGING_STEPS, WARMUP_RATIO, WEIGHT_DECAY, LR_SCHEDULER, PADDING,
# SAVE_STRATEGY, EVAL_STRATEGY, BF16, FP16, TF32, SEED, LORA_RANK, LORA_ALPHA, LORA_DROPOUT, LORA_TARGET. Device
# variables: WAIMAI_DEVICE (npu|cuda|cpu), ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES, HCCL_CONNECT_TIMEOUT,
# HCCL_EXEC_TIMEOUT, PYTORCH_NPU_ALLOC_CONF / PYTORCH_CUDA_ALLOC_CONF.
set -euo pipefail
cd "$(dirname "$0")"
source tuning/runtime/launch.sh
case "${1:-}" in -h | --help)
    waimai_usage ds_run_bf16.sh
    echo "train.py's own flags: python train.py --help"
    exit 0 ;;
esac
waimai_setup_device
waimai_select_model

TRAIN_DATA="${TRAIN_DATA:-data/train.jsonl}"
EVAL_DATA="${EVAL_DATA-data/eval.jsonl}"
if [ ! -f "$TRAIN_DATA" ]; then
    echo "error: ${TRAIN_DATA}: file not found; make it with \`python make_data.py --download\`" >&2
    exit 2
fi
lora_suffix=""
if [ "$LORA" = 1 ]; then lora_suffix="_lora"; fi
if [ "$DEMO" = 1 ]; then
    : "${CONFIG:=configs/tiny_demo${lora_suffix}.yaml}"
    # The demo's settings were measured with 2 processes; its global batch stays 32 on any count. With a hostfile
    # its slots say how many processes each machine runs.
    if [ -z "${HOSTFILE:-}" ] && { [ "$DEVICE_KIND" = cpu ] || [ "$DEVICE_COUNT" -ge 2 ]; }; then
        : "${NUM_DEVICES:=2}"
    elif [ -z "${HOSTFILE:-}" ]; then
        : "${NUM_DEVICES:=1}"
    fi
    waimai_ensure_demo_base "$TRAIN_DATA"
else
    : "${CONFIG:=configs/baichuan2_7b${lora_suffix}.yaml}"
    if [ "$LORA" = 1 ] && [ -z "${HOSTFILE:-}" ]; then
        : "${NUM_DEVICES:=1}"  # LoRA trains the 7B on one card; NUM_DEVICES=N DS_CONFIG=ds_config_bf16.json: ZeRO-2
    fi
fi
if [ ! -f "$CONFIG" ]; then
    echo "error: CONFIG=${CONFIG}: recipe file not found (see configs/)" >&2
    exit 2
fi

# Recipe overrides from the environment: only the variables that are set are passed.
overrides=()
for pair in LR:learning_rate EPOCHS:num_train_epochs BATCH_SIZE:per_device_train_batch_size \
    GLOBAL_BATCH_SIZE:global_batch_size GRAD_ACCUM:gradient_accumulation_steps MAX_LENGTH:model_max_length \
    GRADIENT_CHECKPOINTING:gradient_checkpointing EVAL_BATCH_SIZE:per_device_eval_batch_size \
    LOGGING_STEPS:logging_steps WARMUP_RATIO:warmup_ratio WEIGHT_DECAY:weight_decay LR_SCHEDULER:lr_scheduler_type \
    PADDING:padding SAVE_STRATEGY:save_strategy EVAL_STRATEGY:eval_strategy BF16:bf16 FP16:fp16 TF32:tf32 SEED:seed \
    DS_CONFIG:deepspeed USE_LORA:use_lora LORA_RANK:lora_rank LORA_ALPHA:lora_alpha LORA_DROPOUT:lora_dropout \
    LORA_TARGET:lora_target; do
    variable="${pair%%:*}"
    if [ -n "${!variable:-}" ]; then overrides+=("--${pair#*:}" "${!variable}"); fi
done

launcher=(deepspeed --master_port "${MASTER_PORT:-29500}")
if [ -n "${HOSTFILE:-}" ]; then
    launcher+=(--hostfile "$HOSTFILE")
    [ -n "${NUM_DEVICES:-}" ] && launcher+=(--num_gpus "$NUM_DEVICES")
    if [ -n "${NODE_RANK:-}" ]; then
        # Clusters without passwordless ssh: the same command on every machine, each with its NODE_RANK.
        if [ -z "${MASTER_ADDR:-}" ]; then
            echo "error: NODE_RANK=${NODE_RANK} needs MASTER_ADDR, the address of the machine with NODE_RANK=0" >&2
            exit 2
        fi
        launcher+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR")
    fi
elif [ "$DEVICE_KIND" = cpu ]; then
    processes="${NUM_DEVICES:-2}"  # DeepSpeed's CPU accelerator: gloo processes sharing the cores
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / processes > 0 ? $(nproc) / processes : 1 ))}"
    launcher+=(--num_gpus "$processes")
else
    include="$(waimai_device_include)" || exit 2
    if [ -n "$include" ]; then
        launcher+=(--include "$include")  # --num_gpus would take devices 0..N-1 whatever is visible
    else
        launcher+=(--num_gpus "${NUM_DEVICES:-$DEVICE_COUNT}")
    fi
fi

mkdir -p "$TRAIN_OUTPUT_DIR"
log="$TRAIN_OUTPUT_DIR/train_$(date +%Y%m%d-%H%M%S)${NODE_RANK:+_node$NODE_RANK}.log"
echo "device: ${DEVICE_KIND} (${DEVICE_BACKEND}); recipe ${CONFIG}; ${BASE_MODEL} -> ${TRAIN_OUTPUT_DIR}; log ${log}"
"${launcher[@]}" train.py "$CONFIG" \
    --model_name_or_path "$BASE_MODEL" \
    --train_data "$TRAIN_DATA" \
    --eval_data "$EVAL_DATA" \
    --output_dir "$TRAIN_OUTPUT_DIR" \
    "${overrides[@]}" \
    "$@" 2>&1 | tee -a "$log"
