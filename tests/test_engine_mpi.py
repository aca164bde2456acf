"""The engine under mpiexec (2, 3 and 5 ranks): every rank runs each test.

Assertions are made on rank 0 from the files the master wrote; their outcome is
broadcast so that every rank passes or fails together and no rank waits alone.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mpi(min_size=2)


def comm():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def train(data_dir: Path, out: Path, *settings: str, config: str = "") -> int:
    """Run ``hpcsgd train`` in-process on every rank; returns the exit status."""
    from conftest import shared_dir
    from hpcsgd import run
    cfg_dir = shared_dir()
    path = cfg_dir / "job.toml"
    if comm().Get_rank() == 0:
        path.write_text(config)
    comm().Barrier()
    base = [f"data.dir={str(data_dir)!r}", f"run.out={str(out)!r}", "run.progress_every=0"]
    return run.train(comm(), str(path), base + list(settings), quiet=True)


def resume(path: Path, *settings: str) -> int:
    from hpcsgd import run
    return run.resume(comm(), str(path), list(settings), quiet=True)


def on_root(check) -> None:
    """Run ``check()`` on rank 0; every rank raises if it failed."""
    from hpcsgd.comm import bcast_text
    message = ""
    if comm().Get_rank() == 0:
        try:
            check()
        except AssertionError as exc:
            message = f"rank 0 check failed: {exc}" or "rank 0 check failed"
    message = bcast_text(comm(), message)
    assert not message, message


def load(run_dir: Path):
    from hpcsgd.checkpoint import load_checkpoint
    return load_checkpoint(run_dir)[1]


def test_sync_lowers_loss_and_rr_visits_every_example_once(data_dir):
    from conftest import shared_dir
    out = shared_dir() / "run"
    status = train(data_dir, out, "run.epochs=3", "method.kind='sync'", "method.lr=0.5",
                   "order.batch=16", "order.record_history=true", "data.source='digits'")
    assert status == 0

    def check():
        tree = load(out)
        ev = tree["eval"]
        assert ev["train_loss"][-1] < 0.5 * ev["train_loss"][0], ev["train_loss"]
        assert ev["test_accuracy"][-1] > 0.85, ev["test_accuracy"]
        assert np.all(np.diff(ev["wall_time"]) >= 0), "evaluation time leaked into wall_time"
        hist = tree["order"]["history"]
        M = comm().Get_size() - 1
        assert hist.shape[:2] == (3, M)
        for j in range(M):
            n = int((hist[0, j] >= 0).sum())
            for e in range(3):
                row = hist[e, j][hist[e, j] >= 0]
                assert np.array_equal(np.sort(row), np.arange(n)), f"worker {j+1} epoch {e}"
            assert not np.array_equal(hist[0, j], hist[1, j]), "rr must reshuffle every epoch"
        if M > 1:
            assert not np.array_equal(hist[0, 0][:5], hist[0, 1][:5]), "workers must use different streams"
        tr = tree["trace"]
        assert np.all(tr["staleness"] == 0) and np.all(tr["k"] == M)
        assert np.array_equal(tr["update"], np.arange(1, tr["update"].size + 1))
    on_root(check)


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("method", ["fastest_k", "adaptive_kb"])
def test_a_50x_straggler_is_left_behind_and_its_dropped_work_counted(data_dir, method):
    """Wall clock, real sleeps.  adaptive_kb waits for everyone until every worker has
    reported twice, then picks (k, b) from the measured times."""
    from conftest import shared_dir
    out = shared_dir() / "run"
    M = comm().Get_size() - 1
    status = train(data_dir, out, f"method.kind='{method}'", f"method.k={M - 1}", "run.max_updates=40",
                   f"method.targets=[{16 * (M - 1)}]", "method.refresh_every=10",
                   "stragglers.model='fixed'", "stragglers.comm_mean=0.002",
                   "stragglers.slow_workers=[1]", "stragglers.slow_factor=50.0",
                   "data.source='digits'", "run.clock='wall'")
    assert status == 0

    def check():
        tree = load(out)
        tr = tree["trace"]
        contributions = tree["state"]["engine"]["contributions"]
        assert tr["update"].size == 40
        assert np.all(tr["staleness"] == 0), "fastest-k must never apply a stale gradient"
        assert contributions[1] <= 4, f"slow worker contributed to {contributions[1]} of 40 updates"
        assert np.all(tr["k"][4:] < M), tr["k"]
        # the slow worker computed (and was preempted) round after round: the computed
        # load exceeds what was applied, and its dropped replies count as messages
        applied = int((tr["k"] * tr["batch"]).sum())
        assert tr["samples_computed"].sum() > applied + 20 * 8, (tr["samples_computed"].sum(), applied)
        assert tr["messages"].sum() >= M * 40 + tr["k"].sum()
    on_root(check)


SIM = ("run.clock='simulated'", "stragglers.model='exp'", "stragglers.comm_mean=0.01",
       "stragglers.compute_mean=0.001", "stragglers.speeds='linear'", "data.source='digits'",
       "method.momentum=0.5")


MEASURED = {"wall_time", "compute_seconds"}  # real-time measurements, not part of the trajectory


def compare_runs(a: dict, b: dict) -> None:
    assert np.array_equal(a["model"]["params"], b["model"]["params"]), "parameters differ"
    for table in ("trace", "eval"):
        assert set(a[table]) == set(b[table])
        for col in a[table]:
            if col in MEASURED:
                continue
            assert np.array_equal(a[table][col], b[table][col], equal_nan=True), f"/{table}/{col} differs"


def run_whole_and_resumed(data_dir: Path, base: Path, common: tuple, total: int) -> None:
    """``whole``: ``total`` updates with a checkpoint halfway; ``half``: stopped halfway
    and resumed to ``total``.  Compare them with ``compare_runs``."""
    half = total // 2
    assert train(data_dir, base / "whole", *common, f"run.max_updates={total}",
                 f"run.checkpoint_every={half}") == 0
    assert train(data_dir, base / "half", *common, f"run.max_updates={half}") == 0
    assert resume(base / "half", f"run.max_updates={total}") == 0


@pytest.mark.parametrize("method", ["sync", "fastest_k"])
def test_simulated_clock_is_bit_reproducible(data_dir, method):
    from conftest import shared_dir
    base = shared_dir()
    k = "method.k=1"
    for name in ("a", "b"):
        assert train(data_dir, base / name, *SIM, f"method.kind='{method}'", k, "run.max_updates=30") == 0

    def check():
        a, b = load(base / "a"), load(base / "b")
        compare_runs(a, b)
        sim = a["trace"]["sim_time"]
        assert np.all(np.diff(sim) >= 0) and sim[-1] > 0
    on_root(check)


def test_max_seconds_stops_on_the_simulated_clock(data_dir):
    from conftest import shared_dir
    out = shared_dir() / "run"
    assert train(data_dir, out, *SIM, "method.kind='fastest_k'", "method.k=1", "run.epochs=0",
                 "run.max_seconds=0.5") == 0

    def check():
        sim = load(out)["trace"]["sim_time"]
        assert sim[-1] >= 0.5 > sim[-2], sim[-3:]
    on_root(check)


@pytest.mark.parametrize("method", ["sync", "fastest_k", "adaptive_k", "adaptive_kb", "adaptive_kb+bound"])
def test_resume_continues_exactly(data_dir, method):
    from conftest import shared_dir
    base = shared_dir()
    M = comm().Get_size() - 1
    targets = [4, 8 * M, 24 * M]
    method, _, bound = method.partition("+")
    common = (*SIM, f"method.kind='{method}'", "method.k=1", "run.eval_every=5", "order.batch=8",
              "method.burn_in=2", "method.lr=0.3")
    if method == "adaptive_kb":
        common += (f"method.targets={targets}",)
    if bound:  # constants that make the bound cross both switching levels within 40 updates
        common += ("method.switch='bound'", "method.bound_c=0.5", "method.bound_L=1.0",
                   "method.bound_sigma2=1.33", "method.bound_gap0=1.0")
    run_whole_and_resumed(data_dir, base, common, 40)

    def check():
        whole, half = load(base / "whole"), load(base / "half")
        assert int(half["update"]) == 40
        compare_runs(whole, half)
        tr = whole["trace"]
        assert np.all(tr["staleness"] == 0)
        if method in ("adaptive_k", "adaptive_kb"):
            assert np.all(np.diff(tr["stage"]) >= 0), tr["stage"]
            assert tr["stage"][-1] >= (1 if method == "adaptive_kb" or M > 1 else 0), tr["stage"]
        if method == "adaptive_k":
            assert np.all(tr["k"] == np.minimum(1 + tr["stage"], M)) and np.all(tr["batch"] == 8)
        if method == "adaptive_kb":
            # every update's (k, b) is the stage's argmin of mu(k, ceil(K_s / k))
            from hpcsgd.config import resolve
            from hpcsgd.methods.timing import IterationTimeModel
            cfg = resolve({}, [s for s in SIM if s.startswith("stragglers.")])
            times = IterationTimeModel(cfg["stragglers"], M, seed=0)
            for stage in np.unique(tr["stage"]):
                k, b = times.best_kb(targets[stage])
                rows = tr["stage"] == stage
                assert np.all(tr["k"][rows] == k) and np.all(tr["batch"][rows] == b), (stage, k, b)
        assert np.array_equal(whole["order"]["perm"], half["order"]["perm"])
    on_root(check)


def test_resume_refuses_other_world_size(data_dir):
    """A wall-clock checkpoint of a different number of workers than this job's ranks is
    refused on every rank."""
    from conftest import shared_dir
    from hpcsgd.checkpoint import save_checkpoint
    from hpcsgd.errors import UserError
    base = shared_dir()
    assert train(data_dir, base / "run", "run.max_updates=4", "data.source='digits'") == 0
    if comm().Get_rank() == 0:
        tree = load(base / "run")
        M = int(tree["world_size"]) - 1  # one more worker, consistently: the loader checks the layout
        tree["world_size"] = M + 2
        eng = tree["state"]["engine"]
        for name in ("worker_end", "contributions"):  # by rank: the new worker copies worker 1
            eng[name] = np.append(eng[name], eng[name][1:2])
        for name in ("mirror_pos", "mirror_started", "mirror_sizes"):
            eng[name] = np.append(eng[name], eng[name][:1])
        tree["state"]["workers"][f"worker_{M + 1}"] = {**tree["state"]["workers"]["worker_1"],
                                                       "workers": np.array([M + 1])}
        tree["rng"][f"worker_{M + 1}"] = tree["rng"]["worker_1"]
        order = tree["order"]
        order["perm"] = np.vstack([order["perm"], order["perm"][:1]])
        for name in ("pos", "epochs_started"):
            order[name] = np.append(order[name], order[name][:1])
        eng["version"] = int(tree["update"]) + 1
        cfg = json.loads(tree["config"])
        cfg["run"]["workers"] = M + 1
        tree["config"] = json.dumps(cfg)
        for key in ("format", "format_version", "created"):
            tree.pop(key, None)
        save_checkpoint(base / "run", {**tree, "update": int(tree["update"]) + 1})
    comm().Barrier()
    M = comm().Get_size() - 1
    with pytest.raises(UserError, match=rf"is a run of {M + 1} workers, this job has {M} worker ranks; "
                                         rf"resume with mpiexec -n {M + 2}"):
        resume(base / "run")


@pytest.mark.parametrize("pair_dtype", ["float64", "float32"])
def test_cd_grab_orders_equal_the_standalone_object(data_dir, pair_dtype):
    """The engine's CD-GraB (signs at the master, placement on the workers) builds the
    same orders as the standalone ``cd_grab`` fed the same per-example gradients; with
    ``order.pair_dtype = float32``, fed their pair differences rounded to float32.

    A vanishing step (1e-300) leaves every gradient equal to its value at w = 0, so
    the test can recompute them from the data."""
    from conftest import shared_dir
    from hpcsgd.data import open_dataset, partition, read_labels, read_rows
    from hpcsgd.models import make_model
    from hpcsgd.ordering import make_ordering
    out = shared_dir() / "run"
    M, B, epochs = comm().Get_size() - 1, 6, 3
    status = train(data_dir, out, "data.source='breast_cancer'", "model.kind='logistic'",
                   "order.kind='cd_grab'", f"order.batch={B}", f"run.epochs={epochs}",
                   "order.record_history=true", "method.lr=1e-300", f"order.pair_dtype='{pair_dtype}'")
    assert status == 0

    def check():
        info = open_dataset("breast_cancer", data_dir)
        parts = partition(read_labels(info, "train"), M, "iid", 0, task=info.task)
        n = min(len(p) for p in parts)
        model = make_model("logistic", info.n_features, 2)
        grads = []
        for p in parts:
            X, y = read_rows(info, "train", p[:n])
            G = np.empty((n, model.dim))
            model.per_example_grads(np.zeros(model.dim), X, y, np.arange(n), G)
            grads.append(G)
        order = make_ordering("cd_grab", [n] * M, seed=0)
        if pair_dtype == "float32":  # the reference's differences, rounded as the wire rounds them
            pairs = order._pairs
            order._pairs = lambda i, g: (lambda first, second, c: (first, second, c.astype(np.float32)))(*pairs(i, g))
        want = []
        for e in range(epochs):
            perms = order.next_epoch()
            want.append(np.stack(perms))
            for start in range(0, n, B):
                order.step([grads[j][p[start:start + B]] for j, p in enumerate(perms)])
        hist = load(out)["order"]["history"]
        assert hist.shape == (epochs, M, n)
        for e in range(epochs):
            for j in range(M):
                assert np.array_equal(np.sort(hist[e, j]), np.arange(n)), "not a permutation"
            assert np.array_equal(hist[e], want[e]), f"epoch {e} differs from the standalone cd_grab"
    on_root(check)


@pytest.mark.parametrize("order", ["grab", "pair", "cd_grab"])
def test_balancing_orders_resume_mid_epoch_exactly(data_dir, order):
    from conftest import shared_dir
    base = shared_dir()
    common = (*SIM, "data.source='breast_cancer'", "model.kind='logistic'", "method.kind='sync'",
              f"order.kind='{order}'", "order.batch=8", "run.eval_every=7", "order.record_history=true")
    run_whole_and_resumed(data_dir, base, common, 70)

    def check():
        whole, half = load(base / "whole"), load(base / "half")
        compare_runs(whole, half)
        assert np.array_equal(whole["order"]["history"], half["order"]["history"])
        assert whole["order"]["history"].shape[0] >= 2, "the run must cross an epoch boundary"
    on_root(check)


class JobClock:
    """Simulated time of jobs as the engine keeps it: each worker runs its jobs in FIFO
    order, each job lasting one draw of the worker's delay stream (communication-only
    delays, so the batch size does not matter)."""

    def __init__(self, M: int, seed: int, stragglers: dict):
        from hpcsgd import streams
        from hpcsgd.stragglers import DelayModel
        self.delays = {j: DelayModel(stragglers, j, streams.make_stream(seed, j, streams.DELAY))
                       for j in range(1, M + 1)}
        self.end = {j: 0.0 for j in range(1, M + 1)}
        self.outstanding = {j: 0 for j in range(1, M + 1)}
        self.events, self.seq = [], 0

    def assign(self, j: int, t: float, version: int) -> None:
        start = max(t, self.end[j])
        self.end[j] = start + sum(self.delays[j].draw(1))
        self.outstanding[j] += 1
        heapq.heappush(self.events, (self.end[j], self.seq, j, version))  # ties: first assigned
        self.seq += 1

    def next(self) -> tuple[float, int, int]:
        """The next job to finish: (time, worker, the version it was computed at)."""
        t, _, j, v = heapq.heappop(self.events)
        self.outstanding[j] -= 1
        return t, j, v


def simulate_async(M: int, rule: str, seed: int, updates: int, stragglers: dict):
    """A single-process event simulation of asynchronous SGD's schedule: per update the
    finisher, its staleness, the worker given the new job, that worker's outstanding
    jobs and the simulated time."""
    from hpcsgd import streams
    clock, rng = JobClock(M, seed, stragglers), streams.make_stream(seed, 0, streams.METHOD)
    version, perm, out = 0, [], []
    for j in range(1, M + 1):
        clock.assign(j, 0.0, version)
    while len(out) < updates:
        t, j, v = clock.next()
        if rule == "pure":
            nxt = j
        elif rule == "random":
            nxt = int(rng.integers(1, M + 1))
        else:
            if not perm or (rule == "shuffle" and len(out) % M == 0):
                perm = list(rng.permutation(M) + 1)
            nxt = int(perm[len(out) % M])
        out.append((j, version - v, nxt, clock.outstanding[nxt] + 1, t))
        version += 1
        clock.assign(nxt, t, version)
    return out


ASYNC = ("run.clock='simulated'", "stragglers.model='exp'", "stragglers.comm_mean=1.0",
         "stragglers.speeds='linear'", "data.source='breast_cancer'", "model.kind='logistic'",
         "method.kind='async'", "method.lr=0.05", "order.batch=0", "run.epochs=0")


@pytest.mark.parametrize("rule", ["pure", "random", "shuffle", "shuffle_once"])
def test_async_schedule_matches_an_event_simulation(data_dir, rule):
    from conftest import shared_dir
    from hpcsgd.config import resolve
    out = shared_dir() / "run"
    M, n = comm().Get_size() - 1, 60
    assert train(data_dir, out, *ASYNC, f"method.assign='{rule}'", f"run.max_updates={n}") == 0

    def check():
        tr = load(out)["trace"]
        cfg = resolve({}, [s for s in ASYNC if s.startswith("stragglers.")])
        want = simulate_async(M, rule, 0, n, cfg["stragglers"])
        got = list(zip(tr["worker"].tolist(), tr["staleness"].tolist(), tr["assigned"].tolist(),
                       tr["queue"].tolist(), tr["sim_time"].tolist()))
        assert got == want
        # full local gradients: every job is a worker's whole shard
        assert np.all(tr["k"] == 1) and np.all(tr["batch"] >= 100)
        if rule != "pure" and M > 1:
            assert tr["queue"].max() > 1, "some jobs must have waited in a queue"
    on_root(check)


@pytest.mark.parametrize("rule", ["random", "shuffle"])
def test_async_resume_with_queued_jobs_is_exact(data_dir, rule):
    from conftest import shared_dir
    base = shared_dir()
    common = (*ASYNC, f"method.assign='{rule}'", "order.batch=16", "run.eval_every=10")
    run_whole_and_resumed(data_dir, base, common, 60)

    def check():
        whole, half = load(base / "whole"), load(base / "half")
        compare_runs(whole, half)
        M = comm().Get_size() - 1
        eng = whole["state"]["engine"]
        # jobs in flight plus the one created by the last update, not yet sent
        assert eng["inflight"]["jobs"].shape[0] + eng["pending"].shape[0] == M, "M jobs at every moment"
    on_root(check)


def numpy_logistic_grad(X, y, w, nonconvex=0.0):
    """Mean logistic-loss gradient over rows of X, plus the nonconvex regulariser's."""
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    z = A @ w
    g = A.T @ (1.0 / (1.0 + np.exp(-z)) - y) / X.shape[0]
    return g + nonconvex * 2.0 * w / (1.0 + w * w) ** 2


