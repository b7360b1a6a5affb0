"""The one error type for bad user input, and the one place that turns it into `error: ...` and an exit code."""

import sys
from collections.abc import Callable


class DataError(ValueError):
    """Bad user input; the message is one line naming the file, row or flag."""


def report_errors(work: Callable[[], int], print_here: bool = True) -> int:
    """Run `work`; a DataError becomes `error: ...` and exit code 2, an OSError exit code 1.

    `print_here=False` keeps the exit code but prints nothing (the other processes of a launch on one machine).
    """
    try:
        return work()
    except DataError as error:
        code = 2
        message = str(error)
    except OSError as error:
        code = 1
        message = str(error)
    if print_here:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return code
