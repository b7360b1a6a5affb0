"""Training throughput of the original recipe against ours, side by side on one machine, one model, the same reviews.

The headline compares the same optimisation: ours takes the original's 4 samples per optimizer step in one pass
instead of four, as do its ablations (ours without one change each); ours-larger-batch is a hyperparameter change. The
last two lines are `speedup_same_optimization: <ratio>` and `speedup_vs_original: <the same ratio>`. What to expect
of the 7B on 8 devices is estimated in bench/RESULTS.md, with the arithmetic.

Each configuration runs in a fresh process (nothing carries over between them, and the memory peak is its own),
round after round in rotating order, so that load from other programs spreads over all of them.

Run from the repository root:  python bench/train_throughput.py   (or python -m bench.train_throughput)
"""

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from bench.common import (
    default_data,
    default_tokenizer,
    display_path,
    format_bytes,
    format_duration,
    format_table,
    header_lines,
    split_jsonl,
)
from transformers_modify.step_metrics import peak_bf16_flops, training_flops_per_token
from tuning.data.collate import PaddingCollator
from tuning.data.encode import load_split
from tuning.data.prompt import IGNORE_INDEX, PromptFormat
from tuning.model.baichuan import (
    BaichuanConfig,
    BaichuanForCausalLM,
    BaichuanTokenizer,
    attention_implementation,
    tiny_config,
)
from tuning.model.tiny import ASSISTANT_TOKEN, USER_TOKEN
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.devices import (
    Device,
    compute_dtype,
    detect_device,
    peak_memory_bytes,
    prepare_device,
    reset_peak_memory,
    timed,
)
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import write_json

# Model shapes; all keep the tokenizer's vocabulary (125,696 rows for Baichuan2), which is what makes
# full-vocabulary logits expensive. "cpu" is tiny_config's shape, "7b" is Baichuan2-7B's.
PRESETS = {
    "cpu": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4),
    "1b": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=12, num_attention_heads=16),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
}
LEARNING_RATE = 1e-5  # the recipe's; the value does not change the speed
MAX_GRAD_NORM = 1.0  # the Trainer's default clipping


@dataclass(frozen=True)
class TrainSetup:
    """One way to train: how batches are padded and formed, and where logits are computed."""

    name: str
    padding: str  # "max_length" (pad to --max_length) or "dynamic" (pad to the batch's longest)
    batch_size: int  # samples per forward pass
    accumulation: int  # forward passes per optimizer update
    group_by_length: bool  # LengthGroupedSampler, as the Trainer's group_by_length; else random order
    logits_at_labels_only: bool  # the model's logits_at_labels_only forward kwarg

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.accumulation

    def describe(self) -> list[str]:
        return [
            self.padding,
            f"{self.batch_size}x{self.accumulation}",
            "yes" if self.group_by_length else "no",
            "labels" if self.logits_at_labels_only else "all",
        ]


def train_setups(larger_batch: int) -> dict[str, TrainSetup]:
    """The original recipe; ours with the same samples per optimizer step (one pass instead of four); ours without
    each of its changes (the ablations, all the same optimisation); and ours with `larger_batch` samples per step,
    a hyperparameter change (fewer optimizer steps per epoch)."""
    original = TrainSetup("original", "max_length", 1, 4, False, False)
    ours = TrainSetup("ours", "dynamic", original.samples_per_step, 1, True, True)
    ablations = [
        replace(ours, name="ours-no-dynamic-pad", padding="max_length", group_by_length=False),
        replace(ours, name="ours-no-grouping", group_by_length=False),
        replace(ours, name="ours-no-label-logits", logits_at_labels_only=False),
        replace(ours, name="ours-accumulated", batch_size=original.batch_size, accumulation=original.accumulation),
    ]
    larger = replace(ours, name="ours-larger-batch", batch_size=larger_batch)
    return {setup.name: setup for setup in (original, *ablations, larger, ours)}


def model_config(preset: str, layers: int | None, tokenizer: BaichuanTokenizer, max_length: int) -> BaichuanConfig:
    """The preset's Baichuan2 shape over the tokenizer's vocabulary and chat tokens."""
    user_id, assistant_id = tokenizer.convert_tokens_to_ids([USER_TOKEN, ASSISTANT_TOKEN])
    if tokenizer.unk_token_id in (user_id, assistant_id):
        raise DataError(f"--tokenizer {tokenizer.vocab_file}: has no {USER_TOKEN}/{ASSISTANT_TOKEN} chat tokens")
    shape = dict(PRESETS[preset])
    if layers is not None:
        shape["num_hidden_layers"] = layers
    return tiny_config(
        tokenizer.vocab_size, user_id, assistant_id,
        max_position_embeddings=max_length, model_max_length=max_length, **shape,
    )


