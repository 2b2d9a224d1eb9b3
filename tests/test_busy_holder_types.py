"""The refusals of a busy run folder (``training.runs.run_busy``) and a busy tune folder (``cli.tune.tune_busy``)
take the lock's holder as ``hold_lock`` hands it: a ``runlock.LockHolder`` (they were typed ``holder: str``), and
name it as ``LockHolder.__str__`` writes it."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from fair_edge.cli.tune import tune_busy
from fair_edge.runlock import LockHolder
from fair_edge.training.runs import run_busy


@pytest.mark.parametrize("busy", [run_busy, tune_busy], ids=["train", "tune"])
def test_a_busy_refusal_takes_and_names_the_lock_holder(busy):
    assert typing.get_type_hints(busy)["holder"] is LockHolder
    text = busy(Path("runs/a"), LockHolder(4242, "fair-edge train"))
    assert "runs/a" in text and "(pid 4242, fair-edge train)" in text, text