PIAG = ("run.clock='simulated'", "stragglers.model='exp'", "stragglers.comm_mean=1.0",
        "stragglers.speeds='linear'", "data.source='breast_cancer'", "model.kind='logistic'",
        "model.l1=0.01", "order.batch=0", "run.epochs=0")


def test_piag_with_one_worker_is_proximal_gradient_descent(data_dir):
    """M = 1: every gradient is fresh (tau = 0), so adaptive2 steps alpha gamma' and PIAG
    is the proximal gradient method on the worker's shard."""
    if comm().Get_size() != 2:
        pytest.skip("needs exactly one worker (2 ranks)")
    from conftest import shared_dir
    from hpcsgd.data import open_dataset, read_rows
    out = shared_dir() / "run"
    n = 25
    assert train(data_dir, out, *PIAG, "method.kind='piag'", "method.gamma_prime=2.0",
                 "method.alpha=0.5", f"run.max_updates={n}", "model.init='ones'") == 0

    def check():
        tree = load(out)
        info = open_dataset("breast_cancer", data_dir)
        X, y = read_rows(info, "train", np.arange(info.n_train))
        x, gamma = np.ones(X.shape[1] + 1), 0.5 * 2.0
        for _ in range(n):
            v = x - gamma * numpy_logistic_grad(X, y, x)
            x = np.sign(v) * np.maximum(np.abs(v) - gamma * 0.01, 0.0)
        tr = tree["trace"]
        assert np.all(tr["staleness"] == 0) and np.all(tr["step_size"] == gamma)
        np.testing.assert_allclose(tree["model"]["params"], x, rtol=1e-10, atol=1e-12)
        assert np.count_nonzero(x == 0.0) > 0, "the l1 prox should zero some weights"
    on_root(check)


