"""The one progress view a job shows: its figures, a line every few seconds outside a terminal,
one line redrawn in place in a terminal, and nothing at all unless the CLI turned it on."""

from __future__ import annotations

import io

from varireal_ray import progress
from varireal_ray.progress import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_outside_a_terminal_a_line_every_few_seconds_with_the_figures():
    out, clock = io.StringIO(), Clock()
    with Progress("generate, round 0", total=96, unit="items", stream=out, every_s=10, enabled=True, clock=clock) as p:
        clock.now += 4
        p.update(done=8)  # 4 s after the first line: not yet
        clock.now += 6
        p.update(done=8, errors=1)  # 10 s: a line
        clock.now += 30
        p.update(done=80)
    lines = out.getvalue().splitlines()
    assert lines == [
        "generate, round 0: 0/96 items (0%), 0.00 items/s, 0 errors, 0s",
        "generate, round 0: 16/96 items (17%), 1.60 items/s, 50s left, 1 error, 10s",
        "generate, round 0: 96/96 items (100%), 2.40 items/s, 1 error, 40s",  # due; the close adds no copy
    ]
    out, clock = io.StringIO(), Clock()
    with Progress("masks", total=4, stream=out, every_s=10, enabled=True, clock=clock) as p:
        clock.now += 2
        p.update(done=4)
    assert out.getvalue().splitlines()[-1] == "masks: 4/4 items (100%), 2.00 items/s, 0 errors, 2s"  # the close shows it


def test_in_a_terminal_one_line_redrawn_in_place():
    out, clock = Terminal(), Clock()
    with Progress("train", total=4, unit="trials", stream=out, enabled=True, clock=clock) as p:
        clock.now += 90
        p.update(done=1)
        clock.now += 3600
        p.update(done=1, errors=1)
    text = out.getvalue()
    assert text.count("\r\033[K") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "train: 1/4 trials (25%), 0.01 trials/s, 4m30s left, 0 errors, 1m30s" in text
    assert text.endswith("train: 2/4 trials (50%), 0.00 trials/s, 1h01m left, 1 error, 1h01m\n")


def test_silent_unless_the_cli_turned_views_on():
    out = io.StringIO()
    with Progress("generate", total=3, stream=out) as p:
        p.update(done=3)
    assert out.getvalue() == ""
    progress.enable()
    try:
        with Progress("generate", total=3, stream=out) as p:
            p.update(done=3)
    finally:
        progress.enable(False)
    assert out.getvalue().splitlines()[-1].startswith("generate: 3/3 items (100%)")
