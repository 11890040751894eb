"""What the worker measures for ETAs: the periods of steady iterations per shape, nothing else."""

from __future__ import annotations

import pytest

from inference.engine.rates import IterationRates
from inference.protocol import StepRate

SHAPE = ("tiny", 256, 256, 3)


def test_no_rate_before_a_steady_iteration_has_ended() -> None:
    rates = IterationRates("cpu")
    assert rates.rate(SHAPE) is None
    rates.iteration_started(0.0)
    rates.iteration_ran(SHAPE, 0.0, steady=True)  # the shape's first call: its one-off costs are no rate
    rates.iteration_started(5.0)
    rates.iteration_ran(SHAPE, 5.0, steady=True)
    assert rates.rate(SHAPE) is None  # its end is not known yet
    rates.iteration_started(5.5)
    assert rates.rate(SHAPE) == StepRate("tiny", 256, 256, 3, 0.5, "cpu")


def test_iterations_where_lanes_start_or_finish_and_idle_gaps_are_not_counted() -> None:
    rates = IterationRates("cpu")
    rates.iteration_ran(SHAPE, 0.0, steady=True)  # first call
    rates.iteration_started(1.0)
    rates.iteration_ran(SHAPE, 1.0, steady=False)  # a lane finished: decode and PNG are in its period
    rates.iteration_started(9.0)
    rates.iteration_ran(SHAPE, 9.0, steady=True)
    rates.idle()  # no lanes: the wait for the next job is no iteration's
    rates.iteration_started(100.0)
    assert rates.rate(SHAPE) is None


def test_the_rate_is_the_mean_of_the_latest_periods_per_shape() -> None:
    rates = IterationRates("NVIDIA H100")
    rates.iteration_ran(SHAPE, 0.0, steady=True)  # first call
    for started, ended in [(1.0, 1.25), (1.25, 1.5), (1.5, 10.5), (10.5, 10.75)]:  # a slow one among them counts
        rates.iteration_started(started)
        rates.iteration_ran(SHAPE, started, steady=True)
        rates.iteration_started(ended)
    assert rates.rate(SHAPE) == StepRate("tiny", 256, 256, 3, pytest.approx(2.4375), "NVIDIA H100")  # type: ignore[arg-type]
    assert rates.rate(("tiny", 256, 256, 1)) is None  # another lane count is another rate
