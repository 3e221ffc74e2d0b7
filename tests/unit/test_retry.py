"""The libvirt retry policy, with an injected sleep so nothing really waits."""

from __future__ import annotations

import types

import pytest
import tenacity
from structlog.testing import capture_logs

from worker.errors import HypervisorError, HypervisorUnavailable
from worker.retry import libvirt_policy, reconnecting


def NEVER() -> bool:  # noqa: N802 (reads as a constant at the call sites)
    """A stopping() that never says stop."""
    return False


class FakeTime:
    """A monotonic clock that moves only when the injected sleep is called."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """tenacity reads this clock, and the policy gets its sleep: time passes only in sleeps."""
    fake = FakeTime()
    monkeypatch.setattr(tenacity, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


class Flaky:
    """Raises the given errors in turn, then returns 'done'."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.raised: list[BaseException] = []

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            exc = self.errors.pop(0)
            self.raised.append(exc)
            raise exc
        return "done"


def test_unavailable_is_retried_until_it_succeeds(fake_time: FakeTime) -> None:
    """Three lost-connection failures then success: three sleeps, then the result."""
    verb = Flaky(*(HypervisorUnavailable("libvirtd gone") for _ in range(3)))

    result = libvirt_policy(NEVER, sleep=fake_time.sleep)(verb)

    assert "done" == result
    assert 4 == verb.calls
    assert 3 == len(fake_time.sleeps)


def test_delays_grow_exponentially_with_bounded_jitter(fake_time: FakeTime) -> None:
    """Attempt n waits 0.2 * 2**(n-1) plus up to 0.5 s of jitter, never more than max_wait."""
    verb = Flaky(*(HypervisorUnavailable("down") for _ in range(9)))

    libvirt_policy(NEVER, 10, sleep=fake_time.sleep)(verb)

    for n, delay in enumerate(fake_time.sleeps, 1):
        base = min(0.2 * 2 ** (n - 1), 10)
        assert base <= delay <= min(base + 0.5, 10), (n, delay)
    assert 10 == fake_time.sleeps[-1]


def test_never_gives_up_on_its_own(fake_time: FakeTime) -> None:
    """However long libvirt stays away, the verb keeps its place and retries, waits capped."""
    verb = Flaky(*(HypervisorUnavailable(f"down {i}") for i in range(200)))

    assert "done" == libvirt_policy(NEVER, 5, sleep=fake_time.sleep)(verb)

    assert 201 == verb.calls
    assert sum(fake_time.sleeps) > 600
    assert 5 == max(fake_time.sleeps)


def test_stopping_ends_the_wait_with_the_last_error(fake_time: FakeTime) -> None:
    """Once stopping() is true the last HypervisorUnavailable itself is raised, not RetryError."""
    # Given libvirt that never comes back, and a worker that starts stopping after 3 tries
    verb = Flaky(*(HypervisorUnavailable(f"down {i}") for i in range(100)))

    # When the verb runs under the policy
    with pytest.raises(HypervisorUnavailable) as caught:
        libvirt_policy(lambda: verb.calls >= 3, sleep=fake_time.sleep)(verb)

    # Then it gave up after the third attempt
    assert verb.raised[-1] is caught.value
    assert (3, 2) == (verb.calls, len(fake_time.sleeps))


def test_already_stopping_tries_once(fake_time: FakeTime) -> None:
    """While stopping, a lost connection is reported at once, without sleeping."""
    verb = Flaky(HypervisorUnavailable("down"), HypervisorUnavailable("down"))

    with pytest.raises(HypervisorUnavailable):
        libvirt_policy(lambda: True, sleep=fake_time.sleep)(verb)

    assert (1, []) == (verb.calls, fake_time.sleeps)


@pytest.mark.parametrize("error", [HypervisorError("refused", 1), KeyError("x"),
                                   ValueError("bad")], ids=repr)
def test_other_errors_are_not_retried(fake_time: FakeTime, error: BaseException) -> None:
    """Any error but HypervisorUnavailable is raised on the first attempt."""
    verb = Flaky(error)

    with pytest.raises(type(error)) as caught:
        libvirt_policy(NEVER, sleep=fake_time.sleep)(verb)

    assert error is caught.value
    assert (1, []) == (verb.calls, fake_time.sleeps)


def test_a_log_line_comes_before_each_sleep(fake_time: FakeTime) -> None:
    """Each sleep is announced by one libvirt_retry warning with attempt, delay and error."""
    verb = Flaky(HypervisorUnavailable("socket closed"), HypervisorUnavailable("socket closed"))
    seen_at_sleep: list[int] = []

    with capture_logs() as logs:
        def sleep(seconds: float) -> None:
            seen_at_sleep.append(len(logs))
            fake_time.sleep(seconds)

        libvirt_policy(NEVER, sleep=sleep)(verb)

    assert [1, 2] == seen_at_sleep
    assert [{"event": "libvirt_retry", "log_level": "warning", "attempt": n,
             "sleep_s": round(delay, 3), "error": "socket closed"}
            for n, delay in enumerate(fake_time.sleeps, 1)] == logs


def test_a_stop_during_a_reconnect_wait_ends_reconnecting_without_another_try() -> None:
    """Broker unreachable: a stop that cuts the backoff short returns, with no further connect."""
    tries: list[int] = []
    stop: list[bool] = []

    def connect() -> object:
        tries.append(1)
        raise ConnectionRefusedError("closed port")

    def sleep(_seconds: float) -> None:
        if len(tries) == 3:
            stop.append(True)  # the stop signal arrives during the third wait

    reconnecting(connect, lambda _conn: None, name="consumer", stopping=lambda: bool(stop),
                 sleep=sleep)

    assert 3 == len(tries)
