"""Set up and run one job on every rank: ``train`` (fresh) and ``resume``.

Set-up is collective and careful: every step that can fail on bad input runs on every
rank and is followed by ``first_error``, so a bad file seen by one worker stops all
ranks with the same one-line message (exit 2) instead of leaving the others waiting.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from hpcsgd import checkpoint
from hpcsgd import comm as C
from hpcsgd import transport as T
from hpcsgd.config import (check_layout, from_json, load_config_checked, resolve_servers, resolve_workers,
                           resume_config_checked, to_json)
from hpcsgd.data import dataset_fingerprint, open_dataset, partition, read_labels, read_rows, split_even
from hpcsgd.errors import UserError
from hpcsgd.kernels import optim
from hpcsgd.lock import RunLock
from hpcsgd.engine import layout
from hpcsgd.engine import servers
from hpcsgd.engine.master import Engine
from hpcsgd.engine.servers import ParamSlices, Servers
from hpcsgd.methods import make_method, needs_L, trace_extras
from hpcsgd.models import make_model
from hpcsgd.ordering import ORDERINGS, EpochCursor, make_ordering
from hpcsgd.placement import WorkerMap, describe
from hpcsgd.stop import StopRequest
from hpcsgd import streams
from hpcsgd.streams import make_stream, set_stream_state
from hpcsgd.stragglers import DelayModel
from hpcsgd.worker import Worker, WorkerRank


def _collective(comm: MPI.Comm, fn, *args):
    """Run ``fn`` on this rank; if any rank raised UserError, every rank raises it."""
    value, message = None, None
    try:
        value = fn(*args)
    except UserError as exc:
        message = str(exc)
    first = C.first_error(comm, message)
    if first is not None:
        if message and message != first:  # this rank failed differently: say so too
            sys.stderr.write(f"hpcsgd: error (rank {comm.Get_rank()}): {message}\n")
            sys.stderr.flush()
        exc = UserError(first)
        exc.shared = True
        raise exc
    return value


def _on_root(comm: MPI.Comm, fn, *args):
    """``_collective`` for a step only rank 0 performs (reading a file, say)."""
    return _collective(comm, fn if comm.Get_rank() == 0 else (lambda *_: None), *args)


def _check_slurm(comm: MPI.Comm) -> None:
    """Under Slurm, catch ranks that did not start as one MPI job.  Plain ``srun``
    without PMI starts every task as a singleton (world size 1 in an n-task step).  The
    job scripts also export HPCSGD_NTASKS, the allocation's task count, because
    mpiexec's ranks only see its one-task-per-node launcher step in SLURM_NTASKS."""
    world = comm.Get_size()
    step = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or ""
    fix = "launch with 'mpiexec -n $SLURM_NTASKS hpcsgd ...' or 'srun --mpi=pmi2 hpcsgd ...'"
    if world == 1 and step.isdigit() and int(step) > 1:
        raise UserError(f"MPI world size is 1 in a Slurm step of {step} tasks: the ranks started as "
                        f"singletons, not one MPI job (plain srun without PMI does that); {fix}")
    wanted = os.environ.get("HPCSGD_NTASKS", "")
    if wanted.isdigit() and int(wanted) != world:
        raise UserError(f"MPI world size is {world} but the job script asked for HPCSGD_NTASKS = "
                        f"{wanted} ranks (--ntasks = workers + 1); {fix}")


