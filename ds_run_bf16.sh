#!/usr/bin/env bash
# Full-parameter bf16 fine-tuning of Baichuan2-7B-Base with DeepSpeed ZeRO-2: the original recipe's settings
# (batch 1 x 4 accumulation per device, lr 1e-5 cosine, warmup 0.03, 1 epoch, gradient checkpointing, a checkpoint
# per epoch) except that batches are padded to their longest example instead of to 1024 tokens.
#
#   bash ds_run_bf16.sh                            # all NPUs/GPUs of this machine; 2 CPU processes without any
#   NUM_DEVICES=4 LR=2e-5 bash ds_run_bf16.sh      # settings are environment variables ...
#   bash ds_run_bf16.sh --max_steps 100            # ... and extra arguments go to train.py (they win)
#   HOSTFILE=hostfile bash ds_run_bf16.sh          # several machines (DeepSpeed hostfile: "host slots=8" lines)
#
# Without a model folder at MODEL (default models/Baichuan2-7B-Base) it runs the tiny CPU demo instead.
# Re-running the same command continues from the latest complete checkpoint. Relative paths are relative to
# the repository. The output is also written to OUTPUT_DIR/train_<time>.log. See README for every variable.
set -euo pipefail
cd "$(dirname "$0")"
source waimai/launch.sh
case "${1:-}" in -h | --help)
    waimai_usage ds_run_bf16.sh
    echo "train.py's own flags: python train.py --help"
    exit 0 ;;
esac
waimai_setup_device
waimai_select_model

TRAIN_DATA="${TRAIN_DATA:-data/train.jsonl}"
EVAL_DATA="${EVAL_DATA-data/eval.jsonl}"
DS_CONFIG="${DS_CONFIG:-ds_config_bf16.json}"
if [ ! -f "$TRAIN_DATA" ]; then
    echo "error: ${TRAIN_DATA}: file not found; make it with \`python make_data.py --download\`" >&2
    exit 2
fi
if [ "$DEMO" = 1 ]; then  # a 1.4M-parameter model learns at a far higher rate, from larger batches
    : "${BATCH_SIZE:=16}" "${GRAD_ACCUM:=1}" "${LR:=1.5e-3}" "${MAX_LENGTH:=256}" "${GRADIENT_CHECKPOINTING:=false}"
    : "${EVAL_BATCH_SIZE:=64}" "${LOGGING_STEPS:=20}"
    # The demo's settings were measured with 2 processes (global batch 32); more GPUs would change them.
    if [ "$DEVICE_KIND" = cpu ] || [ "$DEVICE_COUNT" -ge 2 ]; then : "${NUM_DEVICES:=2}"; else : "${NUM_DEVICES:=1}"; fi
    waimai_ensure_demo_base "$TRAIN_DATA"
else
    : "${BATCH_SIZE:=1}" "${GRAD_ACCUM:=4}" "${LR:=1e-5}" "${MAX_LENGTH:=1024}" "${GRADIENT_CHECKPOINTING:=true}"
    : "${EVAL_BATCH_SIZE:=8}" "${LOGGING_STEPS:=10}"
fi
: "${EPOCHS:=1}" "${WARMUP_RATIO:=0.03}" "${WEIGHT_DECAY:=0}" "${LR_SCHEDULER:=cosine}" "${PADDING:=dynamic}"
: "${SAVE_STRATEGY:=epoch}" "${EVAL_STRATEGY:=epoch}" "${BF16:=true}" "${SEED:=42}"
if [ "$DEVICE_KIND" = cuda ]; then : "${TF32:=true}"; else : "${TF32:=false}"; fi

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
echo "device: ${DEVICE_KIND} (${DEVICE_BACKEND}); ${BASE_MODEL} -> ${TRAIN_OUTPUT_DIR}; log ${log}"
"${launcher[@]}" train.py \
    --model_name_or_path "$BASE_MODEL" \
    --train_data "$TRAIN_DATA" \
    --eval_data "$EVAL_DATA" \
    --output_dir "$TRAIN_OUTPUT_DIR" \
    --deepspeed "$DS_CONFIG" \
    --bf16 "$BF16" \
    --tf32 "$TF32" \
    --num_train_epochs "$EPOCHS" \
    --per_device_train_batch_size "$BATCH_SIZE" \
    --per_device_eval_batch_size "$EVAL_BATCH_SIZE" \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --gradient_checkpointing "$GRADIENT_CHECKPOINTING" \
    --learning_rate "$LR" \
    --weight_decay "$WEIGHT_DECAY" \
    --warmup_ratio "$WARMUP_RATIO" \
    --lr_scheduler_type "$LR_SCHEDULER" \
    --model_max_length "$MAX_LENGTH" \
    --padding "$PADDING" \
    --save_strategy "$SAVE_STRATEGY" \
    --eval_strategy "$EVAL_STRATEGY" \
    --logging_steps "$LOGGING_STEPS" \
    --seed "$SEED" \
    --resume_from_checkpoint auto \
    "$@" 2>&1 | tee -a "$log"
