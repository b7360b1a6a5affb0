"""Flags that predict.py, run_test.py and serve.py share, defined before torch loads."""

import argparse

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


def add_dtype_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto",
        help="precision of the weights and the computation. auto: on an NPU or GPU bf16 where it is native, else "
             "fp16; on the CPU fp32 when the weights in fp32 plus a working margin fit in the memory this process "
             "can take (cgroup limit, MemAvailable), else bf16 with a note. A model that fits in none is refused "
             "before any weight is read")