@pytest.mark.mpi(min_size=3)
def test_piag_delays_follow_the_version_arithmetic(data_dir):
    """tau_k = k - min_i s_i: recomputed from the trace (who reported at which update)
    and each update's versions, the delays and steps must be the policy's."""
    from conftest import shared_dir
    from hpcsgd.methods.stepsize import StepPolicy
    out = shared_dir() / "run"
    M = comm().Get_size() - 1
    assert train(data_dir, out, *PIAG, "method.kind='piag'", "method.gamma_prime=0.5",
                 "run.max_updates=60") == 0

    def check():
        tr = load(out)["trace"]
        # every update absorbs one arrival (the first: all M), and the reporter's new job
        # is at the new version; so worker j's stored gradient is from the version after
        # the update that last absorbed it
        s = np.zeros(M + 1, dtype=np.int64)
        policy = StepPolicy("adaptive2", 0.5)
        for k, (w, tau, step) in enumerate(zip(tr["worker"], tr["staleness"], tr["step_size"])):
            if k > 0:
                s[w] = last[w]
            want = k - s[1:].min()
            assert tau == want, (k, tau, want)
            assert step == policy.step(int(want))
            last = {j: k + 1 for j in range(1, M + 1)} if k == 0 else {**last, w: k + 1}
        assert tr["staleness"].max() >= M - 1
    on_root(check)


