"""The engine's parts on their own, no MPI: the message layouts, both clocks, the
scheduler driven by fake workers (the simulated order of events, ties, the send window,
withdrawal, cancellation load), the parameter state against NumPy, the recorder, the
watch and the checkpoint layout's round trips."""

from __future__ import annotations

import heapq
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from hpcsgd import transport as T
from hpcsgd.engine import layout
from hpcsgd.engine.clock import CostClock, SimulatedClock, WallClock
from hpcsgd.engine.interface import Assignment
from hpcsgd.engine.params import ParameterState
from hpcsgd.engine.recorder import Recorder
from hpcsgd.engine.scheduler import SEND_WINDOW, EpochMirror, Scheduler
from hpcsgd.engine.watch import Watch
from hpcsgd.errors import WorkerSilentError
from hpcsgd.ordering import EpochCursor, make_ordering
from hpcsgd.streams import make_stream, stream_state


# ---------------------------------------------------------------------------- transport

def test_result_and_job_messages_round_trip():
    d, pairs = 5, 2
    out = np.zeros(T.result_length(d, pairs))
    T.pack_result(out, worker=3, version=7, batch=4, samples=3, delay_comm=0.25, delay_compute=1.0,
                  compute=0.01, loss_sum=2.5, abandoned=False, pairs=pairs, epoch=2, stop=True)
    out[T.RESULT_HEADER:] = np.arange(d * (1 + pairs))
    r = T.unpack_result(out, d)
    assert (r.worker, r.version, r.batch, r.samples, r.epoch, r.stop, r.abandoned) == (3, 7, 4, 3, 2, True, False)
    assert r.duration == 1.25 and r.delay_comm == 0.25 and r.loss_sum == 2.5
    assert np.array_equal(r.grad, np.arange(d)) and r.pairs.shape == (pairs, d)
    assert np.array_equal(r.pairs[1], np.arange(2 * d, 3 * d))
    assert r.carries_gradient
    job = T._header(9, 16, T.FLAG_PREEMPTIBLE, d)
    assert T.unpack_job(job) == (9, 16, True) and T.unpack_job(T._header(9, 16, 0)) == (9, 16, False)


def test_a_tag_names_the_kind_and_the_hosted_worker():
    for kind in (T.TAG_JOB, T.TAG_EVAL, T.TAG_STATE_GET, T.TAG_STATE_SET, T.TAG_RELEASE, T.TAG_SIGNS, T.TAG_TREE):
        for slot in (0, 1, 511):
            assert T.tag_kind(T.slot_tag(kind, slot)) == (kind, slot)
    assert len({T.TAG_RESULT, T.TAG_EVAL_RESULT, *(T.slot_tag(k, 0) for k in range(T.TAG_STRIDE))}) == T.TAG_STRIDE


def test_a_stored_result_row_from_before_results_named_their_worker_loads():
    class Comm:  # what MasterTransport asks of a communicator before any message
        def Irecv(self, buf, source, tag):
            return None
    from hpcsgd.placement import WorkerMap
    d = 3
    link = T.MasterTransport(Comm(), d, 0, WorkerMap(2, 1))
    new = np.zeros(T.RESULT_HEADER + d)
    T.pack_result(new, worker=2, version=5, batch=4, samples=4, delay_comm=0.5, delay_compute=1.0, compute=0.0,
                  loss_sum=1.5, abandoned=False, pairs=0, epoch=1, stop=False)
    new[T.RESULT_HEADER:] = [7.0, 8.0, 9.0]
    old = np.concatenate([new[:T.R_WORKER], new[T.RESULT_HEADER:]])  # the header without R_WORKER
    for row in (new, old):
        r = link.result_from_row(2, row)
        assert (r.worker, r.version, r.batch, r.duration) == (2, 5, 4, 1.5) and list(r.grad) == [7.0, 8.0, 9.0]


# ---------------------------------------------------------------------------- clocks

def job(worker, seq, t_assign=0.0, batch=4, version=0, cancel=math.nan):
    from hpcsgd.engine.scheduler import Job
    return Job(worker, seq, version, batch, False, t_assign, cancel_time=cancel)


