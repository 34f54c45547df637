"""Circuit breaker state machine with a hand-moved clock (no I/O)."""

from __future__ import annotations

import pytest

from channel.rpc.breaker import HALF_OPEN_RETRY_AFTER_S, BreakerState, CircuitBreaker
from channel.rpc.devices import DeviceGuard
from tests.rpc_upstream import FakeClock


def make(
    failures: int = 3, window_s: float = 10.0, open_s: float = 5.0
) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(failures=failures, window_s=window_s, open_s=open_s, clock=clock), clock


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, so mypy does not keep a narrowed property type across state changes.
    return breaker.state


def test_opens_after_n_failures_within_window() -> None:
    breaker, clock = make()
    assert breaker.allow()
    assert not breaker.record_failure()
    clock.advance(1)
    assert not breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    clock.advance(1)
    assert breaker.record_failure()  # the third opens it
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    assert not breaker.would_allow()
    assert breaker.retry_after_s() == pytest.approx(5.0)
    clock.advance(2)
    assert breaker.retry_after_s() == pytest.approx(3.0)
    assert breaker.opens == 1


def test_failures_spread_wider_than_window_do_not_open() -> None:
    breaker, clock = make(failures=3, window_s=10)
    for _ in range(10):
        breaker.record_failure()
        clock.advance(6)  # never 3 failures within 10 s
    assert state(breaker) is BreakerState.CLOSED


def test_successes_do_not_erase_failures_in_window() -> None:
    breaker, _ = make(failures=3)
    for _ in range(2):
        breaker.record_failure()
        breaker.record_success()
    assert breaker.record_failure()


def test_half_open_lets_exactly_one_probe_and_success_closes() -> None:
    breaker, clock = make(open_s=5)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(4.999)
    assert not breaker.allow()
    clock.advance(0.001)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.retry_after_s() == 0
    assert breaker.allow()  # the probe
    assert not breaker.allow()
    assert breaker.retry_after_s() == HALF_OPEN_RETRY_AFTER_S
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()
    # The window starts afresh: two failures are not enough.
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED


def test_failed_probe_reopens_for_another_period() -> None:
    breaker, clock = make(open_s=5)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5)
    assert breaker.allow()
    assert breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_after_s() == pytest.approx(5.0)
    assert breaker.opens == 2


def test_release_gives_back_the_probe_slot() -> None:
    breaker, clock = make()
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5)
    assert breaker.allow()
    breaker.release()  # e.g. the call was cancelled
    assert breaker.allow()


def test_late_failure_while_open_changes_nothing() -> None:
    breaker, clock = make(open_s=5)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(1)
    assert not breaker.record_failure()
    assert breaker.retry_after_s() == pytest.approx(4.0)


def test_zero_failures_disables() -> None:
    breaker, _ = make(failures=0)
    for _ in range(100):
        assert breaker.allow()
        assert not breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED


def test_describe() -> None:
    breaker, _ = make()
    assert breaker.describe()["state"] == "closed"


@pytest.mark.parametrize("kwargs", [{"failures": -1}, {"window_s": 0}, {"open_s": -1}])
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    args = {"failures": 3, "window_s": 1.0, "open_s": 1.0, **kwargs}
    with pytest.raises(ValueError):
        CircuitBreaker(clock=FakeClock(), **args)  # type: ignore[arg-type]


def test_failures_of_one_source_do_not_open_a_breaker_that_needs_several() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, window_s=10, open_s=5, clock=clock, min_devices=3)
    for _ in range(10):
        assert not breaker.record_failure("mallory")
    assert not breaker.record_failure("alice")
    assert breaker.record_failure("bob")  # three devices now, and failures enough
    assert state(breaker) is BreakerState.OPEN


def test_sources_must_fail_within_the_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, window_s=10, open_s=5, clock=clock, min_devices=3)
    breaker.record_failure("a")
    clock.advance(11)
    breaker.record_failure("b")
    breaker.record_failure("b")
    assert not breaker.record_failure("b")  # "a" failed too long ago
    assert breaker.record_failure("c") is False  # a, then b, c: only two within 10 s
    assert breaker.record_failure("d")


def test_a_refused_connection_counts_whoever_saw_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, window_s=10, open_s=5, clock=clock, min_devices=3)
    assert not breaker.record_failure(None)
    assert not breaker.record_failure(None)
    assert breaker.record_failure(None)


def test_a_device_has_a_breaker_and_a_cap_of_its_own() -> None:
    clock = FakeClock()
    guard = DeviceGuard(failures=2, window_s=10, open_s=5, max_in_flight=2, clock=clock)
    assert not guard.record_failure("mallory")
    assert guard.record_failure("mallory")
    refusal = guard.refusal("mallory")
    assert refusal is not None and refusal.reason == "open"
    assert refusal.retry_after_s == pytest.approx(5)
    assert guard.refusal("alice") is None
    clock.advance(5)
    assert guard.refusal("mallory") is None  # no half-open: it simply ends
    guard.started("alice")
    guard.started("alice")
    busy = guard.refusal("alice")
    assert busy is not None and busy.reason == "busy"
    guard.finished("alice")
    assert guard.refusal("alice") is None
    assert guard.describe()["devices_in_flight"] == 1


def test_device_failures_are_forgotten_and_bounded() -> None:
    clock = FakeClock()
    guard = DeviceGuard(
        failures=3, window_s=10, open_s=5, max_in_flight=0, clock=clock, max_tracked=100
    )
    for i in range(1_000):
        guard.record_failure(f"d{i}")
    assert len(guard._failed) <= 100
    clock.advance(11)
    guard.record_failure("late")
    assert list(guard._failed) == ["late"]