@pytest.mark.parametrize("policy", ["adaptive1", "fixed"])
def test_piag_resume_restores_the_gradient_table_and_the_policy(data_dir, policy):
    from conftest import shared_dir
    base = shared_dir()
    common = (*PIAG, "method.kind='piag'", "method.gamma_prime=0.5", f"method.stepsize='{policy}'",
              "method.tau_max=6", "run.eval_every=10")
    run_whole_and_resumed(data_dir, base, common, 60)

    def check():
        whole, half = load(base / "whole"), load(base / "half")
        compare_runs(whole, half)
        assert whole["trace"]["staleness"].max() > 0 or comm().Get_size() == 2
    on_root(check)


@pytest.mark.mpi(min_size=3)
def test_async_bcd_touches_one_block_per_update_and_resumes_exactly(data_dir):
    from conftest import shared_dir
    from hpcsgd.data import open_dataset, read_rows
    base = shared_dir()
    common = (*PIAG, "method.kind='async_bcd'", "data.partition='replicate'", "method.blocks=4",
              "method.gamma_prime=1.0",
              "model.init='ones'", "model.l1=0.0", "run.eval_every=10")
    assert train(data_dir, base / "one", *common, "run.max_updates=1") == 0
    run_whole_and_resumed(data_dir, base, common, 40)

    def check():
        one = load(base / "one")
        changed = np.flatnonzero(one["model"]["params"] != 1.0)
        d = one["model"]["params"].size
        edges = np.linspace(0, d, 5).round().astype(int)
        b = int(one["trace"]["block"][0])
        assert changed.size and changed.min() >= edges[b] and changed.max() < edges[b + 1], (changed, b)
        # the block gradient is the whole objective's (every worker holds every row)
        info = open_dataset("breast_cancer", data_dir)
        X, y = read_rows(info, "train", np.arange(info.n_train))
        g = numpy_logistic_grad(X, y, np.ones(d))
        step = one["trace"]["step_size"][0]
        np.testing.assert_allclose(one["model"]["params"][edges[b]:edges[b + 1]],
                                   1.0 - step * g[edges[b]:edges[b + 1]], rtol=1e-12)
        whole, half = load(base / "whole"), load(base / "half")
        compare_runs(whole, half)
        assert whole["trace"]["staleness"].min() >= 0 and whole["trace"]["staleness"].max() > 0
        assert len(set(whole["trace"]["block"].tolist())) == 4
    on_root(check)


