"""The watchdog's event loop: deadlines in order, readers, signals handled by the loop
(not inside the signal handler), and a failing callback that does not stop it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from passenger.watchdog.event_loop import EventLoop


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    previous = signal.getsignal(signal.SIGUSR1)
    loop = EventLoop()
    try:
        yield loop
    finally:
        loop.close()
        signal.signal(signal.SIGUSR1, previous)


def run_for(loop: EventLoop, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    loop.call_at(deadline, lambda: None)  # wakes the loop to see the deadline
    loop.run_until(lambda: time.monotonic() >= deadline)


def test_timers_run_in_deadline_order_and_cancelled_ones_never(loop: EventLoop) -> None:
    ran: list[str] = []
    loop.call_later(0.06, lambda: ran.append("third"))
    loop.call_later(0.02, lambda: ran.append("first"))
    loop.call_later(0.04, lambda: ran.append("second"))
    loop.call_later(0.03, lambda: ran.append("cancelled")).cancel()
    started = time.monotonic()
    loop.run_until(lambda: len(ran) == 3)
    assert ran == ["first", "second", "third"]
    assert 0.05 <= time.monotonic() - started < 1.0


def test_a_reader_runs_while_readable_and_not_after_removal(loop: EventLoop) -> None:
    r, w = os.pipe()
    try:
        got: list[bytes] = []
        loop.add_reader(r, lambda: got.append(os.read(r, 100)))
        os.write(w, b"one")
        loop.run_until(lambda: bool(got))
        loop.remove_reader(r)
        os.write(w, b"two")
        run_for(loop, 0.05)
        assert got == [b"one"]
    finally:
        os.close(r)
        os.close(w)


def test_a_reader_removed_by_an_earlier_callback_is_not_called(loop: EventLoop) -> None:
    pipes = [os.pipe(), os.pipe()]
    try:
        called: list[int] = []

        def first_one(index: int) -> None:
            called.append(index)
            os.read(pipes[index][0], 1)
            loop.remove_reader(pipes[1 - index][0])  # both readable in the same poll

        for index, (r, _) in enumerate(pipes):
            loop.add_reader(r, lambda index=index: first_one(index))
        for _, w in pipes:
            os.write(w, b"x")
        loop.run_until(lambda: bool(called))
        run_for(loop, 0.02)
        assert len(called) == 1
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_signals_are_handled_by_the_loop_not_in_the_handler(loop: EventLoop) -> None:
    handled: list[int] = []
    loop.handle_signals({signal.SIGUSR1: handled.append})
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert handled == []  # recorded, not acted on, until the loop runs
    started = time.monotonic()
    loop.run_until(lambda: len(handled) == 2)
    assert handled == [signal.SIGUSR1, signal.SIGUSR1]
    assert time.monotonic() - started < 1.0


def test_a_failing_callback_is_reported_and_the_loop_goes_on(
        loop: EventLoop, capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("a bug")

    loop.call_later(0.0, broken)
    loop.call_later(0.01, lambda: ran.append("after"))
    loop.run_until(lambda: bool(ran))
    err = capsys.readouterr().err
    assert "event_loop ]: Unexpected error (the watchdog goes on):" in err
    assert "ValueError: a bug" in err