def result(worker, duration, samples=4, delay_comm=0.0, abandoned=False, version=0, batch=4):
    return SimpleNamespace(worker=worker, duration=duration, samples=samples, delay_comm=delay_comm,
                           abandoned=abandoned, version=version, batch=batch, compute_seconds=0.0,
                           carries_gradient=samples > 0 and not abandoned, stop=False,
                           pairs=np.zeros((0, 1)), buf=None)


def test_the_simulated_clock_chains_a_workers_jobs_and_clips_cancelled_ones():
    clock = SimulatedClock(2)
    a, b = job(1, 0, t_assign=1.0), job(1, 1, t_assign=1.5)
    assert clock.arrived(a, result(1, 2.0))[0] == (3.0, 0, 1)      # starts at 1, ends at 3
    assert clock.arrived(b, result(1, 1.0))[0] == (4.0, 1, 1)      # waits for worker 1: 3 -> 4
    c = job(2, 2, t_assign=0.0, cancel=0.5)
    assert clock.arrived(c, result(2, 4.0)) == (None, 0, 0)        # ran 0 -> 0.5 only
    assert c.t_done == 0.5 and clock.worker_end[2] == 0.5
    # a job cancelled after its reply came: the part before the cancel is its load
    d_ = job(2, 3, t_assign=1.0)
    d_.result = result(2, 2.0, delay_comm=1.0)
    clock.arrived(d_, d_.result)  # 1 s of compute then 1 s of reply, 1.0 -> 3.0
    d_.cancel_time = 1.5
    assert clock.cancelled(d_, 1.5) == (2, 0)          # half of the compute: 2 of 4 samples
    assert clock.worker_end[2] == 1.5
    assert clock.cancelled(job(1, 4), 2.0) is None     # no reply yet: had not started


def cost_model(**over) -> dict:
    from hpcsgd.config import SCHEMA
    return {**{k: key.default for k, key in SCHEMA["cluster"].items()}, "cost": True, **over}


def test_the_cost_model_charges_a_sync_round_through_the_masters_link_and_the_master():
    """Four workers on four hosts, no delays: the jobs leave the master together and
    share its link, the results come back through it one after another, then the master
    works.
    The times against the same arithmetic written out by hand (bytes / rate, latency,
    the master's own seconds)."""
    d, M = 650, 4
    c = cost_model(link_gbit=1.0, latency=1e-4, master_update=3e-5, master_per_param=2.6e-9, master_message=1e-5)
    clock = CostClock(M, c, d, T.RESULT_HEADER, T.JOB_HEADER)
    rate = 1e9 / 8
    job_s, result_s = 8 * (T.JOB_HEADER + d) / rate, 8 * (T.RESULT_HEADER + d) / rate
    jobs = [job(j, j - 1) for j in range(1, M + 1)]
    clock.sent(jobs)
    msg = 1e-5 + 0.0 * d                                   # the master sends one per message cost,
    last_byte = max(msg + M * job_s, M * msg + job_s)      # its link shares the rate: all arrive at once
    arrive = [last_byte + 1e-4] * M
    assert [jb.t_arrive for jb in jobs] == pytest.approx(arrive, abs=1e-15)
    keys = [clock.arrived(jb, result(jb.worker, 0.0))[0] for jb in jobs]
    assert [k[0] for k in keys] == pytest.approx(arrive)  # no delay: each computes on arrival
    link_free = master = 0.0
    for jb in jobs:                                        # in the order the computations end
        jb.result = result(jb.worker, 0.0)
        clock.took(jb)
        link_free = max(jb.t_done, link_free) + result_s
        here = link_free + 1e-4
        master = max(here, master) + 1e-5
        assert clock.sim_now == pytest.approx(master)
    assert clock.trace_row()["wait_link"] == pytest.approx(here - jobs[-1].t_done)
    clock.charge_update(d)
    assert clock.sim_now == pytest.approx(master + 3e-5 + 2.6e-9 * d)
    # two rounds of M * (job + result) bytes through one link: the bytes-per-link model
    assert 2 * M * (job_s + result_s) / 2 < clock.sim_now


