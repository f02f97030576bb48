"""Restart at once; back off exponentially (capped) only when an agent crash-loops."""

from passenger.watchdog.supervisor import RestartPolicy


def test_immediate_restarts_then_growing_delays() -> None:
    policy = RestartPolicy(burst=5, window=60, cap=8)
    delays = [policy.next_delay(float(t)) for t in range(9)]
    assert delays == [0, 0, 0, 0, 0, 0.5, 1, 2, 4]
    assert policy.next_delay(9) == 8 and policy.next_delay(10) == 8


def test_failures_outside_the_window_are_forgotten() -> None:
    policy = RestartPolicy(burst=2, window=10, cap=60)
    assert [policy.next_delay(t) for t in (0, 1, 2)] == [0, 0, 0.5]
    assert policy.next_delay(100) == 0
