"""Polite waiting (hpcsgd.comm.Backoff) on a fake clock: spin for about twice the usual
wait, then sleep, never longer than a sixteenth of the usual wait (a large message
moves only while both ends poll) nor than max_sleep."""

from types import SimpleNamespace

import pytest

from hpcsgd import comm as C


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []
        self.yields = 0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def sched_yield(self):
        self.yields += 1
        self.now += 1e-6


@pytest.fixture
def clock(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(C, "time", SimpleNamespace(perf_counter=fake.perf_counter, sleep=fake.sleep))
    monkeypatch.setattr(C, "os", SimpleNamespace(sched_yield=fake.sched_yield))
    return fake


def wait_for(backoff, clock, seconds):
    """Poll until ``seconds`` have passed, as a waiting site does; the wait's overshoot."""
    end = clock.now + seconds
    while clock.now < end:
        backoff.wait()
    backoff.done()
    return clock.now - end


def test_sleeps_stay_a_sixteenth_of_the_usual_wait(clock):
    b = C.Backoff()
    for _ in range(40):
        wait_for(b, clock, 2e-3)       # learn waits of 2 ms
    clock.sleeps.clear()
    overshoot = wait_for(b, clock, 2e-3)
    # the spin covers min(2 x 2 ms, max_spin = 1 ms); the rest is sleeps of at most a
    # sixteenth of the usual wait (2 ms and the overshoots, learnt)
    assert 2e-3 < b.expected < 2.1e-3
    assert clock.sleeps and max(clock.sleeps) <= 2.1e-3 / 16
    assert overshoot <= 2.1e-3 / 16
    # with 1 ms sleeps (the cap before) the same wait overshot by up to 1 ms
    assert max(clock.sleeps) < b.max_sleep / 4


def test_long_waits_sleep_up_to_max_sleep_and_spin_at_most_max_spin(clock):
    b = C.Backoff()
    for _ in range(40):
        wait_for(b, clock, 0.2)        # a straggler's 200 ms
    clock.sleeps.clear()
    clock.yields = 0
    wait_for(b, clock, 0.2)
    assert max(clock.sleeps) == pytest.approx(b.max_sleep)
    assert clock.yields * 1e-6 <= b.max_spin + 2e-6  # the spin ends after max_spin


def test_short_waits_are_seen_while_spinning(clock):
    b = C.Backoff()
    for _ in range(40):
        wait_for(b, clock, 50e-6)
    clock.sleeps.clear()
    assert wait_for(b, clock, 50e-6) <= 1e-6
    assert clock.sleeps == []           # min_spin (100 us) covers them
