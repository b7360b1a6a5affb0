import argparse

import pytest

from tuning.runtime.cli import open_fraction, whole_number
from tuning.runtime.errors import DataError, report_errors


def test_whole_number_checks_the_minimum():
    assert whole_number(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
        whole_number()("0")
    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        whole_number()("1.5")


def test_open_fraction():
    assert open_fraction("0.2") == 0.2
    for text in ("0", "1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            open_fraction(text)


def test_report_errors_turns_bad_input_into_one_line_and_exit_2(capsys):
    def bad() -> int:
        raise DataError("data/x.jsonl:3: missing key(s) label")

    assert report_errors(bad) == 2
    assert capsys.readouterr().err == "error: data/x.jsonl:3: missing key(s) label\n"
    assert report_errors(lambda: 0) == 0
