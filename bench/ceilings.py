"""What to expect on real hardware: the compute ceiling and the step ceiling of one epoch of Baichuan2-7B.

Both are estimates from datasheet figures; nothing here is measured on the devices named.

Compute ceiling: training FLOPs of one epoch, the original way (every review padded to max_length, logits over the
vocabulary at every position) against ours (each micro-batch padded to its longest review, logits only at the answer
positions). Per token and micro-batch padded to length s:
    6 * (parameters - embedding - output head) + 12 * layers * hidden * s     (weights, attention)
and per position where logits are computed 6 * vocabulary * hidden (the output head). Padding tokens count: they are
computed. Recomputation under gradient checkpointing is not counted, as MFU conventionally does not.

Step ceiling: the fixed cost of an optimizer step under DeepSpeed ZeRO-2 on `devices` devices, which no reduction of
the tokens removes: each device's AdamW update of the parameters it owns (memory-bound: ADAMW_BYTES per parameter at
HBM bandwidth), the bf16 gradient reduce-scatter after every micro-step's backward (ZeRO-2 reduces at every
micro-step, not only at the accumulation boundary) and the all-gather of the updated bf16 parameters, both as a
ring: each device sends (devices - 1) / devices of the 2-byte-per-parameter volume at its link bandwidth.

Epoch estimate: a micro-step takes the longest of its FLOPs at the dense bf16 peak, reading the bf16 weights
WEIGHT_READS times at HBM bandwidth, and its reduce-scatter (DeepSpeed's overlap_comm runs it alongside the
backward pass); an optimizer step adds AdamW and the all-gather. Each term is a lower bound, so the epoch
estimates are lower bounds and their ratio is an estimate of the speedup, not a measurement.
"""

import math
from dataclasses import dataclass

from bench.common import format_duration, format_table
from bench.memory_plan import Shape
from transformers_modify.step_metrics import peak_bf16_flops
from tuning.data.prompt import IGNORE_INDEX

GB = 1e9
ADAMW_BYTES = 16 + 12 + 6  # read fp32 master, gradient, m, v; write master, m, v; bf16 copy of the master (r4 + w2)
WEIGHT_READS = 3  # bf16 weights read per micro-step: forward, recomputed forward (gradient checkpointing), backward


@dataclass(frozen=True)
class Accelerator:
    """Datasheet figures of one device: dense bf16 FLOP/s, HBM bytes/s, device-to-device link bytes/s per direction."""

    name: str
    bf16_flops: float
    hbm_bytes_per_s: float
    link: str
    link_bytes_per_s: float


# Dense bf16 peaks from the training log's table (transformers_modify/step_metrics.py). HBM and link figures as the
# vendors publish them: H100 SXM5 3.35 TB/s HBM3, H200 SXM 4.8 TB/s HBM3e, both NVLink 4 at 900 GB/s per GPU in
# both directions together (450 GB/s each way); Ascend 910B 1.6 TB/s HBM2e and HCCS full mesh of 7 links x 56 GB/s
# = 392 GB/s per NPU (Atlas 800T A2), counted here as 196 GB/s each way. 910B variants differ: check your system's.
DATASHEET = (
    Accelerator("Ascend 910B", peak_bf16_flops("910B"), 1.6e12, "HCCS", 196 * GB),
    Accelerator("H100 SXM", peak_bf16_flops("H100"), 3.35e12, "NVLink 4", 450 * GB),
    Accelerator("H200 SXM", peak_bf16_flops("H200"), 4.8e12, "NVLink 4", 450 * GB),
)


@dataclass(frozen=True)
class MicroBatch:
    """What one forward pass computes: rows x padded length tokens, and logits at `logit_positions` positions."""

    rows: int
    length: int
    logit_positions: int


def micro_batch_flops(shape: Shape, batch: MicroBatch) -> float:
    """Training FLOPs of one micro-batch (the module docstring's formula)."""
    total, _ = shape.parameter_counts()
    head = shape.vocab_size * shape.hidden_size
    body = total - head * (1 if shape.tied_embeddings else 2)
    attention = 12 * shape.num_layers * shape.hidden_size * batch.length
    return batch.rows * batch.length * (6 * body + attention) + batch.logit_positions * 6 * head


@dataclass(frozen=True)
class Recipe:
    """One way to train an epoch: all its micro-batches, and how many each device accumulates per optimizer step."""

    micro_batches: list[MicroBatch]
    accumulation: int

    def flops(self, shape: Shape) -> float:
        return sum(micro_batch_flops(shape, batch) for batch in self.micro_batches)

    def optimizer_steps(self, devices: int) -> int:
        return math.ceil(len(self.micro_batches) / (devices * self.accumulation))

    def samples_per_device_step(self) -> int:
        return self.micro_batches[0].rows * self.accumulation


@dataclass(frozen=True)
class StepCosts:
    """Seconds of the fixed costs on one device: per micro-step and per optimizer step."""

    weight_reads: float
    reduce_scatter: float
    adamw: float
    all_gather: float


def step_costs(shape: Shape, devices: int, accelerator: Accelerator) -> StepCosts:
    total, _ = shape.parameter_counts()
    ring_bytes = (devices - 1) / devices * 2 * total
    return StepCosts(
        weight_reads=WEIGHT_READS * 2 * total / accelerator.hbm_bytes_per_s,
        reduce_scatter=ring_bytes / accelerator.link_bytes_per_s,
        adamw=total / devices * ADAMW_BYTES / accelerator.hbm_bytes_per_s,
        all_gather=ring_bytes / accelerator.link_bytes_per_s,
    )


