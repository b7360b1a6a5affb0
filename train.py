"""Fine-tune Baichuan2 on waimai_10k reviews: `python train.py [RECIPE.yaml] [--flag value ...]`; see --help."""

import sys

from tuning.train.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
