#!/usr/bin/env bash
# Compare the base model with the fine-tuned one: the original example table (each model's greedy answer to a few
# eval reviews) plus, over the whole eval file, label-scoring accuracy, per-class precision/recall/F1, macro-F1 and
# confusion matrices of both models, and how often the generated answer is a label word.
#
#   bash run_test.sh                                  # MODEL vs the model that ds_run_bf16.sh trained from it
#   bash run_test.sh --max_samples 200                # extra arguments go to run_test.py (they win); see its --help
#   MODEL=/data/Baichuan2-7B-Base OUTPUT_DIR=/data/run1 bash run_test.sh
#   USE_LORA=true bash run_test.sh                    # MODEL vs the merged model of `USE_LORA=true bash ds_run_bf16.sh`
#   DTYPE=bf16 bash run_test.sh                       # precision: auto (default), bf16, fp16 or fp32 (run_test.py --dtype)
#
# Without a model folder at the default MODEL (models/Baichuan2-7B-Base), or with DEMO=1, it compares the tiny
# demo models that `bash ds_run_bf16.sh` builds and trains; a MODEL you set that does not exist is an error. EVAL_DATA (default data/eval.jsonl) is the eval file, as in
# ds_run_bf16.sh. The prompt template, label words and length limit come from the training run's
# run_config.json unless given as flags. Relative paths are relative to the repository. Results go to eval/ in
# the training run's folder (--output_dir). MODEL must be the base the run was trained from (its run_manifest.json);
# pass --other_base to compare with another one.
set -euo pipefail
cd "$(dirname "$0")"
source tuning/runtime/launch.sh
case "${1:-}" in -h | --help)
    waimai_usage run_test.sh
    echo
    exec "${PYTHON:-python}" run_test.py --help ;;
esac
waimai_setup_device
waimai_select_model

if [ "$DEMO" = 1 ] && [ ! -d "$BASE_MODEL" ]; then
    echo "error: no demo model at ${BASE_MODEL}: run \`bash ds_run_bf16.sh\` first to build and train it" >&2
    exit 2
fi
echo "device: ${DEVICE_KIND} x ${DEVICE_COUNT}; base model ${BASE_MODEL}; tuned model from ${TRAIN_OUTPUT_DIR}"
"${PYTHON:-python}" run_test.py \
    --base_model "$BASE_MODEL" \
    --train_output_dir "$TRAIN_OUTPUT_DIR" \
    --eval_data "${EVAL_DATA:-data/eval.jsonl}" \
    --dtype "${DTYPE:-auto}" \
    "$@"