def epoch_seconds(
    recipe: Recipe, shape: Shape, devices: int, accelerator: Accelerator, tokens: bool = True
) -> float:
    """Estimated epoch time (the devices share the micro-batches and run in step); without `tokens`, fixed costs only."""
    costs = step_costs(shape, devices, accelerator)
    micro_steps = 0.0
    for batch in recipe.micro_batches:
        compute = micro_batch_flops(shape, batch) / accelerator.bf16_flops if tokens else 0.0
        micro_steps += max(compute, costs.weight_reads, costs.reduce_scatter)
    return micro_steps / devices + recipe.optimizer_steps(devices) * (costs.adamw + costs.all_gather)


def ceiling_lines(
    shape: Shape, devices: int, original: Recipe, ours: Recipe, padding_share: float,
    accelerators: tuple[Accelerator, ...] = DATASHEET,
) -> list[str]:
    """The two ceilings and the epoch estimates per accelerator, as report lines."""
    total, _ = shape.parameter_counts()
    original_flops, ours_flops = original.flops(shape), ours.flops(shape)
    steps = ours.optimizer_steps(devices)
    reviews = sum(batch.rows for batch in ours.micro_batches)
    ring_gb = (devices - 1) / devices * 2 * total / GB

    def per_device(recipe: Recipe) -> str:
        return f"{recipe.micro_batches[0].rows} x {recipe.accumulation}"

    lines = [
        f"ceilings: Baichuan2-7B shape ({total:,} parameters, vocabulary {shape.vocab_size:,}) on {devices} devices "
        f"under ZeRO-2, global batch {devices * ours.samples_per_device_step()}: original {per_device(original)} "
        f"per device, ours {per_device(ours)}; one epoch of {reviews:,} reviews = {steps:,} optimizer steps. "
        "ESTIMATES from datasheet figures; nothing below was measured on these devices.",
        f"compute ceiling: one epoch is {original_flops:.3g} FLOP the original way (every review padded to "
        f"{original.micro_batches[0].length}, logits over the vocabulary at every position) and {ours_flops:.3g} "
        f"FLOP ours (micro-batches padded to their longest review, {padding_share:.1%} padding; logits at the "
        f"answer positions only); attention counted as 12 x layers x hidden x padded length per token: "
        f"original / ours = {original_flops / ours_flops:.1f}x",
        f"step ceiling, per device: AdamW over its 1/{devices} share ({total / devices / 1e6:,.0f}M parameters x "
        f"{ADAMW_BYTES} bytes = {total / devices * ADAMW_BYTES / GB:.1f} GB of HBM traffic) and the bf16 parameter "
        f"all-gather ({ring_gb:.1f} GB sent) once per optimizer step; the bf16 gradient reduce-scatter "
        f"({ring_gb:.1f} GB sent) and {WEIGHT_READS} reads of the bf16 weights ({WEIGHT_READS * 2 * total / GB:.1f} "
        f"GB) once per micro-step: {original.accumulation} per step the original way, {ours.accumulation} ours",
        "",
    ]
    header = ["device (datasheet)", "bf16 TFLOP/s", "HBM TB/s", "link GB/s each way", "reduce-scatter",
              "AdamW", "fixed/step orig", "fixed/step ours", "epoch orig", "epoch ours", "speedup", "tokens gone"]
    rows = []
    for accelerator in accelerators:
        costs = step_costs(shape, devices, accelerator)
        original_epoch = epoch_seconds(original, shape, devices, accelerator)
        ours_epoch = epoch_seconds(ours, shape, devices, accelerator)
        original_fixed = epoch_seconds(original, shape, devices, accelerator, tokens=False)
        ours_fixed = epoch_seconds(ours, shape, devices, accelerator, tokens=False)
        rows.append([
            accelerator.name, f"{accelerator.bf16_flops / 1e12:.0f}", f"{accelerator.hbm_bytes_per_s / 1e12:.2f}",
            f"{accelerator.link} {accelerator.link_bytes_per_s / GB:.0f}",
            f"{costs.reduce_scatter * 1e3:.0f} ms", f"{costs.adamw * 1e3:.0f} ms",
            f"{original_fixed / original.optimizer_steps(devices) * 1e3:.0f} ms",
            f"{ours_fixed / steps * 1e3:.0f} ms",
            format_duration(original_epoch), format_duration(ours_epoch),
            f"{original_epoch / ours_epoch:.1f}x", f"{original_epoch / ours_fixed:.1f}x",
        ])
    lines += format_table(header, rows, text_columns=4)
    lines += [
        "",
        "fixed/step: an optimizer step's micro-steps at their fixed cost (the longer of the weight reads and the "
        "reduce-scatter) + AdamW + all-gather. epoch: each micro-step takes the longest of its FLOPs at the bf16 "
        "peak, its weight reads and its reduce-scatter (overlap_comm), each optimizer step adds AdamW and the "
        "all-gather; each term is a lower bound, so speedup (epoch orig / epoch ours) is an estimate. tokens gone: "
        "epoch orig over ours' fixed costs alone, the bound on the speedup once tokens no longer dominate.",
    ]
    return lines


def micro_batch_of(batch: list[dict], padding: str, max_length: int, labels_only: bool) -> MicroBatch:
    """The MicroBatch of encoded examples as the collator pads them, with logits at every position or the answers'."""
    length = max_length if padding == "max_length" else max(len(example["input_ids"]) for example in batch)
    if labels_only:
        positions = sum(label != IGNORE_INDEX for example in batch for label in example["labels"][1:])
    else:
        positions = len(batch) * length
    return MicroBatch(len(batch), length, positions)
