"""The bad-input matrix (benchmarks/bad_input_matrix.py) as tests: every parameter of every task, one bad value at
a time, through the engine, the CLI and the studio's HTTP API. Every case ends in a result or a clear one-line
message: no traceback (in the answer or the studio's console), no generic or multi-line message."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bad_input_matrix as matrix  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("layer", ["engine", "cli", "api"])
def test_no_bad_input_gets_a_traceback_or_an_unclear_message(layer):
    counts: Counter = Counter()
    failures: list[str] = []
    {"engine": matrix.run_engine, "cli": matrix.run_cli, "api": matrix.run_api}[layer](counts, failures, False)
    cases = sum(v for k, v in counts.items() if "tracebacks" not in k)
    assert cases >= {"engine": 1000, "cli": 300, "api": 1500}[layer], counts
    assert counts[f"{layer} message"] > cases // 2, counts  # most bad values are refused, with a message
    assert not failures, "\n".join(failures[:20])


def test_console_tracebacks_are_read_to_their_exception_line():
    log = ("ready\nTraceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\n"
           "ValueError: bad\nmore\nTraceback (most recent call last):\n  File \"y.py\", line 2\n"
           "anyio.ClosedResourceError\n")
    assert matrix.console_tracebacks(log) == ["ValueError: bad", "anyio.ClosedResourceError"]
    assert "ClosedResourceError" in matrix.DISCONNECTS and "ValueError" not in matrix.DISCONNECTS


def test_the_classifier_tells_clear_messages_from_unclear_ones():
    from iris.errors import InvalidInputError

    assert matrix.classify(None) == ("ok", "")
    assert matrix.classify(InvalidInputError("steps must be between 1 and 50"), InvalidInputError)[0] == "message"
    assert matrix.classify(KeyError("x"), InvalidInputError)[0] == "traceback"
    assert matrix.classify(Exception("line one\nline two"))[0] == "multi-line"
    assert matrix.classify(Exception("Something went wrong (KeyError)"))[0] == "generic"
    assert matrix.classify(Exception(""))[0] == "generic"
