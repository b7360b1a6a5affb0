"""Per-device memory plan for full fine-tuning of Baichuan2-7B under DeepSpeed ZeRO-2 / ZeRO-3, with and without
CPU offload, and for LoRA on one device: model states (DeepSpeed's own estimators for full fine-tuning), activations
with gradient checkpointing, and which setups fit on 16, 24, 32, 64 and 80 GB cards.

Activation formula (bytes per device; b = per-device batch, s = sequence length, h = hidden, i = intermediate,
L = layers, V = vocabulary; bf16 = 2 bytes), for our model's SDPA path:
    checkpoints = L * b*s*h * 2          the bf16 hidden state kept at each layer's input
    layer       = b*s * (24h + 8i)       one layer recomputed during backward; per token it keeps, in bf16, the inputs
                                         of W_pack, o_proj and gate/up (3 * 2h), q, k, v (3 * 2h), the two normalised
                                         hidden states before the RMSNorm weight (2 * 2h), the MLP's gate, up,
                                         silu(gate) and product (4 * 2i), and the two RMSNorm inputs in fp32 (2 * 4h)
                                         (counted from the tensors autograd saves; the fused NPU RMSNorm keeps less)
    logits      = b*t*V * (2 + 4 + 4)    bf16 logits, the fp32 log-softmax kept by the loss, and its fp32 gradient,
                                         at t = s positions, or t = the answer's tokens with --logits-at-labels-only
    head        = V*h * 2                the row-normalised lm_head weight (NormHead) kept for backward

LoRA on one device, no ZeRO (configs/baichuan2_7b_lora.yaml; A = the adapter's parameters, rank r on each target
layer of input width `in`): the frozen weights in bf16 (2 bytes per parameter) and the adapter's fp32 weights,
gradients and AdamW moments (16 bytes per adapter parameter). Its activations are those above (the frozen layers keep
the same tensors under autocast) plus, in the recomputed layer,
    adapters    = b*s * sum(2r + m*in)   the rank-r bf16 output of each A (kept by B) and the dropout mask of each
                  + 2 * A / L            target's input, m bytes per element (1 for the fused dropout of CUDA and
                                         NPUs, 4 on the CPU; 0 without dropout), and autocast's bf16 copies of
                                         the layer's adapter weights

Run from the repository root:  python bench/memory_plan.py   (or python -m bench.memory_plan)
"""

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from deepspeed.runtime.zero.stage3 import (
    estimate_zero3_model_states_mem_needs,
)
from deepspeed.runtime.zero.stage_1_and_2 import (
    estimate_zero2_model_states_mem_needs,
)

from bench.common import (
    SHARED_CSV,
    default_tokenizer,
    display_path,
    format_table,
    require_file,
)
from tuning.data.prompt import LABEL_WORDS, PromptFormat
from tuning.data.waimai_csv import read_rows
from tuning.model.baichuan import BaichuanConfig, BaichuanTokenizer
from tuning.run_layout import read_recipe_file, recipe_file
from tuning.runtime.errors import report_errors
from tuning.train.flags import LORA_LAYERS

GIB = 1024**3
ANSWER_TOKENS = 2  # 积极 / 消极 are one token each with the Baichuan2 vocabulary, + eos
LOGIT_BYTES = 2 + 4 + 4  # bf16 logits + fp32 log-softmax + its fp32 gradient, per position and vocabulary entry
LORA_STATE_BYTES = 4 + 4 + 8  # per adapter parameter: fp32 weight, fp32 gradient, AdamW's two fp32 moments
DROPOUT_MASK_BYTES = 1  # torch's fused dropout (CUDA, NPUs) keeps a bool mask per element

# name -> (ZeRO stage, keyword arguments of DeepSpeed's estimator)
STRATEGIES = {
    "ZeRO-2": (2, {"cpu_offload": False}),
    "ZeRO-2 + offload optimizer": (2, {"cpu_offload": True}),
    "ZeRO-3": (3, {"cpu_offload": False}),
    "ZeRO-3 + offload optimizer": (3, {"cpu_offload": True, "cpu_offload_params": False}),
    "ZeRO-3 + offload optimizer+params": (3, {"cpu_offload": True, "cpu_offload_params": True}),
}


