"""When the Redis store stops asking a server that failed (`_Pause`), step by step on
a clock the test moves. The real server's side (stopped, frozen, back) is in
tests/integration/test_redis_store.py."""

from __future__ import annotations

from gatekeeper.store.redis import _Pause

INTERVAL = 1.0
CAUSE = TimeoutError()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pause(interval: float = INTERVAL) -> tuple[_Pause, Clock]:
    clock = Clock()
    return _Pause(interval, clock), clock


def _fail(pause: _Pause, clock: Clock, took: float = 0.25) -> None:
    """One call that goes to the server and gets no answer within `took` seconds."""
    assert pause.refusal() is None
    probe = pause.start()
    started = clock.now
    clock.now += took
    pause.failed(CAUSE, "no answer within 0.25 s", started, probe)


def test_a_failure_with_no_answer_meanwhile_refuses_calls_for_the_interval() -> None:
    pause, clock = _pause()
    _fail(pause, clock)
    clock.now += INTERVAL - 0.01
    refusal = pause.refusal()
    assert refusal is not None
    reason, cause = refusal
    assert reason == ("the server failed 0.99 s ago (no answer within 0.25 s); "
                      "it is tried again in 0.01 s")
    assert cause is CAUSE
    clock.now += 0.01
    assert pause.refusal() is None


def test_after_the_interval_one_call_tries_and_an_answer_ends_the_pause() -> None:
    pause, clock = _pause()
    _fail(pause, clock)
    clock.now += INTERVAL
    assert pause.refusal() is None
    assert pause.start()  # the probe
    refusal = pause.refusal()  # another call while it runs
    assert refusal is not None
    assert refusal[0].endswith("it is tried again now, by another call")
    clock.now += 0.001
    pause.answered(probe=True)
    assert pause.refusal() is None
    assert not pause.start()


def test_a_failed_try_pauses_for_another_interval() -> None:
    pause, clock = _pause()
    _fail(pause, clock)
    clock.now += INTERVAL
    _fail(pause, clock)
    clock.now += INTERVAL / 2
    assert pause.refusal() is not None
    clock.now += INTERVAL / 2
    assert pause.refusal() is None


def test_a_cancelled_try_lets_the_next_call_try() -> None:
    pause, clock = _pause()
    _fail(pause, clock)
    clock.now += INTERVAL
    probe = pause.start()
    pause.abandoned(probe)
    assert pause.refusal() is None
    assert pause.start()


def test_a_failure_while_another_call_was_answered_pauses_nothing() -> None:
    # A slow event loop or one lost connection: the server answered others meanwhile.
    pause, clock = _pause()
    started = clock.now
    clock.now += 0.1
    pause.answered(probe=False)
    clock.now += 0.15
    pause.failed(CAUSE, "no answer within 0.25 s", started, probe=False)
    assert pause.refusal() is None


def test_a_late_failure_of_a_call_from_before_the_server_came_back_pauses_nothing() -> None:
    pause, clock = _pause(interval=0.1)
    started_before = clock.now
    _fail(pause, clock, took=0.05)
    clock.now += 0.1
    assert pause.start()
    pause.answered(probe=True)  # back
    clock.now += 0.1
    pause.failed(CAUSE, "no answer within 0.25 s", started_before, probe=False)
    assert pause.refusal() is None


def test_failures_while_paused_do_not_extend_the_pause() -> None:
    pause, clock = _pause()
    started = clock.now
    _fail(pause, clock)
    # A call that was already waiting when the first failed gives up a little later.
    clock.now += 0.2
    pause.failed(CAUSE, "no answer within 0.25 s", started + 0.01, probe=False)
    clock.now += INTERVAL - 0.2
    assert pause.refusal() is None


def test_no_interval_never_refuses() -> None:
    pause, clock = _pause(interval=0.0)
    for _ in range(3):
        _fail(pause, clock)
        assert pause.refusal() is None
