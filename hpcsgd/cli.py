"""Command line: ``hpcsgd prepare | train | resume | inspect | plot``.

``train`` and ``resume`` run on every rank of ``mpiexec``; the others are serial.
A ``UserError`` prints one line and exits 2 (on every rank); any other exception on
any rank prints its traceback and aborts the whole MPI job, so nothing hangs.
"""

from __future__ import annotations

import argparse
import os
import sys


def _pin_threads() -> None:
    # Must happen before NumPy/Numba start their thread pools: one rank per core is the
    # usual layout, so each rank gets SLURM_CPUS_PER_TASK threads (default 1).
    n = os.environ.get("SLURM_CPUS_PER_TASK") or "1"
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, n)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpcsgd", description="Distributed SGD methods on one MPI engine.")
    sub = p.add_subparsers(dest="command", required=True)

    prepare_notes = (
        "libsvm:PATH reads a LIBSVM text file: LABEL INDEX:VALUE ..., indices from 1 and\n"
        "ascending, '#' starts a comment, CRLF line ends are fine, qid: tokens are refused.\n"
        "  labels    integers with at most 100 distinct values make a classification set:\n"
        "            the values are sorted and renumbered 0..C-1 (-1/+1 -> 0/1, 1/2/3 ->\n"
        "            0/1/2; the originals are kept in the file's 'classes' attribute); any\n"
        "            non-integer label makes a regression set with the values as given.\n"
        "  features  stored as given: not standardised or scaled; dense float64 with one\n"
        "            column per index up to the largest one (see --max-dense-gib; sparse\n"
        "            storage is not supported yet).\n"
        "  order     file order is kept: each split lists its rows in file order.\n"
        "Every set: the train/test split is random from --seed, round(F * rows) test rows\n"
        "for --test-fraction F (at least 1 when F > 0), stratified by class for\n"
        "classification so both splits keep the class shares. The file's content_hash\n"
        "attribute identifies its contents: another --seed gives another split and hash.\n"
    )
    pr = sub.add_parser("prepare", help="write a prepared data set into data/",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Write one HDF5 data set file (default data/NAME.h5; libsvm:PATH "
                                    "-> data/STEM.h5).", epilog=prepare_notes)
    pr.add_argument("name", help="digits, breast_cancer, mnist5k, synth_lsq, synth_hetlogistic, libsvm:PATH")
    pr.add_argument("--out", help="output file (default data/NAME.h5)")
    pr.add_argument("--data-dir", default="data", help="directory for the default output file (default data)")
    pr.add_argument("--n", type=int, help="synthetic sets: number of rows")
    pr.add_argument("--d", type=int, help="synthetic sets: number of features")
    pr.add_argument("--noise", type=float, help="synth_lsq: noise standard deviation")
    pr.add_argument("--groups", type=int, help="synth_hetlogistic: number of shifted groups")
    pr.add_argument("--seed", type=int, default=0, help="generation and train/test split seed")
    pr.add_argument("--one-vs-rest", type=float, metavar="CLASS",
                    help="classification sets: the binary task CLASS against the rest (named NAME_ovrCLASS)")
    pr.add_argument("--test-fraction", type=float, metavar="F",
                    help="share of rows held out as the test split, 0 <= F < 1 (default 0.2; 0 = no test split)")
    pr.add_argument("--max-dense-gib", type=float, metavar="G",
                    help="refuse a set whose dense float64 features (train + test) exceed G GiB (default 1)")

    for name, target, what in (("train", "config", "TOML configuration file"),
                               ("resume", "path", "run directory or checkpoint file")):
        t = sub.add_parser(name, help=f"{name} a job (run under mpiexec -n M+1)")
        t.add_argument(target, help=what)
        t.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                       help="override one configuration key (repeatable)")
        t.add_argument("--quiet", action="store_true", help="no progress lines")
        if name == "resume":
            t.add_argument("--allow-data-change", action="store_true",
                           help="go on although the data set's contents changed since the checkpoint")

    i = sub.add_parser("inspect", help="summarise a checkpoint")
    i.add_argument("path", help="checkpoint file or run directory")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--last", type=int, default=10, metavar="K",
                   help="stability: std of test accuracy and loss over the last K evaluations (default 10)")

    pl = sub.add_parser("plot", help="plot one or more runs into a PNG")
    pl.add_argument("paths", nargs="+", help="checkpoint files or run directories")
    pl.add_argument("-o", "--out", required=True, help="output PNG")
    pl.add_argument("--label", action="append", help="legend label per run (repeatable)")
    return p


def _serial(args) -> int:
    if args.command == "prepare":
        from hpcsgd.data import prepare
        from pathlib import Path
        path = prepare(args.name, args.out, n=args.n, d=args.d, noise=args.noise, groups=args.groups,
                       seed=args.seed, data_dir=Path(args.data_dir), one_vs_rest=args.one_vs_rest,
                       **{k: getattr(args, k) for k in ("test_fraction", "max_dense_gib")
                          if getattr(args, k) is not None})
        print(f"wrote {path}")
        return 0
    if args.command == "inspect":
        from hpcsgd.inspect import main_inspect
        return main_inspect(args.path, args.json, args.last)
    if args.command == "plot":
        from hpcsgd.plot import plot_runs
        out = plot_runs(args.paths, args.out, labels=args.label)
        print(f"wrote {out}")
        return 0
    raise AssertionError(args.command)


def _parallel(args) -> int:
    from mpi4py import MPI
    from hpcsgd import run
    comm = MPI.COMM_WORLD
    if args.command == "train":
        return run.train(comm, args.config, args.set, quiet=args.quiet)
    return run.resume(comm, args.path, args.set, quiet=args.quiet, allow_data_change=args.allow_data_change)


def _rank() -> int:
    if "mpi4py.MPI" not in sys.modules:
        return 0
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


def main(argv: list[str] | None = None) -> int:
    _pin_threads()
    args = _parser().parse_args(argv)
    from hpcsgd.errors import UserError
    parallel = args.command in ("train", "resume")
    try:
        status = _parallel(args) if parallel else _serial(args)
    except UserError as exc:
        # one write per line: mpiexec merges every rank's stderr; an error every rank
        # shares is printed by rank 0 alone
        if not (exc.shared and _rank() > 0):
            sys.stderr.write(f"hpcsgd: error: {exc}\n")
            sys.stderr.flush()
        status = exc.exit_code
    except KeyboardInterrupt:
        status = 130
    except BaseException:
        if not parallel:
            raise
        import traceback
        from mpi4py import MPI
        from hpcsgd.comm import abort
        rank = MPI.COMM_WORLD.Get_rank()
        exc = sys.exc_info()[1]
        # One rank's failure must end the job, not leave the others waiting forever.
        status = 1  # if Abort returns before the job is torn down, still exit non-zero
        abort(MPI.COMM_WORLD, f"hpcsgd: rank {rank} failed: {type(exc).__name__}: {exc}\n"
              + "".join(traceback.format_exc()), 1)
    if argv is None:
        sys.exit(status)
    return status


if __name__ == "__main__":
    main()