@dataclass(frozen=True)
class Shape:
    """The dimensions that set Baichuan2's parameter count and activation size."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config) -> "Shape":
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            tied_embeddings=config.tie_word_embeddings,
        )

    def linear_widths(self) -> dict[str, tuple[int, int]]:
        """(input, output) width of each linear layer of a decoder layer, by name."""
        h, i = self.hidden_size, self.intermediate_size
        return {"W_pack": (h, 3 * h), "o_proj": (h, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def lora_parameters(self, rank: int, targets: tuple[str, ...]) -> int:
        """Parameters of rank-`rank` adapters on the `targets` of every decoder layer (A: r x in, B: out x r)."""
        widths = self.linear_widths()
        return self.num_layers * sum(rank * sum(widths[target]) for target in targets)

    def parameter_counts(self) -> tuple[int, int]:
        """(all parameters, the largest module's own parameters), as DeepSpeed's `model_to_params` counts them."""
        h, i = self.hidden_size, self.intermediate_size
        embedding = self.vocab_size * h
        layer = 3 * h * h + h * h + 3 * h * i + 2 * h  # W_pack, o_proj, gate/up/down, two RMSNorms
        total = embedding * (1 if self.tied_embeddings else 2) + self.num_layers * layer + h
        return total, max(embedding, 3 * h * h, h * i)


@dataclass(frozen=True)
class SequenceLengths:
    """Prompt + answer + eos lengths in tokens; `target` is the longest answer (label word + eos)."""

    mean: int
    p95: int
    max: int
    target: int
    source: str


@dataclass(frozen=True)
class Activations:
    checkpoints: int
    layer: int
    logits: int
    head: int

    @property
    def total(self) -> int:
        return self.checkpoints + self.layer + self.logits + self.head


@dataclass(frozen=True)
class Plan:
    """Bytes per device: model states per (strategy, devices), activations per (length case, batch)."""

    shape: Shape
    lengths: SequenceLengths
    cases: dict[str, int]  # length case -> tokens
    states: dict[tuple[str, int], tuple[int, int]]  # -> (device bytes, host bytes per node)
    activations: dict[tuple[str, int], Activations]
    padded_case: str  # the `cases` key of the fixed padded length
    logits_at_labels_only: bool
    reserve: int
    lora: "Lora"  # LoRA on one device, no ZeRO
    lora_activations: dict[tuple[str, int], Activations]  # per (length case, batch)

    def total(self, strategy: str, devices: int, case: str, batch: int) -> int:
        return self.states[strategy, devices][0] + self.activations[case, batch].total + self.reserve

    def lora_total(self, case: str, batch: int) -> int:
        return sum(self.lora.states(self.shape)) + self.lora_activations[case, batch].total + self.reserve


@dataclass(frozen=True)
class Lora:
    """The adapter of a LoRA run on one device, and the bytes its dropout keeps per masked element."""

    rank: int
    targets: tuple[str, ...]
    mask_bytes: int = DROPOUT_MASK_BYTES

    def states(self, shape: Shape) -> tuple[int, int]:
        """(frozen bf16 weights, the adapter's weights, gradients and AdamW moments) in bytes."""
        return 2 * shape.parameter_counts()[0], LORA_STATE_BYTES * shape.lora_parameters(self.rank, self.targets)

    def activations(self, shape: Shape, batch: int, seq_len: int, logit_positions: int) -> Activations:
        """The full fine-tuning activations plus the adapters' in the recomputed layer (module docstring)."""
        full = activations(shape, batch, seq_len, logit_positions)
        widths = shape.linear_widths()
        per_token = sum(2 * self.rank + self.mask_bytes * widths[target][0] for target in self.targets)
        weight_copies = 2 * shape.lora_parameters(self.rank, self.targets) // shape.num_layers
        return dataclasses.replace(full, layer=full.layer + batch * seq_len * per_token + weight_copies)


DEFAULT_LORA = Lora(rank=read_recipe_file(recipe_file(lora=True))["lora_rank"], targets=LORA_LAYERS)  # configs/baichuan2_7b_lora.yaml's adapter


def model_states(total: int, largest: int, devices: int, strategy: str) -> tuple[int, int]:
    """(bytes per device, host bytes per node) from DeepSpeed's estimators: bf16 weights, fp32 master + Adam."""
    stage, options = STRATEGIES[strategy]
    if stage == 2:
        host, device = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=devices, **options)
    else:
        host, device, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=devices, **options)
    return device, host