def test_the_cost_model_queues_workers_of_one_host_behind_each_other_and_resumes_exactly():
    d = 10**6
    c = cost_model(link_gbit=10.0, workers_per_host=2)
    clock = CostClock(4, c, d, T.RESULT_HEADER, T.JOB_HEADER)
    a, b, e = job(1, 0), job(2, 1), job(3, 2)
    for jb in (a, b, e):  # one at a time: each waits for the ones before it
        clock.sent([jb])
    s = 8 * (T.JOB_HEADER + d) / 1.25e9
    # b shares a's host: its message waits for a's on the host link as on the master's;
    # e is on the next host but still behind both on the master's link
    assert (a.t_arrive, b.t_arrive, e.t_arrive) == pytest.approx((s, 2 * s, 3 * s))
    state = clock.state_dict()
    again = CostClock(4, c, d, T.RESULT_HEADER, T.JOB_HEADER)
    again.load_state_dict(state)
    f, g = job(4, 3), job(4, 4)
    clock.sent([f])
    again.sent([g])
    assert f.t_arrive == g.t_arrive == pytest.approx(4 * s)
    # sent together, two jobs to one host share the master's link and that host's
    together = CostClock(4, c, d, T.RESULT_HEADER, T.JOB_HEADER)
    h, k = job(1, 5), job(2, 6)
    together.sent([h, k])
    assert h.t_arrive == k.t_arrive == pytest.approx(2 * s)


def test_the_cost_model_with_servers_beside_the_workers_spreads_the_bytes():
    """Two workers on hosts 1 and 2, three servers (rank 0 on host 0, the others beside
    the workers): each server sends its slice, a server's slice to the worker on its own
    host costs nothing, and a job has arrived when its last slice has.  1 byte/ms."""
    d, M = 10, 2
    c = cost_model(link_gbit=8e-6)  # 1,000 bytes/s
    clock = CostClock(M, c, d, T.RESULT_HEADER, T.JOB_HEADER, servers=3)
    assert clock.sizes == [4, 3, 3] and clock.server_host == [0, 1, 2]
    jobs = [job(1, 0), job(2, 1)]
    clock.sent(jobs)
    s0, s1 = 8 * (T.JOB_HEADER + 4) / 1000, 8 * (T.JOB_HEADER + 3) / 1000
    # rank 0's two slices share its link (both arrive at 2 s0); then each worker host
    # takes the other follower's slice on its incoming link, behind rank 0's
    assert [jb.t_arrive for jb in jobs] == pytest.approx([2 * s0 + s1] * 2)
    one = CostClock(M, c, d, T.RESULT_HEADER, T.JOB_HEADER)
    alone = [job(1, 0), job(2, 1)]
    one.sent(alone)
    assert alone[0].t_arrive == pytest.approx(2 * 8 * (T.JOB_HEADER + d) / 1000)
    assert alone[0].t_arrive > jobs[0].t_arrive  # one master: all 2 x d through one link
    # a result: its slices leave worker 1's host one after another (server 1's is local)
    jb = jobs[0]
    clock.arrived(jb, result(1, 0.0))
    jb.result = result(1, 0.0)
    clock.took(jb)
    r0, r2 = 8 * (T.RESULT_HEADER + 4) / 1000, 8 * (T.RESULT_HEADER + 3) / 1000
    assert clock.sim_now == pytest.approx(jb.t_done + r0)           # rank 0 has its slice
    assert clock.in_free[2] == pytest.approx(jb.t_done + r0 + r2)   # server 2's came after it
    state = clock.state_dict()
    assert state["cost"].size == 3 + 2 * 3


def test_the_wall_clock_numbers_arrivals_and_counts_dropped_work_when_it_comes():
    clock = WallClock(2)
    assert clock.arrived(job(1, 5), result(1, 0.0))[0] == (0, 5, 1)
    assert clock.arrived(job(2, 6), result(2, 0.0))[0] == (1, 6, 2)
    assert clock.arrived(job(2, 7, cancel=1.0), result(2, 0.0, samples=3)) == (None, 3, 1)
    assert clock.arrived(job(2, 8, cancel=1.0), result(2, 0.0, samples=0, abandoned=True)) == (None, 0, 0)
    t = clock.wall()
    clock.pause(10.0)
    assert clock.wall() == t, "the training clock never runs backwards"
    assert clock.withdraws_unsent and not SimulatedClock(1).withdraws_unsent


# ---------------------------------------------------------------------------- scheduler