def simulate_gsgm(M: int, seed: int, updates: int, stragglers: dict, shards: list, w0: np.ndarray,
                  lr: float, beta: float):
    """GSGM written out in one process: white-list rounds, partial averaging, momentum
    at the master; every finisher gets the current model back at once.  Returns the
    per-update (worker, staleness, round, averaged, deferred, time) and the model."""
    clock = JobClock(M, seed, stragglers)
    models, w, m = {0: w0.copy()}, w0.copy(), np.zeros_like(w0)
    listed, buffers, rnd, deferred, out = set(range(1, M + 1)), {j: [] for j in range(1, M + 1)}, 0, 0, []
    for j in range(1, M + 1):
        clock.assign(j, 0.0, 0)
    while len(out) < updates:
        t, j, v = clock.next()
        g = numpy_logistic_grad(*shards[j - 1], models[v])
        if j not in listed:
            buffers[j].append(g)
            deferred += 1
        else:
            grads = [g] + buffers[j]
            m = beta * m + np.mean(grads, axis=0)
            w = w - lr * m
            out.append((j, len(models) - 1 - v, rnd, len(grads), deferred, t))
            buffers[j], deferred = [], 0
            listed.discard(j)
            if not listed:
                listed, rnd = set(range(1, M + 1)), rnd + 1
            models[len(models)] = w.copy()
        clock.assign(j, t, len(models) - 1)
    return out, w


