# Shared shell logic of ds_run_bf16.sh and run_test.sh. Source it from the repository root, then call:
#   waimai_setup_device      sources CANN's set_env.sh when present; exports DEVICE_KIND (npu|cuda|cpu),
#                            DEVICE_COUNT, DEVICE_BACKEND (hccl|nccl|gloo), DEVICE_BF16 (1|0), DS_ACCELERATOR
#                            (DeepSpeed's accelerator, pinned to DEVICE_KIND) and the accelerator's defaults for
#                            long loads and saves and changing shapes (each kept when already set)
#   waimai_device_include    prints DeepSpeed's `--include` value for the devices that ASCEND_RT_VISIBLE_DEVICES /
#                            CUDA_VISIBLE_DEVICES leave visible (the first NUM_DEVICES of them when set):
#                            `localhost:<ids>`, or with HOSTFILE `<host>:<ids>@<host>:<ids>...`, the same ids on
#                            every machine of the hostfile; prints nothing when the variable is unset
#   waimai_master_port       prints the rendezvous port: MASTER_PORT when set, 29500 with HOSTFILE (every machine
#                            must agree), else a free port of this machine (two runs side by side never collide)
#   waimai_forward_environment FILE
#                            writes DeepSpeed's .deepspeed_env format to FILE: the variables train.py needs that
#                            DeepSpeed's ssh launch would not forward to the other machines, then the user's own
#                            .deepspeed_env lines (which win); exports DS_ENV_FILE=FILE so that DeepSpeed reads it
#   waimai_reject_recipe_variables SCRIPT
#                            a one-line error when an environment variable that used to override the recipe (LR,
#                            EPOCHS, ...) is set, naming the flags to pass after SCRIPT instead
#   waimai_select_model      exports BASE_MODEL, TRAIN_OUTPUT_DIR, DEMO (0|1), LORA (0|1) and DEFAULT_CONFIG: MODEL
#                            and OUTPUT_DIR, or, when the default MODEL folder does not exist (or DEMO=1), the tiny
#                            demo: DEMO_BASE_MODEL and DEMO_OUTPUT_DIR; each unset one defaults to what the recipe
#                            DEFAULT_CONFIG names (tuning/run_layout.py: the 7B's or the demo's recipe, their LoRA
#                            versions with USE_LORA=true); an explicit MODEL that does not exist is an error
#   waimai_ensure_demo_base TRAIN_JSONL
#                            in the demo, builds the tiny base model from TRAIN_JSONL unless it exists; with
#                            NODE_RANK set only node 0 builds it and the other machines wait for it
#   waimai_lock_output_dir DIR
#                            takes DIR's lock for this launch (tuning/runtime/lock.py; a one-line error naming the
#                            holder when another launch has it), keeps it fresh while the script runs and releases it
#                            at exit; exports WAIMAI_LAUNCH_LOCK, its token, with which train.py's first process
#                            takes the lock over
#   waimai_on_exit COMMAND   runs COMMAND (evaluated) when the script exits, after those registered before it
#   waimai_remove_shm_buffers PORT
#                            removes this user's /dev/shm buffers of DeepSpeed's CPU allreduce for PORT, which
#                            DeepSpeed never unlinks (67 MB of memory per process and launch, kept until reboot)
#   waimai_usage SCRIPT      prints SCRIPT's leading comment block (its --help text)
# Each returns non-zero after printing a one-line error. PYTHON picks the interpreter (default: python).
# Arrays that may be empty are expanded as ${a[@]+"${a[@]}"}: bash before 4.4 (CentOS 7) treats "${a[@]}" of an
# empty array as unbound under `set -u`.

WAIMAI_DEMO_BASE_WAIT_S="${WAIMAI_DEMO_BASE_WAIT_S:-60}"

# CANN's set_env.sh: CANN 8.5+ installs to <prefix>/Ascend/cann, older releases to <prefix>/Ascend/ascend-toolkit
# (root: /usr/local, otherwise $HOME); ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME point at a version folder.
waimai_cann_candidates() {
    local home
    for home in "${ASCEND_HOME_PATH:-}" "${ASCEND_TOOLKIT_HOME:-}"; do
        if [ -n "$home" ]; then printf '%s\n' "$home/set_env.sh" "$home/../set_env.sh"; fi
    done
    for home in /usr/local/Ascend "${HOME:-/nonexistent}/Ascend"; do
        printf '%s\n' "$home/cann/set_env.sh" "$home/ascend-toolkit/set_env.sh"
    done
}

