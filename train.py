"""Fine-tune Baichuan2 on waimai_10k reviews: `python train.py [RECIPE.yaml] [--flag value ...]`; see --help."""

import sys

from tuning.train.flags import check_flags

if __name__ == "__main__":
    check_flags(sys.argv[1:])  # --help and flag errors answer here, before torch, transformers and DeepSpeed load
    from tuning.train.run import main

    sys.exit(main(sys.argv[1:]))