GSGM = (*ASYNC[:-4], "method.kind='gsgm'", "method.lr=0.05", "order.batch=0", "run.epochs=0",
        "model.init='ones'")


@pytest.mark.mpi(min_size=3)
def test_gsgm_matches_a_single_process_simulation(data_dir):
    from conftest import shared_dir
    from hpcsgd.config import resolve
    from hpcsgd.data import open_dataset, partition, read_labels, read_rows
    out = shared_dir() / "run"
    M, n = comm().Get_size() - 1, 40
    assert train(data_dir, out, *GSGM, "method.momentum=0.9", f"run.max_updates={n}") == 0

    def check():
        tree = load(out)
        tr = tree["trace"]
        cfg = resolve({}, [s for s in GSGM if s.startswith("stragglers.")])
        info = open_dataset("breast_cancer", data_dir)
        parts = partition(read_labels(info, "train"), M, "iid", 0, task=info.task)
        shards = [read_rows(info, "train", p) for p in parts]
        want, w = simulate_gsgm(M, 0, n, cfg["stragglers"], shards, np.ones(info.n_features + 1), 0.05, 0.9)
        got = list(zip(tr["worker"].tolist(), tr["staleness"].tolist(), tr["round"].tolist(),
                       tr["averaged"].tolist(), tr["deferred"].tolist(), tr["sim_time"].tolist()))
        assert got == want
        np.testing.assert_allclose(tree["model"]["params"], w, rtol=1e-9, atol=1e-12)
        # stragglers.speeds = linear: the fast workers are ahead and get deferred
        assert tr["deferred"].sum() > 0 and tr["averaged"].max() > 1
        assert tr["round"][-1] >= 3
    on_root(check)