def epoch_steps(lengths: list[int], setup: TrainSetup, seed: int) -> list[list[list[int]]]:
    """One epoch in the Trainer's order: optimizer steps -> micro-batches -> example indices; the last may be short."""
    generator = torch.Generator().manual_seed(seed)
    if setup.group_by_length:
        sampler = LengthGroupedSampler(setup.batch_size * setup.accumulation, lengths=lengths, generator=generator)
        order = list(sampler)
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    micro = [order[start : start + setup.batch_size] for start in range(0, len(order), setup.batch_size)]
    return [micro[start : start + setup.accumulation] for start in range(0, len(micro), setup.accumulation)]


def collated_tokens(batch: list[dict], collator: PaddingCollator) -> tuple[int, int]:
    """(real, all) tokens of a micro-batch as the collator pads it."""
    mask = collator(batch)["attention_mask"]
    return int(mask.sum()), mask.numel()


def pick_steps(steps: list[list[list]], cost: list[int], count: int, rounds: int) -> list[list[int]]:
    """`count` full steps per round at evenly spaced quantiles of `cost`, dealt out in turn to the rounds.

    Together the rounds' steps span the epoch from its cheapest to its most expensive steps, so a few timed
    steps stand for the whole epoch.
    """
    full = [index for index, step in enumerate(steps) if len(step) == len(steps[0]) and len(step[-1]) == len(step[0])]
    total = count * rounds
    if len(full) < total:
        raise DataError(f"the data makes {len(full)} full optimizer steps; --steps x --rounds needs {total}")
    ranked = sorted(full, key=lambda index: cost[index])
    chosen = [ranked[int((k + 0.5) * len(ranked) / total)] for k in range(total)]
    return [chosen[round_index::rounds] for round_index in range(rounds)]


@dataclass
class Measurement:
    """What the timed steps of one configuration added up to, over the rounds."""

    seconds: float = 0.0
    samples: int = 0
    real_tokens: int = 0
    flops: float = 0.0
    peak_memory: int | None = None
    per_round: list[float] = field(default_factory=list)  # samples/s of each round
    peak_flops: float | None = None
    parameters: int = 0

    def add(self, result: dict) -> None:
        self.seconds += result["seconds"]
        self.samples += result["samples"]
        self.real_tokens += result["real_tokens"]
        self.flops += result["flops"]
        self.per_round.append(result["samples"] / result["seconds"])
        if result["peak_memory"] is not None:
            self.peak_memory = max(self.peak_memory or 0, result["peak_memory"])
        self.peak_flops = result["peak_flops"]
        self.parameters = result["parameters"]

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds


# ---- the worker: one configuration, one round, in its own process ----