def _default_eval_every(cfg: dict, sizes: list[int], n_workers: int) -> int:
    """About 20 evaluations over the run, fixed once so resumed runs keep the cadence."""
    b = cfg["order"]["batch"]
    per_epoch = max(math.ceil(n / (b or n)) for n in sizes)
    total = cfg["run"]["max_updates"] or cfg["run"]["epochs"] * per_epoch
    if cfg["run"]["epochs"]:
        total = min(total, cfg["run"]["epochs"] * per_epoch)
    if not total:  # only a time limit: about one evaluation per epoch
        return per_epoch
    return max(1, total // 20)


def _setup(comm: MPI.Comm, cfg: dict, workers: WorkerMap):
    """Data, partition and model on every rank; a worker rank reads only its workers'
    rows (``local``: each hosted worker's train and test rows)."""
    rank, M = comm.Get_rank(), workers.M
    info = open_dataset(cfg["data"]["source"], Path(cfg["data"]["dir"]))
    if cfg["model"]["kind"] == "logistic" and info.task != "binary":
        raise UserError(f"config: model.kind = 'logistic' needs a binary data set; "
                        f"{info.name} is {info.task} (use softmax)")
    if cfg["model"]["kind"] == "least_squares" and info.task != "regression" and info.n_classes > 2:
        raise UserError(f"config: model.kind = 'least_squares' needs regression or binary labels; "
                        f"{info.name} is {info.task}")
    if cfg["model"]["kind"] in ("softmax", "mlp", "logistic") and info.task == "regression":
        raise UserError(f"config: model.kind = {cfg['model']['kind']!r} needs class labels; "
                        f"{info.name} is a regression set (use least_squares)")
    labels = read_labels(info, "train")
    parts = partition(labels, M, cfg["data"]["partition"], cfg["run"]["seed"],
                      alpha=cfg["data"]["alpha"], task=info.task)
    n_classes = max(info.n_classes, 2) if info.task != "regression" else 1
    model = make_model(cfg["model"]["kind"], info.n_features, n_classes, hidden=cfg["model"]["hidden"],
                       l2=cfg["model"]["l2"], nonconvex=cfg["model"]["nonconvex"])
    sizes = [len(p) for p in parts]
    if ORDERINGS[cfg["order"]["kind"]].coordinated:
        # Shared pointers need equal shards: every worker trains on the first n_min rows
        # of its shard (all of them are still evaluated).
        sizes = [min(sizes)] * M
    check_layout(cfg, M, sizes, model.dim)
    local = None
    if 0 < rank <= workers.R:  # a worker rank (parameter servers hold no rows)
        tests = split_even(info.n_test, M)
        local = {j: (*read_rows(info, "train", parts[j - 1]), *read_rows(info, "test", tests[j - 1]))
                 for j in workers.hosted(rank)}
    data = {"train_rows": info.n_train, "test_rows": info.n_test, "path": str(info.path),
            "fingerprint": dataset_fingerprint(info) if rank == 0 else ""}
    return model, sizes, local, data


def _estimate_L(comm: MPI.Comm, model, workers: WorkerMap, local: dict | None) -> float:
    """Collective: the objective's smoothness from the largest eigenvalue of A^T A / n,
    A = [X, 1] over every worker's rows, by power iteration (rank 0 holds no rows).
    Rank 0 sums the workers' products in worker order, so L is the same bits whichever
    ranks host the workers."""
    if model.curvature is None:
        raise UserError(f"method.L: cannot estimate the smoothness of model.kind = {model.kind!r}; "
                        f"give method.L or method.gamma_prime")
    p = model.n_features
    shards = [] if local is None else [local[j][0] for j in sorted(local)]
    rows = np.array([sum(X.shape[0] for X in shards)], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, rows)
    n = int(rows[0])
    root = comm.Get_rank() == 0
    counts = [0] + [len(workers.hosted(r)) * (p + 1) for r in range(1, workers.R + 1)]
    counts += [0] * (comm.Get_size() - len(counts))  # parameter servers but rank 0
    every = np.empty((workers.M, p + 1)) if root else None
    v = np.full(p + 1, 1.0 / math.sqrt(p + 1))
    lam = 0.0
    for _ in range(500):
        mine = np.empty((len(shards), p + 1))
        for i, X in enumerate(shards):
            z = X @ v[:p] + v[p]
            mine[i, :p], mine[i, p] = X.T @ z, z.sum()
        comm.Gatherv(mine, (every, counts) if root else None, root=0)
        u = every.sum(axis=0) if root else np.empty(p + 1)
        comm.Bcast(u, root=0)
        u /= n
        new = float(np.linalg.norm(u))
        v = u / new
        if abs(new - lam) <= 1e-10 * new:
            break
        lam = new
    return model.smoothness(new)


def _check_resumable(tree: dict | None, cfg: dict, world_size: int, path: Path | None) -> None:
    """A run keeps its M workers; in the simulated clock they may be hosted on fewer
    ranks than before, or more (at most M), in the wall clock one rank each."""
    if tree is None:
        return
    M = int(tree["world_size"]) - 1
    stored = from_json(tree["config"])
    if cfg["cluster"]["cost"] and stored["run"].get("servers", 1) != cfg["run"]["servers"]:
        raise UserError(f"run.servers: checkpoint {path} is a run with cluster.cost = true and "
                        f"run.servers = {stored['run'].get('servers', 1)}; the cost model's queues are per server, "
                        f"so it resumes with the same run.servers")
    if world_size - 1 > M or (world_size - 1 < M and cfg["run"]["clock"] != "simulated"):
        S = cfg["run"]["servers"]  # rank 0 and S - 1 more ranks are parameter servers
        can = f"mpiexec -n {M + S}" if cfg["run"]["clock"] != "simulated" else \
            f"mpiexec -n {M + S} (or fewer ranks, down to {1 + S}: its workers become virtual workers)"
        raise UserError(f"checkpoint {path} is a run of {M} workers, this job has {world_size - 1} worker ranks; "
                        f"resume with {can}")


def _check_same_data(tree: dict, path: Path, data: dict, dim: int, allow_change: bool) -> None:
    """A resume continues on the data it was trained on: the same number of parameters
    always, the same contents (content hash) unless the user says otherwise."""
    if tree is None:
        return  # a fresh run
    params = tree["model"]["params"].size
    if params != dim:
        raise UserError(f"data.source: {data['path']} gives a model of {dim} parameters, but checkpoint "
                        f"{path} holds {params}: the data set changed shape since the run started")
    stored = tree.get("data_fingerprint", "")
    if stored and stored != data["fingerprint"] and not allow_change:
        raise UserError(f"data.source: {data['path']} is not the data set checkpoint {path} was trained on "
                        f"(content hash {data['fingerprint'][:12]} now, {stored[:12]} then: re-made or "
                        f"replaced); resume with the original file, or add --allow-data-change to go on "
                        f"with this one")


def _threads(cfg: dict) -> None:
    n = cfg["run"]["threads"] or int(os.environ.get("SLURM_CPUS_PER_TASK", "1") or 1)
    try:
        import numba
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except (ImportError, ValueError):
        pass


def run_job(comm: MPI.Comm, cfg: dict | None, resume_tree: dict | None = None,
            resume_path: Path | None = None, quiet: bool = False, allow_data_change: bool = False) -> int:
    """Run a job on every rank of ``comm``; ``cfg`` is only needed on rank 0."""
    rank = comm.Get_rank()
    if rank == 0 and resume_tree is not None and not cfg["run"]["workers"]:
        cfg["run"]["workers"] = int(resume_tree["world_size"]) - 1  # a checkpoint from before run.workers
    cfg = from_json(C.bcast_text(comm, to_json(cfg) if rank == 0 else None))
    _collective(comm, _check_slurm, comm)
    S = _collective(comm, resolve_servers, cfg, comm.Get_size())
    _on_root(comm, _check_resumable, resume_tree, cfg, comm.Get_size() - (S - 1), resume_path)
    workers = _collective(comm, _worker_map, comm, cfg)
    fresh = C.bcast_text(comm, "fresh" if resume_tree is None else "resume") == "fresh"
    _threads(cfg)
    C.fine_timer_slack()
    model, sizes, local, rows = _collective(comm, _setup, comm, cfg, workers)
    _on_root(comm, _check_same_data, resume_tree, resume_path, rows, model.dim, allow_data_change)
    slices = _collective(comm, _param_slices, cfg, model.dim, comm.Get_size()) if S > 1 else None
    rank_hosts = C.gather_text(comm, MPI.Get_processor_name())  # names the silent ones, if any
    M = workers.M
    if cfg["run"]["eval_every"] == 0 and not cfg["run"]["eval_seconds"]:
        cfg["run"]["eval_every"] = _default_eval_every(cfg, sizes, M)
    m = cfg["method"]
    if needs_L(cfg):
        m["L"] = _collective(comm, _estimate_L, comm, model, workers, local)
        if rank == 0 and not quiet:
            print(f"[hpcsgd] method.L = {m['L']:.6g} by power iteration; gamma' = h / L = "
                  f"{m['h'] / m['L']:.6g}", flush=True)
    model.warm_up()
    optim.warm_up()

    if rank == 0:
        run_dir = Path(cfg["run"]["out"])
        lock = RunLock(run_dir)
        _on_root(comm, _open_run_dir, lock, resume_tree is None)
        try:
            return _run_engine(comm, cfg, model, sizes, rows, workers, rank_hosts, run_dir, resume_tree,
                               resume_path, quiet, slices)
        finally:
            lock.release()

    _on_root(comm, lambda: None)  # rank 0 prepares the run directory
    if slices is not None and slices.server_of(rank) is not None:
        return _follow(comm, cfg, model, sizes, workers, slices, slices.server_of(rank), fresh)
    kind, batch = cfg["order"]["kind"], cfg["order"]["batch"]
    hosted = workers.hosted(rank)
    others = [(slices.ranks[s], slices.of(s)) for s in slices.followers()] if slices else ()
    link = T.WorkerTransport(comm, model.dim, batch, ORDERINGS[kind].pair_differences(batch), len(hosted),
                             servers=others, pair_dtype=cfg["order"]["pair_dtype"])
    grads = np.empty((batch, model.dim)) if ORDERINGS[kind].per_example else None
    with StopRequest() as stop:
        return WorkerRank(link, [_worker(cfg, j, slot, link, model, local[j], sizes[j - 1], stop, grads)
                                 for slot, j in enumerate(hosted)]).run()


def _param_slices(cfg: dict, dim: int, world: int) -> ParamSlices:
    S = cfg["run"]["servers"]
    if S > dim:
        raise UserError(f"config: run.servers = {S} is more servers than the model's {dim} parameters")
    return ParamSlices(dim, S, world)


def _follow(comm: MPI.Comm, cfg: dict, model, sizes: list[int], workers: WorkerMap, slices: ParamSlices,
            server: int, fresh: bool) -> int:
    """A parameter server other than rank 0: the same engine and method on its slice
    of the model, following rank 0 (hpcsgd.engine.servers)."""
    method = make_method(cfg, sizes, slices.size(server), cfg["method"]["L"])
    with StopRequest() as stop:  # a signal is rank 0's to act on; this rank only must not die of it
        engine = Engine(comm, cfg, model, sizes, method, Path(cfg["run"]["out"]), stop, workers,
                        trace_extras=trace_extras(cfg["method"]["kind"]), quiet=True, part=slices.of(server),
                        follower=True)
        tree = servers.receive_start(comm, engine, fresh)
        if tree is not None:
            layout.restore_engine(engine, tree)
        return servers.follow(engine, comm, fresh)


def _worker_map(comm: MPI.Comm, cfg: dict) -> WorkerMap:
    ranks = comm.Get_size() - cfg["run"]["servers"]
    workers = WorkerMap(resolve_workers(cfg, ranks), ranks)
    most = workers.most_hosted()
    if T.slot_tag(T.TAG_STRIDE - 1, most - 1) > comm.Get_attr(MPI.TAG_UB):
        raise UserError(f"config: run.workers = {workers.M} puts {most} workers on a rank, more than this MPI's "
                        f"message tags can name; use more ranks")
    return workers


def _worker(cfg: dict, j: int, slot: int, link: T.WorkerTransport, model, rows: tuple, size: int,
            stop: StopRequest, grads: np.ndarray | None) -> Worker:
    """Worker ``j`` with its own order (over its first ``size`` rows) and delay stream,
    whichever rank hosts it."""
    ordering = make_ordering(cfg["order"]["kind"], [size], cfg["run"]["seed"], workers=[j])
    cursor = EpochCursor(ordering)
    if cfg["order"]["record_history"]:
        cursor.history = []
    delay = DelayModel(cfg["stragglers"], j, make_stream(cfg["run"]["seed"], j, streams.DELAY))
    return Worker(j, slot, link, cfg, model, *rows, cursor, delay, stop, grads)


def _run_engine(comm: MPI.Comm, cfg: dict, model, sizes: list[int], rows: dict, workers: WorkerMap,
                rank_hosts: list[str], run_dir: Path, resume_tree: dict | None, resume_path: Path | None,
                quiet: bool, slices: ParamSlices | None) -> int:
    """Rank 0 once the run directory is locked: build the engine, load or initialise
    the model, and run."""
    M = workers.M
    hosts = [rank_hosts[0]] + [rank_hosts[workers.rank(j)] for j in range(1, M + 1)]
    dim = slices.size(0) if slices else model.dim
    method = make_method(cfg, sizes, dim, cfg["method"]["L"])
    # The engine posts its receives when built: only after the last set-up check.
    # A STOP file already there counts: the batch shell may write it while the job
    # starts up (hpcsgd-job.sh); the stop that honours it removes it.
    stop = StopRequest(run_dir)
    engine = Engine(comm, cfg, model, sizes, method, run_dir, stop, workers, hosts=hosts,
                    trace_extras=trace_extras(cfg["method"]["kind"]), test_rows=rows["test_rows"],
                    data_fingerprint=rows["fingerprint"], quiet=quiet, part=slices.of(0) if slices else None,
                    servers=Servers(comm, slices) if slices else None)
    if resume_tree is None:
        init_rng = make_stream(cfg["run"]["seed"], 0, streams.INIT)
        params = model.init_params(init_rng, cfg["model"]["init"], cfg["model"]["init_scale"])
        engine.params[:] = params[:dim]
        if slices:
            engine.servers.start(params)
    else:
        engine.resume_from(resume_tree, resume_path)
    if not quiet:
        what = "resuming" if resume_tree is not None else "training"
        print(f"[hpcsgd] {what} {method.name} on {cfg['data']['source']}: {M} workers, "
              f"d = {model.dim}, clock {cfg['run']['clock']}, run dir {run_dir}", flush=True)
        if workers.R < M:
            print(f"[hpcsgd] virtual workers: {M} workers on {workers.R} worker ranks "
                  f"(up to {workers.most_hosted()} a rank)", flush=True)
        if len(set(hosts)) > 1:
            print(f"[hpcsgd] {len(set(hosts))} hosts: {describe(hosts)}", flush=True)
        if slices:
            print(f"[hpcsgd] parameter servers: {slices.S} (ranks {', '.join(map(str, slices.ranks))}), "
                  f"{slices.size(slices.S - 1)}-{slices.size(0)} parameters each", flush=True)
        visited = sum(sizes)
        if visited < rows["train_rows"]:
            print(f"[hpcsgd] order.kind = {cfg['order']['kind']!r} needs equal shards: training visits "
                  f"{visited} of the {rows['train_rows']} training rows ({sizes[0]} per worker, "
                  f"the smallest shard); evaluation covers all {rows['train_rows']}", flush=True)
        if rows["test_rows"] == 0:
            print(f"[hpcsgd] {cfg['data']['source']} has no test rows: test metrics are NaN",
                  flush=True)
    with stop:
        return engine.run(fresh=resume_tree is None)


def _open_run_dir(lock: RunLock, fresh: bool) -> bool:
    """Lock the run directory for this job's life, then check it can take checkpoints."""
    if lock.run_dir.exists() and not lock.run_dir.is_dir():
        raise UserError(f"run.out {lock.run_dir} is a file, not a directory; choose another run.out")
    lock.acquire()
    try:
        return _prepare_run_dir(lock.run_dir) if fresh else _check_writable(lock.run_dir)
    except UserError:
        lock.release()
        raise


def _prepare_run_dir(run_dir: Path) -> bool:
    """A fresh run must not mix its checkpoints with an older run's."""
    if run_dir.exists() and any(run_dir.glob("ckpt-*.h5")):
        raise UserError(f"run.out {run_dir} already holds checkpoints; continue it with "
                        f"'hpcsgd resume {run_dir}' or choose another run.out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"run.out {run_dir}: cannot create ({exc.strerror})") from None
    return _check_writable(run_dir)


def _check_writable(run_dir: Path) -> bool:
    """Fail at start, not at the first checkpoint hours later."""
    probe = run_dir / f".hpcsgd-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"run.out {run_dir} is not writable ({exc.strerror}); checkpoints "
                        f"could not be saved there") from None
    return True


def train(comm: MPI.Comm, config_path: str, overrides: list[str], quiet: bool = False) -> int:
    return run_job(comm, _on_root(comm, _load_config, config_path, overrides), quiet=quiet)


def _load_config(path: str, overrides: list[str]) -> dict:
    cfg, warnings = load_config_checked(path, overrides)
    _print_warnings(warnings)
    return cfg


def _print_warnings(warnings: list[str]) -> None:
    """Keys set but not read, suspicious delay models: one line each, rank 0 only."""
    for line in warnings:
        sys.stderr.write(f"hpcsgd: warning: {line}\n")
    sys.stderr.flush()


def _check_resume_target(home: Path, out: Path) -> None:
    """A resume continues in its own run directory, or in a new empty one: never in
    another run's, whose checkpoints its retention would delete."""
    if out.resolve() == home.resolve() or not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"run.out {out} is a file; a resume continues in its own run directory ({home}) "
                        f"or in a new empty one")
    if any(out.iterdir()):
        raise UserError(f"run.out {out} is not empty; a resume continues in its own run directory "
                        f"({home}) or in a new empty one, never in another run's")