@pytest.mark.mpi(min_size=3)
def test_gsgm_resume_with_buffered_gradients_is_exact(data_dir):
    """Also evaluations by clock time (run.eval_seconds): each is the first update at or
    after a multiple of eval_seconds, and a resumed run keeps that schedule."""
    from conftest import shared_dir
    base = shared_dir()
    common = (*GSGM, "method.momentum=0.9", "order.batch=16", "run.eval_seconds=1.5")
    run_whole_and_resumed(data_dir, base, common, 60)

    def check():
        whole, half = load(base / "whole"), load(base / "half")
        at_cut = load(base / "whole" / "ckpt-000000030.h5")["state"]["method"]
        assert at_cut["deferred_count"].sum() > 0, "the checkpoint must hold deferred gradients"
        # the stopped half ran one final evaluation at update 30, off the schedule
        ev = half["eval"]
        if 30 not in whole["eval"]["update"]:
            keep = ev["update"] != 30
            half["eval"] = {k: v[keep] for k, v in ev.items()}
        compare_runs(whole, half)
        t, upd = whole["trace"]["sim_time"], whole["eval"]["update"]
        assert upd.size >= 5
        for u in upd[1:-1]:  # periodic evaluations (the first is at 0, the last the final one)
            due = (np.floor(t[u - 2] / 1.5) + 1) * 1.5 if u >= 2 else 1.5
            assert t[u - 1] >= due > (t[u - 2] if u >= 2 else 0.0), (u, t[u - 1], due)
    on_root(check)


def test_gsgm_with_every_part_off_is_pure_async(data_dir):
    from conftest import shared_dir
    base = shared_dir()
    common = (*GSGM, "run.max_updates=40", "run.eval_every=10")
    assert train(data_dir, base / "gsgm", *common, "method.schedule=false", "method.average=false") == 0
    assert train(data_dir, base / "async", *common, "method.kind='async'", "method.assign='pure'") == 0

    def check():
        a, b = load(base / "gsgm"), load(base / "async")
        assert np.array_equal(a["model"]["params"], b["model"]["params"])
        for col in ("worker", "staleness", "sim_time", "step_size"):
            assert np.array_equal(a["trace"][col], b["trace"][col]), col
        for col in ("train_loss", "test_accuracy"):
            assert np.array_equal(a["eval"][col], b["eval"][col]), col
        assert np.all(a["trace"]["averaged"] == 1) and np.all(a["trace"]["deferred"] == 0)
    on_root(check)