def activations(shape: Shape, batch: int, seq_len: int, logit_positions: int) -> Activations:
    """Activation bytes per device with gradient checkpointing (formula in the module docstring)."""
    tokens = batch * seq_len
    return Activations(
        checkpoints=shape.num_layers * tokens * shape.hidden_size * 2,
        layer=tokens * (24 * shape.hidden_size + 8 * shape.intermediate_size),
        logits=batch * logit_positions * shape.vocab_size * LOGIT_BYTES,
        head=shape.vocab_size * shape.hidden_size * 2,
    )


def make_plan(
    shape: Shape,
    lengths: SequenceLengths,
    devices: list[int],
    batch_sizes: list[int],
    pad_to: int,
    logits_at_labels_only: bool = False,
    reserve_gib: float = 2.0,
    lora: Lora = DEFAULT_LORA,
) -> Plan:
    total, largest = shape.parameter_counts()
    padded_case = f"pad {pad_to}"
    cases = {"mean": lengths.mean, "p95": lengths.p95, "max": lengths.max, padded_case: pad_to}

    def positions(seq_len: int) -> int:
        return lengths.target if logits_at_labels_only else seq_len

    return Plan(
        shape=shape,
        lengths=lengths,
        cases=cases,
        states={(name, n): model_states(total, largest, n, name) for name in STRATEGIES for n in devices},
        activations={
            (case, batch): activations(shape, batch, seq_len, positions(seq_len))
            for case, seq_len in cases.items()
            for batch in batch_sizes
        },
        padded_case=padded_case,
        logits_at_labels_only=logits_at_labels_only,
        reserve=int(reserve_gib * GIB),
        lora=lora,
        lora_activations={
            (case, batch): lora.activations(shape, batch, seq_len, positions(seq_len))
            for case, seq_len in cases.items()
            for batch in batch_sizes
        },
    )


def measure_lengths(csv_path: Path, tokenizer_file: Path, prompt: PromptFormat, max_length: int) -> SequenceLengths:
    """Tokenise every review as training does (prompt + label word + eos) with the real Baichuan2 tokenizer."""
    require_file(csv_path, "--csv", "waimai_10k.csv; or give --seq-lengths MEAN,P95,MAX")
    require_file(tokenizer_file, "--tokenizer", "Baichuan2 tokenizer.model; or give --seq-lengths MEAN,P95,MAX")
    rows, _ = read_rows(csv_path)
    tokenizer = BaichuanTokenizer(vocab_file=str(tokenizer_file))
    lengths = sorted(
        len(prompt.encode_example(tokenizer, row.review, LABEL_WORDS[row.label], max_length).input_ids) for row in rows
    )
    return SequenceLengths(
        mean=math.ceil(sum(lengths) / len(lengths)),
        p95=lengths[math.ceil(0.95 * len(lengths)) - 1],  # nearest rank
        max=lengths[-1],
        target=max(len(prompt.label_ids(tokenizer, word)) + 1 for word in LABEL_WORDS.values()),
        source=f"measured on {len(lengths)} reviews of {display_path(csv_path)} with {display_path(tokenizer_file)}",
    )


def gib(value: int, digits: int = 1) -> str:
    return f"{value / GIB:.{digits}f}"


def smallest_card(total: int, cards: list[int]) -> str:
    """The smallest card that holds `total` bytes, or '-'; a "64 GB" card has 64 GiB (65536 MiB in npu-smi)."""
    fitting = [card for card in sorted(cards) if total <= card * GIB]
    return f"{fitting[0]} GB" if fitting else "-"


