"""The note a rising training loss gets at the start of a run (lit_lora/callbacks/loss_trend.py)."""

from __future__ import annotations

import pytest

from lit_lora.callbacks.loss_trend import rising_note


@pytest.mark.parametrize("means, said", [
    ([5.0, 4.0, 3.0], False),
    ([5.0, 5.1, 5.04], False),  # within 1% of the first: noise
    ([5.0, 4.9, 5.06], True),
    ([float("nan"), 5.0, 6.0], False),  # a non-finite loss stops the run itself (callbacks.graceful_stop)
])
def test_rising_note(means, said):
    note = rising_note(means, 30, 1e-3, 2e-3)
    assert (note is not None) == said
    if said:
        assert note == ("lit_lora: the training loss rose over the first 30 steps (5.0000 -> 5.0600, first and last "
                        "of 3 logging intervals) at learning rate 0.001 (peak 0.002); if it keeps rising, lower "
                        "--model.learning_rate")
