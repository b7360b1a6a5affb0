"""Fine-tune Baichuan2 on waimai_10k reviews (full parameters; bf16 + DeepSpeed ZeRO); see `python train.py --help`."""

import sys

from waimai.training import main

if __name__ == "__main__":
    sys.exit(main())
