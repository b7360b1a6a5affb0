"""Progress lines of a long scoring pass (tuning/eval/progress.py): the count and the time left, not a bar."""

import io
import re

from tuning.eval.progress import _duration, reported


def test_each_line_counts_reviews_and_estimates_the_time_left():
    stream = io.StringIO()
    batches = [[0, 1], [2, 3], [4]]
    assert list(reported(batches, "label scoring", every_s=0, stream=stream)) == batches
    lines = stream.getvalue().splitlines()
    assert [re.sub(r"\d+ s", "N s", line) for line in lines] == [
        "label scoring: 2/5 reviews, N s left",
        "label scoring: 4/5 reviews, N s left",
        "label scoring: 5 reviews in N s",
    ]


def test_nothing_is_printed_when_disabled_or_between_intervals():
    stream = io.StringIO()
    list(reported([[0], [1]], "generation", enabled=False, every_s=0, stream=stream))
    assert stream.getvalue() == ""
    list(reported([[0], [1]], "generation", every_s=3600, stream=stream))
    assert stream.getvalue().splitlines() == [line for line in stream.getvalue().splitlines() if " in " in line]


def test_durations_read_naturally():
    assert [_duration(s) for s in (40.4, 185, 7800)] == ["40 s", "3 min 5 s", "2 h 10 min"]
