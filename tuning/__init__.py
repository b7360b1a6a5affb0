"""The fine-tuning recipe as a package whose subpackages follow the pipeline (see docs/architecture.md).

- `tuning.data`: the waimai_10k CSV, the prompt, encoding and collation;
- `tuning.model`: our Baichuan2 code (Baichuan2-7B/) loaded and registered, and the tiny demo model;
- `tuning.train`: the recipe and its arguments, the Trainer, the run folder (manifest, checkpoints, resume);
- `tuning.eval`: label scoring, generation, metrics and reports;
- `tuning.runtime`: devices, distributed helpers, errors, file I/O and command-line pieces.
"""