waimai_source_cann() {
    local candidates candidate
    mapfile -t candidates < <(waimai_cann_candidates)
    for candidate in ${candidates[@]+"${candidates[@]}"}; do
        if [ -f "$candidate" ]; then
            # CANN's script reads unset variables and runs commands that may fail: source it with errexit,
            # nounset and pipefail off, then restore the caller's options.
            local flags="$-" pipefail=0
            if shopt -qo pipefail; then pipefail=1; fi
            set +o errexit +o nounset +o pipefail
            # shellcheck disable=SC1090
            source "$candidate"
            if [[ "$flags" == *e* ]]; then set -o errexit; fi
            if [[ "$flags" == *u* ]]; then set -o nounset; fi
            if [ "$pipefail" = 1 ]; then set -o pipefail; fi
            return 0
        fi
    done
    return 1
}

waimai_setup_device() {
    if ! waimai_source_cann && [ "${WAIMAI_DEVICE:-}" = npu ]; then
        echo "error: WAIMAI_DEVICE=npu but CANN is not installed: no set_env.sh under /usr/local/Ascend/cann," \
            "\$HOME/Ascend/cann or ascend-toolkit (set ASCEND_HOME_PATH or ASCEND_TOOLKIT_HOME)" >&2
        return 1
    fi
    local detected
    # torch >= 2.5 imports torch_npu on `import torch`; with a broken CANN that import would be a traceback. The
    # probe loads torch_npu itself and turns a failure into a one-line error.
    detected="$(TORCH_DEVICE_BACKEND_AUTOLOAD=0 "${PYTHON:-python}" -m tuning.runtime.devices)" || return 1
    read -r DEVICE_KIND DEVICE_COUNT DEVICE_BACKEND DEVICE_BF16 <<<"$detected"
    export DEVICE_KIND DEVICE_COUNT DEVICE_BACKEND DEVICE_BF16
    export DS_ACCELERATOR="$DEVICE_KIND"  # DeepSpeed would otherwise pick the accelerator by what is installed
    case "$DEVICE_KIND" in
        npu)
            # Every rank loads ~15 GB before the first collective and rank 0 writes ~40 GB per ZeRO-2 checkpoint:
            # HCCL's defaults (120 s to connect, 1800 s per operation) are too short for both.
            export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}"
            export HCCL_EXEC_TIMEOUT="${HCCL_EXEC_TIMEOUT:-3600}"
            export PYTORCH_NPU_ALLOC_CONF="${PYTORCH_NPU_ALLOC_CONF:-expandable_segments:True}" ;;
        cuda)
            export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}" ;;
    esac  # every batch has its own shape: expandable segments keep the allocator from fragmenting
}

waimai_device_include() {
    local variable
    case "$DEVICE_KIND" in
        npu) variable=ASCEND_RT_VISIBLE_DEVICES ;;
        cuda) variable=CUDA_VISIBLE_DEVICES ;;
        *) return 0 ;;
    esac
    local visible="${!variable:-}"
    if [ -z "$visible" ]; then return 0; fi
    if ! [[ "$visible" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
        echo "error: ${variable}=${visible}: expected device numbers such as 4,5,6,7" >&2
        return 1
    fi
    local ids
    IFS=, read -r -a ids <<<"$visible"
    local count="${NUM_DEVICES:-${#ids[@]}}"
    if [ "$count" -gt "${#ids[@]}" ]; then
        echo "error: NUM_DEVICES=${count} but ${variable}=${visible} makes only ${#ids[@]} devices visible" >&2
        return 1
    fi
    local chosen="${ids[*]+${ids[*]:0:$count}}"
    chosen="${chosen// /,}"
    if [ -z "${HOSTFILE:-}" ]; then
        echo "localhost:${chosen}"
        return 0
    fi
    # DeepSpeed numbers each machine's devices 0..slots-1 and would otherwise start ranks on the first ones.
    local include="" host slots _ highest=0 id
    for id in ${ids[@]+"${ids[@]:0:$count}"}; do
        if [ "$id" -gt "$highest" ]; then highest="$id"; fi
    done
    while read -r host slots _; do
        case "$host" in "" | "#"*) continue ;; esac
        slots="${slots#slots=}"
        if ! [[ "$slots" =~ ^[0-9]+$ ]] || [ "$highest" -ge "$slots" ]; then
            echo "error: ${variable}=${visible} but ${HOSTFILE} says \`${host} slots=${slots}\`: slots counts all" \
                "devices of a machine (0..slots-1), so device ${highest} needs slots=$((highest + 1)) or more" >&2
            return 1
        fi
        include="${include:+${include}@}${host}:${chosen}"
    done <"$HOSTFILE"
    echo "$include"
}