def rss_bytes(field: str) -> int | None:
    """VmRSS (now) or VmHWM (peak) of this process from /proc; None where there is no /proc (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_memory_peak(device: Device) -> int | None:
    """Start a new memory peak; its baseline: resident memory on the CPU (None if unknown), 0 on accelerators."""
    if device.kind != "cpu":
        reset_peak_memory(device)
        return 0
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")  # resets VmHWM, the peak resident set size, to the current one
    except OSError:
        return None
    return rss_bytes("VmRSS")


def memory_peak(device: Device, baseline: int | None) -> int | None:
    """Peak device memory allocated (accelerators), or peak resident memory growth over `baseline` (CPU)."""
    if device.kind != "cpu":
        return peak_memory_bytes(device)
    peak = rss_bytes("VmHWM")
    return None if baseline is None or peak is None else peak - baseline


def build_model(config: BaichuanConfig, device: Device, dtype: torch.dtype, checkpointing: bool) -> BaichuanForCausalLM:
    """Random init directly on the device, in the compute dtype."""
    with torch.device(device.torch_device()):
        model = BaichuanForCausalLM._from_config(
            config, dtype=dtype, attn_implementation=attention_implementation(device, dtype)
        )
    model.config.use_cache = False
    if checkpointing:
        model.activation_checkpointing_enable()
    return model.train()


def train_step(model, optimizer, collator, labels_only: bool, device: torch.device, micro_batches: list[list[dict]]):
    """One optimizer update as the Trainer does it: loss summed over label tokens / the step's label tokens."""
    num_items = sum(
        sum(label != IGNORE_INDEX for label in example["labels"][1:]) for batch in micro_batches for example in batch
    )
    for batch in micro_batches:
        inputs = {name: tensor.to(device) for name, tensor in collator(batch).items()}
        model(**inputs, logits_at_labels_only=labels_only, num_items_in_batch=num_items).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_worker(plan_file: Path, result_file: Path) -> None:
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    setup = TrainSetup(**plan["setup"])
    device = detect_device()
    prepare_device(device)
    dtype = compute_dtype(device, want_bf16=not plan["fp32"])
    torch.manual_seed(plan["seed"])
    config = BaichuanConfig.from_dict(plan["config"])
    model = build_model(config, device, dtype, plan["gradient_checkpointing"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0, fused=device.kind != "npu")
    collator = PaddingCollator(config.pad_token_id, setup.padding, plan["max_length"])

    def step(micro_batches: list[list[dict]]) -> None:
        train_step(model, optimizer, collator, setup.logits_at_labels_only, device.torch_device(), micro_batches)

    baseline = reset_memory_peak(device)
    step([plan["warmup"]])
    _, seconds = timed(device, lambda: [step(micro_batches) for micro_batches in plan["steps"]])
    samples = [example for micro_batches in plan["steps"] for batch in micro_batches for example in batch]
    flops_per_token = training_flops_per_token(model)
    write_json(result_file, {
        "seconds": seconds,
        "samples": len(samples),
        "real_tokens": sum(len(example["input_ids"]) for example in samples),
        "flops": sum(len(example["input_ids"]) * flops_per_token(len(example["input_ids"])) for example in samples),
        "peak_memory": memory_peak(device, baseline),
        "peak_flops": peak_bf16_flops(device.name()),
        "parameters": model.num_parameters(),
    })


# ---- the driver ----


class WorkerError(ChildProcessError):
    """A configuration's process failed (for example out of memory): report_errors prints it, exit code 1."""


def run_in_fresh_process(plan: dict, workdir: Path) -> dict:
    plan_file, result_file = workdir / "plan.json", workdir / "result.json"
    write_json(plan_file, plan)
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(plan_file), str(result_file)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0 or not result_file.is_file():
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {completed.returncode}"
        raise WorkerError(f"configuration {plan['setup']['name']} failed: {reason}")
    return json.loads(result_file.read_text(encoding="utf-8"))


def plan_rounds(
    setup: TrainSetup, features: list[dict], lengths: list[int], args: argparse.Namespace, common: dict
) -> tuple[list[dict], float]:
    """Each round's worker plan for `setup`, and the share of padding over its whole epoch.

    The epoch is collated exactly as training collates it; the warm-up is its widest micro-batch.
    """
    collator = PaddingCollator(common["config"]["pad_token_id"], setup.padding, args.max_length)
    order = epoch_steps(lengths, setup, args.seed)
    steps = [[[features[index] for index in batch] for batch in step] for step in order]
    tokens = [[collated_tokens(batch, collator) for batch in step] for step in steps]
    real = sum(count for step in tokens for count, _ in step)
    cost = [sum(padded for _, padded in step) for step in tokens]
    widest = max(
        ((batch, padded) for step, step_tokens in zip(steps, tokens) for batch, (_, padded) in zip(step, step_tokens)),
        key=lambda pair: pair[1],
    )[0]
    plans = [
        {**common, "setup": asdict(setup), "warmup": widest, "steps": [steps[index] for index in chosen]}
        for chosen in pick_steps(steps, cost, args.steps, args.rounds)
    ]
    return plans, 1 - real / sum(cost)


def benchmark(args: argparse.Namespace, setups: list[TrainSetup]) -> list[str]:
    """Measure every setup; return the report's lines."""
    if not args.tokenizer.is_file():
        raise DataError(f"--tokenizer {args.tokenizer}: file not found (the Baichuan2 tokenizer.model)")
    tokenizer = BaichuanTokenizer(vocab_file=str(args.tokenizer))
    config = model_config(args.preset, args.layers, tokenizer, args.max_length)
    prompt_format = PromptFormat.from_config(config)
    device = detect_device()
    dtype = compute_dtype(device, want_bf16=not args.fp32)
    for line in header_lines(device, dtype):
        print(line, flush=True)

    with tempfile.TemporaryDirectory(prefix="train_throughput.") as workdir:
        workdir = Path(workdir)
        train_file = split_jsonl(args.data, "train", workdir)
        examples = load_split(train_file, tokenizer, prompt_format, args.max_length).examples
        lengths = [len(example.input_ids) for example in examples]

        features = [{"input_ids": example.input_ids, "labels": example.labels} for example in examples]
        common = {
            "config": config.to_dict(),
            "max_length": args.max_length,
            "fp32": args.fp32,
            "gradient_checkpointing": args.gradient_checkpointing,
            "seed": args.seed,
        }
        plans, padding_share = {}, {}
        for setup in setups:
            plans[setup.name], padding_share[setup.name] = plan_rounds(setup, features, lengths, args, common)

        measured = {setup.name: Measurement() for setup in setups}
        for round_index in range(args.rounds):
            shift = round_index % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                result = run_in_fresh_process(plans[setup.name][round_index], workdir)
                measured[setup.name].add(result)
                print(f"round {round_index + 1}/{args.rounds}  {setup.name}: "
                      f"{result['samples'] / result['seconds']:.2f} samples/s", file=sys.stderr, flush=True)
    return report(args, config, device, setups, measured, padding_share, lengths)


def report(
    args: argparse.Namespace,
    config: BaichuanConfig,
    device: Device,
    setups: list[TrainSetup],
    measured: dict[str, Measurement],
    padding_share: dict[str, float],
    lengths: list[int],
) -> list[str]:
    """The table, the ratios and, last, `speedup_same_optimization` and `speedup_vs_original`."""
    original, ours = measured["original"], measured["ours"]
    original_step = next(setup for setup in setups if setup.name == "original").samples_per_step
    memory_what = ("peak device memory allocated" if device.kind != "cpu"
                   else "peak resident memory growth above the loaded model (Linux VmHWM, reset before warm-up)")
    lines = [
        f"model:    Baichuan2 architecture, random init, preset {args.preset}: hidden {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, vocabulary {config.vocab_size:,} "
        f"({original.parameters / 1e6:,.1f}M parameters), gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}, torch AdamW",
        f"data:     {len(lengths):,} training reviews from {display_path(args.data)}; tokens per sample: mean "
        f"{sum(lengths) / len(lengths):.1f}, max {max(lengths)} (max_length {args.max_length})",
        f"timing:   {args.rounds} round(s); per round and configuration {args.steps} timed optimizer step(s) in a "
        "fresh process, after one untimed update on the epoch's widest batch; the timed steps are spread over the "
        "epoch's range of step costs",
        f"memory:   {memory_what}",
        f"epoch:    projected time of one {args.epoch_reviews:,}-review epoch at the measured samples/s",
        f"same optimisation: {original_step} samples per optimizer step as the original (batch = per pass x "
        "accumulation), so the same number of steps and the same learning-rate schedule; 'no' marks a "
        "hyperparameter change",
        "",
    ]
    header = ["configuration", "padding", "batch", "grouped", "logits", "same opt", "samples/s", "real tok/s",
              "padding", "epoch", "peak mem", "vs original", "ours faster by"]
    show_mfu = any(measurement.peak_flops for measurement in measured.values())
    if show_mfu:
        header.append("MFU")
    rows = []
    for setup in setups:
        m = measured[setup.name]
        row = [setup.name, *setup.describe(), "yes" if setup.samples_per_step == original_step else "no",
               f"{m.samples_per_s:.2f}", f"{m.real_tokens / m.seconds:,.0f}",
               f"{padding_share[setup.name]:.1%}", format_duration(args.epoch_reviews / m.samples_per_s),
               format_bytes(m.peak_memory), f"{m.samples_per_s / original.samples_per_s:.2f}x",
               f"{ours.samples_per_s / m.samples_per_s:.2f}x"]
        if show_mfu:
            row.append(f"{m.flops / m.seconds / m.peak_flops:.1%}" if m.peak_flops else "n/a")
        rows.append(row)
    lines += format_table(header, rows, text_columns=6)
    per_round = [o / r for o, r in zip(ours.per_round, original.per_round)]
    speedup = ours.samples_per_s / original.samples_per_s
    lines += [
        "",
        "vs original: samples/s over the original's; ours faster by: ours' samples/s over this configuration's "
        "(what removing that change costs).",
    ]
    for setup in setups:
        if setup.samples_per_step != original_step:
            factor = setup.samples_per_step / original_step
            lines.append(
                f"{setup.name} is a hyperparameter change, not the same optimisation: {setup.samples_per_step} "
                f"samples per optimizer step, so {factor:g}x fewer steps per epoch and another learning-rate "
                f"schedule; its {measured[setup.name].samples_per_s / original.samples_per_s:.2f}x over the "
                "original is not the headline."
            )
    lines.append("speedup per round (ours / original, same optimisation): "
                 + ", ".join(f"{ratio:.2f}" for ratio in per_round))
    if original.peak_memory and ours.peak_memory:
        lines.append(f"peak memory original / ours: {original.peak_memory / ours.peak_memory:.2f}")
    if show_mfu:
        lines.append(f"MFU: model FLOPs of the real tokens per second over the device's dense bf16 peak of "
                     f"{original.peak_flops / 1e12:.0f} TFLOP/s; per token 6 x the parameters without the input "
                     "embedding + 12 x layers x hidden x sequence length (transformers_modify/step_metrics.py, as in "
                     "the training log), so the output head counts at every token even where ours skips it")
    lines += ["", f"speedup_same_optimization: {speedup:.2f}", f"speedup_vs_original: {speedup:.2f}"]
    return lines


def setup_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = ",".join(train_setups(16))
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--preset", choices=PRESETS, default="cpu",
                        help="model shape: cpu = hidden 128, 2 layers (a few minutes on 2 CPU cores); 1b = hidden "
                             "2048, 12 layers (1.1B parameters); 7b = Baichuan2-7B's shape (7.5B parameters: bf16 "
                             "weights, gradients and AdamW states take about 60 GB: an 80 GB card, or fewer --layers)")
    parser.add_argument("--layers", type=whole_number(), default=None,
                        help="number of layers instead of the preset's, e.g. the 7b shape with fewer layers")
    parser.add_argument("--tokenizer", type=Path, default=default_tokenizer(),
                        help="Baichuan2's tokenizer.model (its vocabulary sets the model's); default: "
                             "$SHARED_DIR/baichuan2 (or ../shared/baichuan2), else the 7B recipe's model folder")
    parser.add_argument("--data", type=Path, default=default_data("train"),
                        help="training reviews: train.jsonl from make_data.py, or waimai_10k.csv (split as "
                             "make_data.py does); by default data/train.jsonl, else $SHARED_DIR/data/waimai_10k.csv")
    parser.add_argument("--configs", type=setup_names, default=names,
                        help="comma-separated configurations to run (original and ours always are)")
    parser.add_argument("--larger_batch", type=whole_number(), default=16,
                        help="ours-larger-batch: samples per forward pass and optimizer step (a hyperparameter "
                             "change: fewer optimizer steps than the original's 4 per step)")
    parser.add_argument("--steps", type=whole_number(), default=1,
                        help="timed optimizer steps per configuration and round")
    parser.add_argument("--rounds", type=whole_number(), default=3,
                        help="rounds; each runs every configuration once, in rotating order")
    parser.add_argument("--max_length", type=whole_number(), default=1024,
                        help="the original's padded length; longer reviews are truncated, as in training")
    parser.add_argument("--epoch_reviews", type=whole_number(), default=10000,
                        help="reviews in the epoch whose duration is projected")
    parser.add_argument("--seed", type=int, default=42, help="seed of the sample order and of the random weights")
    parser.add_argument("--fp32", action="store_true", help="compute in fp32 even on a device with native bf16")
    parser.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="recompute activations in backward, as the recipe does")
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("PLAN", "RESULT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def selected_setups(args: argparse.Namespace) -> list[TrainSetup]:
    setups = train_setups(args.larger_batch)
    wanted = set(args.configs) | {"original", "ours"}
    unknown = sorted(wanted - set(setups))
    if unknown:
        raise DataError(f"--configs: unknown configuration(s) {', '.join(unknown)}; choose among {', '.join(setups)}")
    return [setup for name, setup in setups.items() if name in wanted]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(*args.worker)
        return 0

    def measure() -> int:
        print("\n".join(benchmark(args, selected_setups(args))))
        return 0

    return report_errors(measure)


if __name__ == "__main__":
    sys.exit(main())
