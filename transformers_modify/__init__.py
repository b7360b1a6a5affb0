"""Runtime equivalents of the original recipe's patched transformers files; site-packages is never edited.

- `versions`: checks of the pinned stack that say what to install (the original deleted transformers' checks).
- `training_args`: precision and device adjustments of TrainingArguments per device kind (the original patched
  training_args.py), applied when training starts, never while parsing flags.
- `step_metrics`: a Trainer callback logging step time, tokens/s and MFU (the original timed steps in trainer.py).

This package imports nothing from the recipe package `tuning`: it takes plain values and raises ValueError.
NPU RNG state in checkpoints, NPU bf16 detection and NPU device selection are in transformers 5.24 and
accelerate 1.15 already, so nothing here repeats them.
"""