class FakeWorkers:
    """Workers that answer every job sent to them with a drawn duration, in order."""

    def __init__(self, M, durations, simulated=True):
        self.clock = (SimulatedClock if simulated else WallClock)(M)
        self.sent = {j: [] for j in range(1, M + 1)}
        self.load = [0, 0]
        self.sched = Scheduler([100] * M, self.clock, message=lambda params, v, b, p: (v, b, p),
                               send_job=lambda j, buf: self.sent[j].append(buf), load=self, recycle=lambda r: None,
                               withdraws=self.clock.withdraws_unsent)
        self.durations = durations

    def count(self, samples, messages):
        self.load[0] += samples
        self.load[1] += messages

    @property
    def messages(self):
        return self.load[1]

    @messages.setter
    def messages(self, n):
        self.load[1] = n

    def answer(self, worker):
        """The worker answers the oldest job it was sent."""
        version, batch, _ = self.sent[worker].pop(0)
        self.sched.replied(result(worker, self.durations(worker), samples=batch, version=version, batch=batch))

    def create(self, worker, version=0, batch=4, preemptible=False):
        self.sched.create([Assignment(worker, batch, preemptible)], None, version)


def test_simulated_events_come_in_completion_order_whatever_the_arrival_order():
    f = FakeWorkers(3, durations=lambda j: {1: 3.0, 2: 1.0, 3: 2.0}[j])
    for j in (1, 2, 3):
        f.create(j)
    f.answer(1)                      # worker 1 (3 s) answers first in real time...
    assert not f.sched.event_ready(), "workers 2 and 3 could still end earlier"
    f.answer(3)
    assert not f.sched.event_ready()
    f.answer(2)
    assert [f.sched.take().worker for _ in range(3)] == [2, 3, 1]
    assert f.clock.sim_now == 3.0


def test_ties_go_to_the_job_handed_out_first():
    f = FakeWorkers(3, durations=lambda j: 0.0)
    for j in (3, 1, 2):
        f.create(j)
    for j in (1, 2, 3):
        f.answer(j)
    assert [f.sched.take().worker for _ in range(3)] == [3, 1, 2]


def test_the_send_window_holds_jobs_until_the_worker_answers_and_the_wall_clock_withdraws_them():
    f = FakeWorkers(1, durations=lambda j: 0.0, simulated=False)
    for v in range(4):
        f.create(1, version=v, preemptible=True)
    assert len(f.sent[1]) == SEND_WINDOW and f.sched.held[1] == 2
    f.answer(1)                      # room again: the oldest held job goes out
    assert len(f.sent[1]) == SEND_WINDOW and f.sched.held[1] == 1
    epoch_before = f.sched.mirror.position(1)
    f.sched.cancel_before(4)         # everything is obsolete: the held job is withdrawn unsent
    assert f.sched.held[1] == 0 and f.sched.mirror.position(1) != epoch_before
    assert f.sched.mirror.pos[0] == 12, "its batch went back to the epoch (3 jobs of 4 taken)"
    assert f.load[1] == 4 - 1 + 1, "4 created, 1 withdrawn, the answered job's reply counted"


def test_a_simulated_cancel_counts_what_ran_before_it():
    f = FakeWorkers(2, durations=lambda j: {1: 1.0, 2: 4.0}[j])
    f.create(1), f.create(2)
    f.answer(1), f.answer(2)
    first = f.sched.take()
    assert first.worker == 1 and f.clock.sim_now == 1.0
    f.sched.cancel_before(1)         # worker 2's job (0 -> 4 s, all compute) cancelled at 1 s
    assert f.load[0] == 1 and not f.sched.in_flight() and not f.sched.event_ready()


def test_silence_is_measured_from_the_last_reply_or_send():
    f = FakeWorkers(2, durations=lambda j: 0.0, simulated=False)
    f.create(1), f.create(2)
    f.answer(2)
    now = time.monotonic() + 5.0
    assert f.sched.quiet_for(1, now) >= 5.0 and f.sched.lagging(now) == [1]
    assert f.sched.overdue(now)[0] >= 5.0 and f.sched.overdue(now)[1] == 0.0


def test_the_scheduler_state_round_trips():
    f = FakeWorkers(2, durations=lambda j: float(j))
    f.create(1), f.create(2)
    f.answer(1), f.answer(2)
    row = lambda r: np.array([r.version, r.batch])  # noqa: E731
    state = f.sched.state_dict(row, 2)
    g = FakeWorkers(2, durations=lambda j: float(j))
    g.sched.load_state_dict(state, lambda w, r: result(w, 0.0, version=int(r[0]), batch=int(r[1])))
    assert g.sched.seq == 2 and [g.sched.take().worker for _ in range(2)] == [1, 2]