def render(plan: Plan, cards: list[int]) -> list[str]:
    shape, lengths = plan.shape, plan.lengths
    total, largest = shape.parameter_counts()
    devices = sorted({n for _, n in plan.states})
    batch_sizes = sorted({batch for _, batch in plan.activations})
    lines = [
        f"Baichuan2-7B shape: vocab {shape.vocab_size}, hidden {shape.hidden_size}, intermediate "
        f"{shape.intermediate_size}, {shape.num_layers} layers, "
        f"{'tied' if shape.tied_embeddings else 'untied'} lm_head; {total:,} parameters (largest module {largest:,})",
        f"Sequence lengths (prompt + answer + eos): mean {lengths.mean}, p95 {lengths.p95}, max {lengths.max} tokens, "
        f"answer {lengths.target} ({lengths.source})",
        f"Logits at {'the answer tokens only' if plan.logits_at_labels_only else 'every position'}; "
        f"reserve {gib(plan.reserve)} GiB per device; GiB = 2^30 bytes",
        "",
        "Model states (bf16 weights, fp32 master weights and AdamW states), GiB per device / host RAM GiB per node, "
        "from DeepSpeed's estimators:",
        "",
    ]
    lines += format_table(
        ["strategy", *[f"{n} device{'s' if n > 1 else ''}" for n in devices]],
        [[name, *[" / ".join(gib(part) for part in plan.states[name, n]) for n in devices]] for name in STRATEGIES],
    )
    lines += ["", "Activations with gradient checkpointing, GiB per device: "
              "checkpoints + one layer + logits + normalised lm_head = total", ""]
    lines += format_table(
        ["length", "tokens", *[f"batch {batch}" for batch in batch_sizes]],
        [
            [case, str(seq_len), *[
                " + ".join(gib(part, 2) for part in (parts.checkpoints, parts.layer, parts.logits, parts.head))
                + f" = {gib(parts.total, 2)}"
                for parts in (plan.activations[case, batch] for batch in batch_sizes)
            ]]
            for case, seq_len in plan.cases.items()
        ],
    )
    workloads = [(case, batch) for batch in batch_sizes for case in ("max", plan.padded_case)]
    lines += ["", "Total GiB per device (model states + activations + reserve) and the smallest of the "
              f"{', '.join(f'{card} GB' for card in sorted(cards))} cards that holds it ('-': none); "
              "'max' is the worst batch under dynamic padding; offload also needs the host RAM above:", ""]
    lines += format_table(
        ["strategy", "devices", *[f"{case}, batch {batch}" for case, batch in workloads]],
        [
            [name, str(n), *[
                f"{gib(need)} ({smallest_card(need, cards)})"
                for need in (plan.total(name, n, case, batch) for case, batch in workloads)
            ]]
            for name in STRATEGIES
            for n in devices
        ],
    )
    return lines + render_lora(plan, cards)


