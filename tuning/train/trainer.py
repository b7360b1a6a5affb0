"""The Trainer of train.py: logits only where labels are set, padding counts, label-scoring accuracy in evaluation,
the SHA-256 record of each checkpoint."""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from transformers_modify.step_metrics import StepMetricsCallback
from tuning.eval.metrics import classification_metrics
from tuning.eval.scoring import label_log_probs
from tuning.run_layout import write_checksums
from tuning.runtime.distributed import barrier, global_rank, world_size


@dataclass(frozen=True)
class LabelAccuracy:
    """Accuracy by label scoring: the answer word with the highest total log-probability after each prompt.

    With several processes each scores a strided shard and the predictions are summed across ranks. Every rank
    scores the same number of prompts (a short shard repeats a prompt and drops its result), because under
    ZeRO-3 all ranks must take part in every forward pass.
    """

    prompts: list[list[int]]
    gold: list[str]
    label_words: tuple[str, ...]
    candidates: list[list[int]]
    pad_token_id: int
    batch_size: int

    def __call__(self, model) -> dict[str, float]:
        rank, world = global_rank(), world_size()
        mine = list(range(rank, len(self.prompts), world))
        per_rank = -(-len(self.prompts) // world)
        shard = mine + [mine[-1] if mine else 0] * (per_rank - len(mine))
        scores = label_log_probs(
            model, [self.prompts[index] for index in shard], self.candidates, self.pad_token_id, self.batch_size
        )
        device = next(model.parameters()).device
        choice_plus_one = torch.zeros(len(self.prompts), dtype=torch.long, device=device)
        choice_plus_one[torch.tensor(mine, dtype=torch.long, device=device)] = (
            scores[: len(mine)].argmax(dim=-1).to(device) + 1
        )
        if world > 1:
            dist.all_reduce(choice_plus_one)  # each prompt is scored by exactly one rank
        predicted = [self.label_words[choice - 1] for choice in choice_plus_one.tolist()]
        metrics = classification_metrics(self.gold, predicted, self.label_words)
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


class ChecksumCallback(TrainerCallback):
    """After each checkpoint save, once every process has written its files: the first process records their
    SHA-256 in the checkpoint (run_layout.write_checksums); a resume trusts only a checkpoint that matches it."""

    def on_save(self, args, state, control, **kwargs):
        barrier()
        if state.is_world_process_zero:
            write_checksums(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        return control


class WaimaiTrainer(Trainer):
    """`Trainer` plus: the model's `logits_at_labels_only` forward, token counts of the training batches,
    label-scoring metrics added to every evaluation, the step metrics merged into the training logs, each
    checkpoint's SHA-256 record, and no host synchronisation for the gradient norm between logging steps."""

    def __init__(
        self,
        *args,
        logits_at_labels_only: bool = False,
        label_accuracy: LabelAccuracy | None = None,
        step_metrics: StepMetricsCallback | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.logits_at_labels_only = logits_at_labels_only
        self.label_accuracy = label_accuracy
        self.step_metrics = step_metrics
        self.add_callback(ChecksumCallback())
        if step_metrics is not None:
            self.add_callback(step_metrics)
        self._real_tokens = torch.zeros((), dtype=torch.long, device=self.args.device)
        self._all_tokens = 0
        self._real_tokens_logged = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            mask = inputs["attention_mask"]
            self._real_tokens += mask.sum()  # stays on the device: no host sync per micro-batch
            self._all_tokens += mask.numel()
        if self.logits_at_labels_only:
            inputs = {**inputs, "logits_at_labels_only": True}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _get_grad_norm(self, model, grad_norm=None):
        """DeepSpeed's gradient norm stays a device tensor: the log reads it, only at logging steps.

        transformers reads it with `.item()` at every optimizer step under DeepSpeed, which waits for the device.
        """
        if grad_norm is not None and self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return grad_norm
        return super()._get_grad_norm(model, grad_norm)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.label_accuracy is not None:
            for name, value in self.label_accuracy(self.model).items():
                output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.step_metrics is not None and "loss" in logs:  # a logging step: every process logs its loss
            real_tokens, _ = self.token_totals()
            logs = {**logs, **self.step_metrics.pop_window(real_tokens - self._real_tokens_logged)}
            self._real_tokens_logged = real_tokens
        super().log(logs, start_time)

    def token_totals(self) -> tuple[int, int]:
        """(non-padding, all) tokens of the training batches this run processed, summed over processes."""
        counts = torch.stack([self._real_tokens, torch.tensor(self._all_tokens, device=self._real_tokens.device)])
        if self.args.world_size > 1:
            dist.all_reduce(counts)
        real, total = counts.tolist()
        return real, total