def check_loadable(tree: dict) -> None:
    """Deeper than the file's layout (``checkpoint.validate_tree``): the method's state
    and every worker's order and streams load into freshly built objects, so a damaged
    file is refused (and an older one used) before any rank starts on it."""
    try:
        cfg = from_json(tree["config"])
        M = int(tree["world_size"]) - 1
        if cfg["run"].get("workers") and cfg["run"]["workers"] != M:
            raise ValueError(f"its config has run.workers = {cfg['run']['workers']}, its layout {M} workers")
        sizes = layout.shard_sizes(tree)
        if len(sizes) != M or min(sizes) < 1:
            raise ValueError(f"shard sizes {sizes} do not fit {M} workers")
        method = make_method(cfg, sizes, tree["model"]["params"].size, cfg["method"]["L"] or 1.0)
        method.load_state_dict(tree["state"]["method"])
        set_stream_state(make_stream(0, 0, streams.INIT), tree["rng"]["master"]["method"])
        for j, state in layout.worker_states(tree, sizes).items():
            ordering = make_ordering(cfg["order"]["kind"], [sizes[j - 1]], cfg["run"]["seed"], workers=[j])
            cursor = EpochCursor(ordering)
            if "history" in state["order"]:
                cursor.history = []
            layout.load_worker_state(cursor, make_stream(0, j, streams.DELAY), j, state)
    except (KeyError, IndexError, TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"its saved state does not load ({type(exc).__name__}: {exc})") from None


def resume(comm: MPI.Comm, path: str, overrides: list[str], quiet: bool = False,
           allow_data_change: bool = False) -> int:
    def load():
        file, tree = checkpoint.load_checkpoint(Path(path), check=check_loadable)
        stored = from_json(tree["config"])
        cfg, warnings = resume_config_checked(stored, overrides)
        _print_warnings(warnings)
        home = file.parent
        if any(o.startswith("run.out=") for o in overrides):
            _check_resume_target(home, Path(cfg["run"]["out"]))
        else:
            cfg["run"]["out"] = str(home)
        return file, tree, cfg

    loaded = _on_root(comm, load)
    if loaded is None:
        return run_job(comm, None, quiet=quiet, allow_data_change=allow_data_change)
    file, tree, cfg = loaded
    if not quiet:
        print(f"[hpcsgd] resuming from {file} (update {tree['update']})", flush=True)
    return run_job(comm, cfg, resume_tree=tree, resume_path=file, quiet=quiet,
                   allow_data_change=allow_data_change)
