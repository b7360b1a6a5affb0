"""The training run: recipe and arguments, Trainer, run folder, curves."""