waimai_master_port() {
    if [ -n "${MASTER_PORT:-}" ]; then
        echo "$MASTER_PORT"
    elif [ -n "${HOSTFILE:-}" ]; then
        echo 29500
    else
        "${PYTHON:-python}" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
    fi
}

# What train.py reads from the environment besides what DeepSpeed forwards by itself: over ssh (pdsh) it forwards
# only names starting with MLFLOW, PYTHON, MV2, UCX and its accelerator's prefixes (NPU: ASCEND, HCCL, LD_LIBRARY,
# PATH; CUDA: NCCL), plus the lines of its .deepspeed_env file (deepspeed/launcher/runner.py).
WAIMAI_FORWARDED_VARIABLES=(DS_ACCELERATOR WAIMAI_DEVICE WAIMAI_CPU_BF16 BAICHUAN_NPU_FUSED_KERNELS OMP_NUM_THREADS
    PYTORCH_NPU_ALLOC_CONF PYTORCH_CUDA_ALLOC_CONF HCCL_CONNECT_TIMEOUT HCCL_EXEC_TIMEOUT WAIMAI_LAUNCH_LOCK)

waimai_forward_environment() {
    local file="$1" name own="${DS_ENV_FILE:-.deepspeed_env}" place
    : >"$file"
    for name in "${WAIMAI_FORWARDED_VARIABLES[@]}"; do
        if [ -n "${!name+set}" ]; then printf '%s=%s\n' "$name" "${!name}" >>"$file"; fi
    done
    # DeepSpeed reads NAME (DS_ENV_FILE, default .deepspeed_env) in the home folder, then in the current folder; a
    # later line wins, so the user's own entries follow ours.
    local -a places=("$own")
    if [[ "$own" != /* ]]; then places=("${HOME:-/nonexistent}/$own" "./$own"); fi
    for place in "${places[@]}"; do
        if [ -f "$place" ]; then grep '=' "$place" >>"$file" || true; fi
    done
    DS_ENV_FILE="$(cd "$(dirname "$file")" && pwd)/$(basename "$file")"
    export DS_ENV_FILE
}

# The environment variables that once overrode the recipe, each with the train.py flag that replaces it.
WAIMAI_RECIPE_VARIABLES=(LR:learning_rate EPOCHS:num_train_epochs BATCH_SIZE:per_device_train_batch_size
    GLOBAL_BATCH_SIZE:global_batch_size GRAD_ACCUM:gradient_accumulation_steps MAX_LENGTH:model_max_length
    GRADIENT_CHECKPOINTING:gradient_checkpointing EVAL_BATCH_SIZE:per_device_eval_batch_size
    LOGGING_STEPS:logging_steps WARMUP_RATIO:warmup_ratio WEIGHT_DECAY:weight_decay LR_SCHEDULER:lr_scheduler_type
    PADDING:padding SAVE_STRATEGY:save_strategy EVAL_STRATEGY:eval_strategy BF16:bf16 FP16:fp16 TF32:tf32 SEED:seed
    LORA_RANK:lora_rank LORA_ALPHA:lora_alpha LORA_DROPOUT:lora_dropout LORA_TARGET:lora_target)

waimai_reject_recipe_variables() {
    local pair name set_names="" flags=""
    for pair in "${WAIMAI_RECIPE_VARIABLES[@]}"; do
        name="${pair%%:*}"
        if [ -n "${!name:-}" ]; then
            set_names+=" ${name}=${!name}"
            flags+=" --${pair#*:} ${!name}"
        fi
    done
    if [ -n "$set_names" ]; then
        echo "error:${set_names}: hyperparameters are not read from the environment; pass them as flags after the" \
            "script (\`bash $1${flags}\`) or set them in the recipe file (CONFIG)" >&2
        return 2
    fi
}

# USE_LORA as train.py's --use_lora reads it (true/yes/1, false/no/0, any case; unset: false) -> LORA (1|0).
waimai_use_lora() {
    case "${USE_LORA:-}" in
        [Tt][Rr][Uu][Ee] | [Tt] | [Yy][Ee][Ss] | [Yy] | 1) LORA=1 ;;
        [Ff][Aa][Ll][Ss][Ee] | [Ff] | [Nn][Oo] | [Nn] | 0 | "") LORA=0 ;;
        *)
            echo "error: USE_LORA=${USE_LORA}: expected true or false" >&2
            return 2 ;;
    esac
    export LORA
}

# DEFAULT_CONFIG, DEFAULT_BASE_MODEL and DEFAULT_OUTPUT_DIR: the recipe the launchers run and the base model and output
# folder it names, as tuning/run_layout.py reads them from configs/*.yaml (the 7B run, or with --demo the CPU demo;
# USE_LORA=true: the LoRA recipes).
waimai_run_defaults() {
    local defaults
    defaults="$("${PYTHON:-python}" -m tuning.run_layout "$@")" || return 2
    read -r DEFAULT_CONFIG DEFAULT_BASE_MODEL DEFAULT_OUTPUT_DIR <<<"$defaults"
}

waimai_select_model() {
    waimai_use_lora || return
    waimai_run_defaults || return
    local model="${MODEL:-$DEFAULT_BASE_MODEL}"
    if [ -n "${MODEL:-}" ] && [ "${DEMO:-0}" != 1 ] && [ ! -d "$model" ]; then
        echo "error: MODEL=${model}: no such model folder (unset MODEL to run the tiny demo)" >&2
        return 2
    fi
    if [ "${DEMO:-0}" != 1 ] && [ -d "$model" ]; then
        DEMO=0
        BASE_MODEL="$model"
        TRAIN_OUTPUT_DIR="${OUTPUT_DIR:-$DEFAULT_OUTPUT_DIR}"
    else
        local reason="No Baichuan2 model at MODEL=${model}"
        if [ "${DEMO:-0}" = 1 ]; then reason="DEMO=1"; fi
        waimai_run_defaults --demo || return
        DEMO=1
        BASE_MODEL="${DEMO_BASE_MODEL:-$DEFAULT_BASE_MODEL}"
        TRAIN_OUTPUT_DIR="${DEMO_OUTPUT_DIR:-$DEFAULT_OUTPUT_DIR}"
        cat <<EOF
======================================================================
 ${reason}: running the tiny demo instead.
 Base model: ${BASE_MODEL} (random init, ~1.4M parameters, vocabulary
 trained on the training reviews); tuned model: ${TRAIN_OUTPUT_DIR}.
 For the real run put Baichuan2-7B-Base there or set MODEL=<folder>.
======================================================================
EOF
    fi
    export BASE_MODEL TRAIN_OUTPUT_DIR DEMO DEFAULT_CONFIG
}

WAIMAI_EXIT_COMMANDS=()
waimai_on_exit() {
    WAIMAI_EXIT_COMMANDS+=("$1")
    trap 'for command in ${WAIMAI_EXIT_COMMANDS[@]+"${WAIMAI_EXIT_COMMANDS[@]}"}; do eval "$command"; done' EXIT
}

# DeepSpeed's CPU allreduce (csrc/cpu/comm/shm.cpp) names each process's buffer
# deepspeed_allreduce_buffer_<uid>_<master address>_<port>_<rank> and never calls its shared_close.
waimai_remove_shm_buffers() {
    rm -f "/dev/shm/deepspeed_allreduce_buffer_$(id -u)_"*"_${1}_"*
}

waimai_lock_output_dir() {
    local dir="$1"
    WAIMAI_LAUNCH_LOCK="$("${PYTHON:-python}" -m tuning.runtime.lock take "$dir" --pid $$)" || return
    export WAIMAI_LAUNCH_LOCK
    "${PYTHON:-python}" -m tuning.runtime.lock keep "$dir" --token "$WAIMAI_LAUNCH_LOCK" --pid $$ \
        </dev/null >/dev/null 2>&1 &
    waimai_on_exit "\"\${PYTHON:-python}\" -m tuning.runtime.lock release $(printf %q "$dir") --token $WAIMAI_LAUNCH_LOCK"
}

waimai_ensure_demo_base() {
    local train_data="$1"
    if [ "$DEMO" != 1 ] || [ -d "$BASE_MODEL" ]; then
        return 0
    fi
    if [ "${NODE_RANK:-0}" = 0 ]; then
        # The build writes a temporary folder and renames it into place: other machines never see half of it.
        "${PYTHON:-python}" -m tuning.model.tiny --train_data "$train_data" --output_dir "$BASE_MODEL"
        return
    fi
    local waited=0
    while [ ! -d "$BASE_MODEL" ]; do
        if [ "$waited" -ge "$WAIMAI_DEMO_BASE_WAIT_S" ]; then
            echo "error: no demo base model at ${BASE_MODEL} after ${waited} s: node 0 builds it there, so" \
                "DEMO_BASE_MODEL must be on a file system shared by all machines" >&2
            return 2
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

waimai_usage() {
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$1"
}
