"""``hpcsgd plot``: loss/accuracy against updates and time, staleness histogram and
the k/batch schedule (when it varies) for one or several runs on one figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hpcsgd.checkpoint import load_checkpoint  # noqa: E402
from hpcsgd.errors import UserError  # noqa: E402

_EMPTY = np.empty(0)


@dataclass
class Run:
    label: str
    file: Path
    method: str
    trace: dict
    eval: dict

    def t(self, name: str) -> np.ndarray:
        v = self.trace.get(name)
        return v if isinstance(v, np.ndarray) and v.ndim == 1 else _EMPTY

    def e(self, name: str) -> np.ndarray:
        v = self.eval.get(name)
        return v if isinstance(v, np.ndarray) and v.ndim == 1 else _EMPTY


def load_run(path: str, label: str | None = None) -> Run:
    p = Path(path)
    file, tree = load_checkpoint(p)
    method = str(tree.get("method", "?"))
    if label is None:
        run_dir = p if p.is_dir() else file.parent
        name = run_dir.resolve().name
        label = name if method in name else f"{name} ({method})"
    trace = tree.get("trace") if isinstance(tree.get("trace"), dict) else {}
    ev = tree.get("eval") if isinstance(tree.get("eval"), dict) else {}
    return Run(label=label, file=file, method=method, trace=trace, eval=ev)


def _varies(a: np.ndarray) -> bool:
    return a.size > 0 and bool(np.any(a != a[0]))


def _change_points(x: np.ndarray, *ys: np.ndarray) -> np.ndarray:
    """Indices where any of ``ys`` changes (plus first and last): enough for a step plot."""
    n = x.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[0] = mask[-1] = True
    for y in ys:
        if y.size == n and n > 1:
            mask[1:] |= y[1:] != y[:-1]
    return np.flatnonzero(mask)


def _time_axis(run: Run) -> tuple[np.ndarray, str]:
    sim = run.e("sim_time")
    if sim.size and np.all(np.isfinite(sim)):
        return sim, "simulated"
    return run.e("wall_time"), "wall"


def build_figure(runs: list[Run]):
    """Build (and return) the matplotlib Figure for ``runs``."""
    has_acc = any(np.isfinite(r.e("test_accuracy")).any() for r in runs)
    has_sched = any(_varies(r.t("k")) or _varies(r.t("batch")) for r in runs)
    panels = ["loss_updates"] + (["acc_updates"] if has_acc else []) + ["loss_time", "staleness"]
    if has_sched:
        panels.append("schedule")
    ncols = 2
    nrows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.0 * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[len(panels):]:
        fig.delaxes(ax)
    ax_of = dict(zip(panels, flat))
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])

    # loss vs updates
    ax = ax_of["loss_updates"]
    all_loss = []
    for i, r in enumerate(runs):
        u, loss = r.e("update"), r.e("train_loss")
        if u.size and loss.size == u.size:
            ax.plot(u, loss, marker=".", color=colors[i % len(colors)], label=r.label)
            all_loss.append(loss[np.isfinite(loss)])
    if all_loss and sum(a.size for a in all_loss) and all(np.all(a > 0) for a in all_loss):
        ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel("train loss")
    ax.set_title("train loss vs updates")

    if has_acc:
        ax = ax_of["acc_updates"]
        for i, r in enumerate(runs):
            u, acc = r.e("update"), r.e("test_accuracy")
            if u.size and acc.size == u.size and np.isfinite(acc).any():
                ax.plot(u, acc, marker=".", color=colors[i % len(colors)], label=r.label)
        ax.set_xlabel("updates")
        ax.set_ylabel("test accuracy")
        ax.set_title("test accuracy vs updates")

    # loss vs time
    ax = ax_of["loss_time"]
    kinds = set()
    for i, r in enumerate(runs):
        t, kind = _time_axis(r)
        loss = r.e("train_loss")
        if t.size and loss.size == t.size:
            kinds.add(kind)
            ax.plot(t, loss, marker=".", color=colors[i % len(colors)],
                    label=r.label + ("" if len(runs) == 1 else f" [{kind}]"))
    if all_loss and sum(a.size for a in all_loss) and all(np.all(a > 0) for a in all_loss):
        ax.set_yscale("log")
    if kinds == {"simulated"}:
        ax.set_xlabel("simulated time (s)")
    elif kinds == {"wall"}:
        ax.set_xlabel("wall time (s)")
    else:
        ax.set_xlabel("time (s): simulated where available, else wall")
    ax.set_ylabel("train loss")
    ax.set_title("train loss vs time")

    # staleness histogram
    ax = ax_of["staleness"]
    stale_all = [r.t("staleness").astype(np.int64) for r in runs]
    nonempty = [s for s in stale_all if s.size]
    if nonempty:
        lo = min(int(s.min()) for s in nonempty)
        hi = max(int(s.max()) for s in nonempty)
        width = max(1, int(np.ceil((hi - lo + 1) / 60)))
        edges = np.arange(lo, hi + width + 1, width) - 0.5
        for i, (r, s) in enumerate(zip(runs, stale_all)):
            if s.size:
                counts, _ = np.histogram(s, bins=edges)
                ax.stairs(counts / s.size, edges, color=colors[i % len(colors)], label=r.label,
                          fill=len(runs) == 1, alpha=0.6 if len(runs) == 1 else 1.0)
    ax.set_xlabel("staleness (updates)")
    ax.set_ylabel("fraction of updates")
    ax.set_title("staleness histogram")

    if has_sched:
        ax = ax_of["schedule"]
        for i, r in enumerate(runs):
            u, k, b = r.t("update"), r.t("k"), r.t("batch")
            if not u.size:
                continue
            idx = _change_points(u, k, b)
            c = colors[i % len(colors)]
            if k.size == u.size:
                ax.step(u[idx], k[idx], where="post", color=c, linestyle="-", label=f"{r.label}: k")
            if b.size == u.size:
                ax.step(u[idx], b[idx], where="post", color=c, linestyle="--",
                        label=f"{r.label}: batch")
        ax.set_xlabel("updates")
        ax.set_ylabel("k (solid) / batch (dashed)")
        ax.set_title("k / batch schedule")

    for ax in ax_of.values():
        ax.grid(True, alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles and (len(runs) > 1 or ax is ax_of.get("schedule")):
            ax.legend(fontsize="small")
    if len(runs) == 1:
        fig.suptitle(runs[0].label)
    fig.tight_layout()
    return fig


def plot_runs(paths: list[str], out: str, labels: list[str] | None = None) -> Path:
    """Write one PNG comparing the runs at ``paths`` (run directories or checkpoint files)."""
    if not paths:
        raise UserError("plot: give at least one run directory or checkpoint file")
    if labels is not None and len(labels) != len(paths):
        raise UserError(f"plot: {len(labels)} labels given for {len(paths)} runs")
    runs = [load_run(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    seen: dict[str, int] = {}
    for r in runs:  # disambiguate identical default labels
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1 and labels is None:
            r.label = f"{r.label} {r.file.name}"
    out_path = Path(out)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"plot: cannot create directory {out_path.parent} ({exc.strerror})") from None
    fig = build_figure(runs)
    try:
        fig.savefig(out_path, dpi=110, format="png")
    except OSError as exc:
        raise UserError(f"plot: cannot write {out_path} ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out_path
