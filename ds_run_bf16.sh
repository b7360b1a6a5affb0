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
#
# Without a model folder at MODEL (default models/Baichuan2-7B-Base) it runs the tiny CPU demo instead
# (configs/tiny_demo.yaml). Re-running the same command continues from the latest complete checkpoint. Relative
# paths are relative to the repository. The output is also written to OUTPUT_DIR/train_<time>.log.
# Variables: MODEL, OUTPUT_DIR, DEMO_BASE_MODEL, DEMO_OUTPUT_DIR, CONFIG, DS_CONFIG, TRAIN_DATA, EVAL_DATA,
# NUM_DEVICES, HOSTFILE, MASTER_PORT; overrides of the recipe: LR, EPOCHS, BATCH_SIZE (largest per device),
# GLOBAL_BATCH_SIZE, GRAD_ACCUM (with GLOBAL_BATCH_SIZE=0), MAX_LENGTH, GRADIENT_CHECKPOINTING, EVAL_BATCH_SIZE,
# LOGGING_STEPS, WARMUP_RATIO, WEIGHT_DECAY, LR_SCHEDULER, PADDING, SAVE_STRATEGY, EVAL_STRATEGY, BF16, TF32, SEED.
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
if [ "$DEMO" = 1 ]; then
    : "${CONFIG:=configs/tiny_demo.yaml}"
    # The demo's settings were measured with 2 processes; its global batch stays 32 on any count.
    if [ "$DEVICE_KIND" = cpu ] || [ "$DEVICE_COUNT" -ge 2 ]; then : "${NUM_DEVICES:=2}"; else : "${NUM_DEVICES:=1}"; fi
    waimai_ensure_demo_base "$TRAIN_DATA"
else
    : "${CONFIG:=configs/baichuan2_7b.yaml}"
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
    PADDING:padding SAVE_STRATEGY:save_strategy EVAL_STRATEGY:eval_strategy BF16:bf16 TF32:tf32 SEED:seed \
    DS_CONFIG:deepspeed; do
    variable="${pair%%:*}"
    if [ -n "${!variable:-}" ]; then overrides+=("--${pair#*:}" "${!variable}"); fi
done

launcher=(deepspeed --master_port "${MASTER_PORT:-29500}")
if [ -n "${HOSTFILE:-}" ]; then
    launcher+=(--hostfile "$HOSTFILE")
    [ -n "${NUM_DEVICES:-}" ] && launcher+=(--num_gpus "$NUM_DEVICES")
elif [ "$DEVICE_KIND" = cpu ]; then
    processes="${NUM_DEVICES:-2}"  # DeepSpeed's CPU accelerator: gloo processes sharing the cores
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / processes > 0 ? $(nproc) / processes : 1 ))}"
    launcher+=(--num_gpus "$processes")
else
    launcher+=(--num_gpus "${NUM_DEVICES:-$DEVICE_COUNT}")
fi

mkdir -p "$TRAIN_OUTPUT_DIR"
log="$TRAIN_OUTPUT_DIR/train_$(date +%Y%m%d-%H%M%S).log"
echo "device: ${DEVICE_KIND} (${DEVICE_BACKEND}); recipe ${CONFIG}; ${BASE_MODEL} -> ${TRAIN_OUTPUT_DIR}; log ${log}"
"${launcher[@]}" train.py "$CONFIG" \
    --model_name_or_path "$BASE_MODEL" \
    --train_data "$TRAIN_DATA" \
    --eval_data "$EVAL_DATA" \
    --output_dir "$TRAIN_OUTPUT_DIR" \
    "${overrides[@]}" \
    "$@" 2>&1 | tee -a "$log"