@pytest.mark.mpi(min_size=3)
def test_cd_grab_trains_on_equal_shards_and_evaluates_every_row(data_dir):
    """A Dirichlet split gives unequal shards; CD-GraB trains on the smallest one's size
    per worker, but /eval/train_loss is the objective over every training row."""
    from conftest import shared_dir
    from hpcsgd.data import open_dataset, read_rows
    from hpcsgd.models import make_model
    out = shared_dir() / "run"
    assert train(data_dir, out, "run.clock='simulated'", "data.source='breast_cancer'",
                 "model.kind='logistic'", "data.partition='dirichlet'", "data.alpha=1.0",
                 "order.kind='cd_grab'", "order.batch=2", "run.epochs=0", "run.max_updates=20") == 0

    def check():
        tree = load(out)
        info = open_dataset("breast_cancer", data_dir)
        X, y = read_rows(info, "train", np.arange(info.n_train))
        model = make_model("logistic", info.n_features, 2)
        w = tree["model"]["params"]
        want = model.loss_sum(w, X, y, np.arange(info.n_train)) / info.n_train
        assert tree["eval"]["update"][-1] == 20
        assert tree["eval"]["train_loss"][-1] == pytest.approx(want, rel=1e-12)
        sizes = tree["state"]["engine"]["mirror_sizes"]
        assert len(set(sizes.tolist())) == 1 and sizes.sum() < info.n_train, sizes
    on_root(check)


def test_no_test_rows_gives_nan_test_metrics(data_dir):
    from conftest import shared_dir
    from hpcsgd.data import prepare
    base = shared_dir()
    if comm().Get_rank() == 0:
        prepare("digits", data_dir=base, test_fraction=0.0)
    comm().Barrier()
    out = base / "run"
    assert train(base, out, "run.clock='simulated'", "run.epochs=0", "run.max_updates=10") == 0

    def check():
        tree = load(out)
        assert tree["test_rows"] == 0
        ev = tree["eval"]
        assert np.isnan(ev["test_loss"]).all() and np.isnan(ev["test_accuracy"]).all()
        assert np.isfinite(ev["train_loss"]).all()
    on_root(check)


def test_a_batch_larger_than_the_model_runs(data_dir):
    """Logistic regression on breast_cancer has d = 31 parameters; a batch of 48 is an
    ordinary setting (the worker's receive buffer is longer than the model then)."""
    from conftest import shared_dir
    out = shared_dir() / "run"
    for order in ("rr", "pair"):
        assert train(data_dir, out / order, "run.clock='simulated'", "data.source='breast_cancer'",
                     "model.kind='logistic'", "order.batch=48", f"order.kind='{order}'", "run.epochs=1") == 0

    def check():
        for order in ("rr", "pair"):
            tree = load(out / order)
            assert tree["model"]["params"].size == 31 and np.isfinite(tree["model"]["params"]).all()
            assert tree["trace"]["batch"].max() == 48
    on_root(check)


@pytest.mark.parametrize("method", ["sync", "fastest_k", "adaptive_k", "adaptive_kb", "async", "gsgm",
                                    "piag", "async_bcd"])
def test_every_method_makes_progress_when_simulated_times_tie(data_dir, method):
    """stragglers.model = 'none' in the simulated clock: every duration is 0, so every
    completion ties at t = 0.  Ties go to the job handed out first, so the run ends (GSGM
    used to give worker 1 every event, deferring it forever) and, for the one-job-per-
    worker methods, the workers take turns in rank order."""
    from conftest import shared_dir
    out = shared_dir() / "run"
    M = comm().Get_size() - 1
    extra = ["data.partition='replicate'"] if method == "async_bcd" else []
    assert train(data_dir, out, "run.clock='simulated'", "stragglers.model='none'", f"method.kind='{method}'",
                 "data.source='breast_cancer'", "model.kind='logistic'", "order.batch=8", "run.epochs=0",
                 "run.max_updates=24", *extra) == 0

    def check():
        tr = load(out)["trace"]
        assert tr["update"].size == 24 and np.all(tr["sim_time"] == 0.0)
        if method in ("async", "gsgm", "async_bcd"):
            assert tr["worker"].tolist() == [1 + i % M for i in range(24)], tr["worker"]
    on_root(check)