def test_the_mirror_takes_batches_within_epochs_and_rewinds():
    m = EpochMirror([10])
    assert [m.take(1, 4) for _ in range(3)] == [4, 4, 2]
    before = m.position(1)
    m.take(1, 4)
    m.restore(1, before)
    assert m.position(1) == before and m.epoch() == 1.0


# ---------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("beta, l1, block", [(0.0, 0.0, None), (0.9, 0.0, None), (0.5, 0.1, slice(1, 3))])
def test_the_step_is_sgd_heavy_ball_and_the_l1_prox(beta, l1, block):
    rng = np.random.default_rng(0)
    state = ParameterState(4, momentum=beta, l1=l1)
    state.params[:] = rng.normal(size=4)
    w, m = state.params.copy(), np.zeros(4)
    for _ in range(3):
        g = rng.normal(size=4 if block is None else 2)
        assert state.step(g, lr=0.1, scale=0.5, block=block)
        sel = slice(None) if block is None else block
        if beta:
            m[sel] = beta * m[sel] + 0.5 * g
            w[sel] -= 0.1 * m[sel]
        else:
            w[sel] -= 0.1 * 0.5 * g
        if l1:
            w[sel] = np.sign(w[sel]) * np.maximum(np.abs(w[sel]) - 0.1 * l1, 0.0)
    np.testing.assert_allclose(state.params, w, rtol=1e-14, atol=1e-15)
    assert not state.step(np.array([np.nan] * (4 if block is None else 2)), lr=0.1, block=block)
    copy = ParameterState(4, beta, l1)
    copy.load_state_dict(state.state_dict())
    assert np.array_equal(copy.params, state.params, equal_nan=True)


# ---------------------------------------------------------------------------- recorder

def test_the_recorder_flushes_the_load_into_each_row_and_keeps_the_eval_schedule():
    clock = SimulatedClock(1)
    rec = Recorder({"eval_every": 0, "eval_seconds": 2.0, "progress_every": 0}, clock,
                   extras={"stage": np.int32}, quiet=True)
    rec.took(4, 0.5), rec.count(2, 1), rec.took(4, 0.25)
    rec.update({"update": 1, "staleness": 0, "stage": 1})
    rec.update({"update": 2, "staleness": 1, "stage": 1})
    tr = rec.trace.arrays()
    assert tr["samples_computed"].tolist() == [10, 0] and tr["messages"].tolist() == [3, 0]
    assert tr["compute_seconds"].tolist() == [0.5, 0.0] and tr["stage"].dtype == np.int32
    clock.sim_now = 3.0
    rec.add_eval(dict(update=2, epoch=0.1, wall_time=0.0, sim_time=3.0, train_loss=1.0, test_loss=1.0,
                      test_accuracy=0.5, grad_norm=1.0))
    assert rec.next_eval_at == 4.0 and not rec.eval_due(3)
    clock.sim_now = 4.0
    assert rec.eval_due(3)
    with pytest.raises(KeyError, match="trace columns queue are not declared"):
        rec.update({"update": 3, "queue": 2})  # an extra nobody declared: never a silent int32
    copy = Recorder({"eval_every": 0, "eval_seconds": 2.0, "progress_every": 0}, clock, quiet=True)
    copy.load_state_dict(rec.state_dict())
    assert copy.next_eval_at == 4.0 and np.array_equal(copy.trace.arrays()["stage"], tr["stage"])


# ---------------------------------------------------------------------------- watch

class FakeStop:
    def __init__(self, reason=""):
        self.reason = reason

    def check(self):
        return self.reason