def render_lora(plan: Plan, cards: list[int]) -> list[str]:
    shape, lora = plan.shape, plan.lora
    frozen, adapter = lora.states(shape)
    adapter_parameters = shape.lora_parameters(lora.rank, lora.targets)
    batch_sizes = sorted({batch for _, batch in plan.lora_activations})
    lines = [
        "",
        f"LoRA on one device, no ZeRO (configs/baichuan2_7b_lora.yaml): rank {lora.rank} on "
        f"{', '.join(lora.targets)} of every layer, {adapter_parameters:,} adapter parameters "
        f"({adapter_parameters / shape.parameter_counts()[0]:.2%}); model states: frozen bf16 weights {gib(frozen, 2)} "
        f"+ adapter (fp32 weights, gradients, AdamW moments) {gib(adapter, 2)} = {gib(frozen + adapter, 2)} GiB; "
        f"dropout masks of {lora.mask_bytes} byte per element.",
        "",
        "Total GiB (model states + activations with the adapters' + reserve) and the smallest card that holds it:",
        "",
    ]
    lines += format_table(
        ["length", "tokens", *[f"batch {batch}" for batch in batch_sizes]],
        [
            [case, str(seq_len), *[
                f"{gib(need)} ({smallest_card(need, cards)})"
                for need in (plan.lora_total(case, batch) for batch in batch_sizes)
            ]]
            for case, seq_len in plan.cases.items()
        ],
    )
    return lines


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def lora_targets(text: str) -> tuple[str, ...]:
    names = tuple(text.split(","))
    if not set(names) <= set(LORA_LAYERS) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected different names among {','.join(LORA_LAYERS)}, got {text!r}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Estimate the per-device memory needed to fully fine-tune Baichuan2-7B (bf16, AdamW) with "
        "DeepSpeed ZeRO-2 or ZeRO-3, with and without CPU offload, and to train a LoRA adapter on one device, and "
        "show which setups fit on 16, 24, 32, 64 (Ascend 910B) and 80 GB cards. Full fine-tuning's model states "
        "come from DeepSpeed's estimators; activations assume gradient checkpointing (formula at the top of this "
        "script). Sequence lengths are measured on waimai_10k.csv with the real tokenizer, or taken from "
        "--seq-lengths. Nothing runs on a device.",
    )
    parser.add_argument("--devices", type=int_list, default=[1, 2, 4, 8],
                        help="comma-separated device counts on one node (default: 1,2,4,8)")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 8],
                        help="comma-separated per-device batch sizes (default: 1,8)")
    parser.add_argument("--pad-to", type=int, default=1024,
                        help="fixed padded length to compare with the measured lengths (default: 1024)")
    parser.add_argument("--cards", type=int_list, default=[16, 24, 32, 64, 80],
                        help="comma-separated card sizes in GB as sold, i.e. GiB of device memory "
                        "(default: 16,24,32,64,80)")
    parser.add_argument("--lora-rank", type=int, default=DEFAULT_LORA.rank,
                        help=f"rank of the LoRA adapters (default: {DEFAULT_LORA.rank}, the LoRA recipe's)")
    parser.add_argument("--lora-targets", type=lora_targets, default=DEFAULT_LORA.targets,
                        help=f"comma-separated layers with an adapter (default: {','.join(DEFAULT_LORA.targets)})")
    parser.add_argument("--reserve-gib", type=float, default=2.0,
                        help="GiB per device added for the runtime context, communication buckets and "
                        "fragmentation (default: 2)")
    parser.add_argument("--logits-at-labels-only", action="store_true",
                        help="count logits only at the answer tokens (our model's logits_at_labels_only=True) "
                        "instead of at every position")
    parser.add_argument("--csv", type=Path, default=SHARED_CSV,
                        help=f"waimai_10k.csv to measure sequence lengths on (default: {SHARED_CSV})")
    parser.add_argument("--tokenizer", type=Path, default=default_tokenizer(),
                        help=f"Baichuan2 tokenizer.model to tokenise with (default: {default_tokenizer()})")
    parser.add_argument("--seq-lengths", type=int_list, metavar="MEAN,P95,MAX",
                        help="use these prompt+answer lengths in tokens instead of measuring them (e.g. 25,53,299)")
    args = parser.parse_args(argv)
    if args.seq_lengths is not None and len(args.seq_lengths) != 3:
        parser.error("--seq-lengths needs three numbers: MEAN,P95,MAX")
    if args.pad_to < 1:
        parser.error("--pad-to must be positive")
    if args.reserve_gib < 0:
        parser.error("--reserve-gib must not be negative")
    if args.lora_rank < 1:
        parser.error("--lora-rank must be 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = BaichuanConfig()  # the official Baichuan2-7B shape

    def plan_memory() -> int:
        if args.seq_lengths is not None:
            mean, p95, longest = args.seq_lengths
            lengths = SequenceLengths(mean, p95, longest, ANSWER_TOKENS, "given with --seq-lengths, not measured")
        else:
            lengths = measure_lengths(args.csv, args.tokenizer, PromptFormat.from_config(config), args.pad_to)
        plan = make_plan(Shape.from_config(config), lengths, args.devices, args.batch_sizes, args.pad_to,
                         args.logits_at_labels_only, args.reserve_gib, Lora(args.lora_rank, args.lora_targets))
        print("\n".join(render(plan, args.cards)))
        return 0

    return report_errors(plan_memory)


if __name__ == "__main__":
    sys.exit(main())