def test_the_watch_names_silent_workers_and_honours_a_stop_request():
    f = FakeWorkers(2, durations=lambda j: 0.0, simulated=False)
    f.create(1), f.create(2)
    f.answer(2)
    f.sched.last_heard[1] = f.sched.jobs[1][0].sent_at = time.monotonic() - 100.0
    watch = Watch(FakeStop(), worker_timeout=50.0, stop_timeout=1.0, hosts=["?", "n01", "n02"], scheduler=f.sched)
    started = time.monotonic() - 60.0
    with pytest.raises(WorkerSilentError, match="run.worker_timeout") as exc:
        watch.check(started, "a result", lambda: [1])
    assert exc.value.workers == [1] and "worker 1 (host n01, silent 100 s)" in watch.describe([1])
    stopping = Watch(FakeStop("SIGTERM"), worker_timeout=0.0, stop_timeout=0.0, hosts=["?"] * 3, scheduler=f.sched)
    assert stopping.stop_requested()
    with pytest.raises(WorkerSilentError, match=r"stop request \(SIGTERM\)"):
        stopping.check(time.monotonic(), "a result", lambda: [1])
    idle = Watch(FakeStop(), worker_timeout=0.0, stop_timeout=1.0, hosts=["?"] * 3, scheduler=f.sched)
    with pytest.raises(RuntimeError, match="no worker owes it anything"):
        idle.check(time.monotonic() - 2.0, "a result", lambda: [])


# ---------------------------------------------------------------------------- layout

def test_a_workers_state_round_trips_through_the_layout():
    for kind in ("rr", "grab", "cd_grab"):
        cursor = EpochCursor(make_ordering(kind, [6], seed=1, workers=[2]))
        cursor.next_batch(2)
        if kind != "rr":
            cursor.ordering.step(np.ones((1, 2, 3)))
        delay = make_stream(0, 2, 2)
        delay.normal()
        state = layout.worker_state(cursor, delay, 2)
        again = EpochCursor(make_ordering(kind, [6], seed=9, workers=[2]))
        stream = make_stream(9, 9, 9)
        layout.load_worker_state(again, stream, 2, state)
        assert stream_state(stream) == stream_state(delay)
        assert np.array_equal(again.perm, cursor.perm) and again.pos == cursor.pos
        assert np.array_equal(again.next_batch(4), cursor.next_batch(4))


def test_the_checkpoint_tree_comes_apart_into_the_parts_it_was_made_of():
    sizes = [3, 5]
    states = {j: {"rng": {"order": f"o{j}", "delay": f"d{j}"}, "ordering": {"kind": "rr"},
                  "order": {"perm": np.arange(n), "pos": 1, "epochs_started": 1}} for j, n in zip((1, 2), sizes)}
    pending = [Assignment(2, 4, True), Assignment(1, 4)]
    tree = layout.checkpoint_tree(
        root={"update": 3}, params={"params": np.ones(2), "momentum": np.zeros(2)}, method={"k": 1},
        engine={"version": 3, "contributions": np.array([0, 2, 1]), "pending": layout.pending_array(pending),
                "busy_seconds": 0.5, "wait_seconds": 0.25},
        clock={"sim_now": 1.5, "wall_time": 2.0, "worker_end": np.zeros(3), "arrivals": 0},
        scheduler={"seq": 5, "mirror": {"pos": np.array([1, 1]), "started": np.array([1, 1]),
                                        "sizes": np.array(sizes)},
                   "jobs": np.zeros((0, 5), np.int64), "times": np.zeros((0, 4)), "results": np.zeros((0, 4))},
        recorder={"row_samples": 4, "row_messages": 2, "row_compute": 0.0, "trace": {}, "eval": {}},
        master_rng="m", worker_trees=states)
    assert tree["order"]["perm"].shape == (2, 5) and tree["order"]["perm"][0, 3] == -1
    p = layout.parts(tree)
    assert p["engine"]["version"] == 3 and p["scheduler"]["seq"] == 5 and p["master_rng"] == "m"
    assert layout.pending_list(p["engine"]["pending"]) == pending
    back = layout.worker_states(tree, layout.shard_sizes(tree))
    assert np.array_equal(back[2]["order"]["perm"], np.arange(5)) and back[1]["rng"]["delay"] == "d1"


def test_the_orderings_declare_their_capabilities_as_plain_flags():
    from hpcsgd.ordering import ORDERINGS
    caps = {k: (c.per_example, c.pairs, c.coordinated) for k, c in ORDERINGS.items()}
    assert caps == {"rr": (False, False, False), "so": (False, False, False), "grab": (True, False, False),
                    "pair": (True, True, False), "cd_grab": (True, True, True)}
    assert [ORDERINGS[k].pair_differences(b) for k, b in (("rr", 8), ("cd_grab", 8), ("cd_grab", 1))] == [0, 4, 1]
