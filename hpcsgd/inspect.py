"""``hpcsgd inspect``: a summary of one checkpoint (method, progress, metrics,
staleness statistics, load, orderings stored), its checksum status, and which newer
checkpoints of a run directory were skipped as damaged and why."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hpcsgd.config import keys_read
from hpcsgd.checkpoint import FIRST_CHECKSUMMED_VERSION, find_checkpoint
from hpcsgd.errors import UserError
from hpcsgd.methods import registry
from hpcsgd.methods.registry import column as _col
from hpcsgd.trace import TRACE_COLUMNS

# Staleness values up to this bound get an exact {value: count} histogram; beyond it
# the histogram is binned into HIST_BINS integer-aligned ranges keyed "lo-hi".
HIST_EXACT_MAX = 32
HIST_BINS = 16


def _num(x: Any) -> Any:
    """NumPy scalar -> Python scalar."""
    return x.item() if isinstance(x, np.generic) else x


def _basic_stats(arr: np.ndarray | None) -> dict | None:
    if arr is None or arr.size == 0:
        return None
    a = arr.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {
        "mean": float(finite.mean()),
        "min": _num(arr[np.isfinite(a)].min()),
        "max": _num(arr[np.isfinite(a)].max()),
    }


def _int_stats(arr: np.ndarray | None) -> dict | None:
    s = _basic_stats(arr)
    if s is None:
        return None
    s["varies"] = bool(s["min"] != s["max"])
    return s


def staleness_histogram(stale: np.ndarray) -> tuple[dict, bool]:
    """({value or "lo-hi": count}, binned?) for an int staleness column."""
    s = stale.astype(np.int64)
    lo, hi = int(s.min()), int(s.max())
    if lo >= 0 and hi <= HIST_EXACT_MAX:
        counts = np.bincount(s, minlength=hi + 1)
        return {v: int(c) for v, c in enumerate(counts) if c}, False
    width = max(1, math.ceil((hi - lo + 1) / HIST_BINS))
    edges = np.arange(lo, hi + width + 1, width)
    counts, _ = np.histogram(s, bins=edges)
    hist = {}
    for a, c in zip(edges[:-1], counts):
        if c:
            hist[f"{int(a)}-{int(a) + width - 1}"] = int(c)
    return hist, True


def stability(ev: dict, last: int = 10) -> dict | None:
    """Standard deviations of test accuracy and test loss over the last ``last``
    evaluations (fewer if the run has fewer), the GSGM experiment's stability metric.
    An evaluation repeated at the same update (the final one) counts once."""
    upd = _col(ev, "update")
    if upd is None or not upd.size or last < 2:
        return None
    keep = np.flatnonzero(np.r_[np.diff(upd) != 0, True])[-last:]
    out = {"evals": int(keep.size)}
    for name in ("test_accuracy", "test_loss"):
        col = _col(ev, name)
        if col is not None and np.isfinite(col[keep]).all():
            y = col[keep]
            out[name + "_std"] = float(np.std(y))
            out[name + "_mean"] = float(np.mean(y))
            # the std also counts a curve that is still rising or falling; the residual
            # std around a straight line through the same points does not
            t = np.arange(y.size, dtype=np.float64)
            fit = np.polyval(np.polyfit(t, y, 1), t) if y.size >= 3 else y
            out[name + "_detrended_std"] = float(np.std(y - fit))
    return out if keep.size >= 2 else None


def _method_summaries(out: dict, after: str, config: Any, trace: dict) -> None:
    """The registry's summaries that follow the entry ``after``: those of the checkpoint's
    method, and those that judge from the trace alone."""
    config = config if isinstance(config, dict) else {}
    method = config.get("method")
    spec = registry.spec(method.get("kind") if isinstance(method, dict) else None)
    for summary in registry.summaries():
        if summary.after == after:
            mine = summary.any_method or (spec is not None and summary in spec.summaries)
            out[summary.name] = summary.compute(config, trace) if mine else None


def summarize(path, last: int = 10) -> dict:
    """Summary of the checkpoint at ``path`` (a directory: its newest valid file, and
    the damaged files skipped on the way); ``last``: evaluations in the stability metric."""
    loaded = find_checkpoint(Path(path))
    file, tree = loaded.file, loaded.tree
    try:
        config = json.loads(tree.get("config", "{}"))
    except ValueError:
        config = {}
    world = int(tree.get("world_size", 0))
    trace = tree.get("trace") if isinstance(tree.get("trace"), dict) else {}
    ev = tree.get("eval") if isinstance(tree.get("eval"), dict) else {}

    out: dict[str, Any] = {
        "file": str(file),
        "method": tree.get("method"),
        "clock": tree.get("clock", (config.get("run") or {}).get("clock") if isinstance(config, dict) else None),
        "world_size": world,
        "workers": max(world - 1, 0),
        "ranks": int(tree.get("ranks", world)),  # MPI ranks of the job that wrote it (virtual workers: fewer)
        "servers": int(((config.get("run") or {}) if isinstance(config, dict) else {}).get("servers", 1)),
        "update": tree.get("update"),
        "epoch": tree.get("epoch"),
        "created": tree.get("created"),
        "hpcsgd_version": tree.get("hpcsgd_version"),
        "format_version": tree.get("format_version"),
        "n_params": int(tree["model"]["params"].size),
        "config": config,
        "checksums": _checksum_status(tree, loaded.checksums),
        "skipped": [{"file": str(p), "reason": why} for p, why in loaded.skipped],
    }

    # ---- evaluation rows
    ev_cols = {k: v for k, v in ev.items() if isinstance(v, np.ndarray) and v.ndim == 1}
    n_eval = min((v.size for v in ev_cols.values()), default=0)
    out["evals"] = n_eval
    out["last_eval"] = {k: _num(v[n_eval - 1]) for k, v in ev_cols.items()} if n_eval else None
    out["test_rows"] = tree.get("test_rows")
    out["test_split"] = _has_test_split(tree, ev)
    if not out["test_split"] and out["last_eval"]:
        for name in _TEST_METRICS:
            out["last_eval"].pop(name, None)
    acc = _col(ev, "test_accuracy")
    best = None
    if out["test_split"] and acc is not None and acc.size and np.isfinite(acc).any():
        i = int(np.nanargmax(np.where(np.isfinite(acc), acc, np.nan)))
        upd = _col(ev, "update")
        best = {"value": float(acc[i]), "update": _num(upd[i]) if upd is not None else None}
    out["best_test_accuracy"] = best
    out["stability"] = stability(ev, last) if out["test_split"] else None

    # ---- trace
    n_trace = min((v.size for v in trace.values() if isinstance(v, np.ndarray)), default=0)
    out["updates_traced"] = n_trace
    out["extra_trace_columns"] = sorted(k for k, v in trace.items()
                                        if isinstance(v, np.ndarray) and k not in TRACE_COLUMNS)

    stale = _col(trace, "staleness")
    if stale is not None and stale.size:
        hist, binned = staleness_histogram(stale)
        p50, p90, p99 = np.percentile(stale.astype(np.float64), [50, 90, 99])
        out["staleness"] = {
            "mean": float(stale.mean(dtype=np.float64)),
            "max": int(stale.max()),
            "min": int(stale.min()),
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "histogram": hist,
            "histogram_binned": binned,
        }
    else:
        out["staleness"] = None

    out["step_size"] = _basic_stats(_col(trace, "step_size"))
    _method_summaries(out, "step_size", config, trace)
    out["k"] = _int_stats(_col(trace, "k"))
    out["batch"] = _int_stats(_col(trace, "batch"))

    samples = _col(trace, "samples_computed")
    msgs = _col(trace, "messages")
    load: dict[str, Any] = {}
    if samples is not None:
        tot = int(samples.sum(dtype=np.int64))
        load["samples_computed_total"] = tot
        load["samples_per_update"] = tot / samples.size if samples.size else math.nan
    if msgs is not None:
        tot = int(msgs.sum(dtype=np.int64))
        load["messages_total"] = tot
        load["messages_per_update"] = tot / msgs.size if msgs.size else math.nan
    out["load"] = load or None
    _method_summaries(out, "load", config, trace)

    worker = _col(trace, "worker")
    if worker is not None:
        w = worker.astype(np.int64)
        ids, counts = np.unique(w[w >= 0], return_counts=True)
        out["per_worker_updates"] = {int(i): int(c) for i, c in zip(ids, counts)}
        out["aggregated_updates"] = int(np.count_nonzero(w < 0))
    else:
        out["per_worker_updates"] = None
        out["aggregated_updates"] = None
    # The engine counts, per worker, the updates its gradients went into (the trace's
    # worker column cannot say who contributed to an aggregated update).
    engine = tree.get("state", {}).get("engine", {}) if isinstance(tree.get("state"), dict) else {}
    contrib = engine.get("contributions") if isinstance(engine, dict) else None
    out["contributions"] = ({int(j): int(c) for j, c in enumerate(contrib) if j >= 1}
                            if isinstance(contrib, np.ndarray) else None)

    order = tree.get("order") if isinstance(tree.get("order"), dict) else None
    if order is not None and isinstance(order.get("perm"), np.ndarray):
        perm = order["perm"]
        hist_arr = order.get("history")
        out["orders"] = {
            "perm_shape": list(perm.shape),
            "padded_entries": int(np.count_nonzero(perm < 0)),
            "history_epochs": int(hist_arr.shape[0]) if isinstance(hist_arr, np.ndarray) and hist_arr.ndim >= 1 else None,
        }
    else:
        out["orders"] = None

    wall = _col(trace, "wall_time")
    sim = _col(trace, "sim_time")
    out["time"] = {
        "wall_time_end": float(wall[-1]) if wall is not None and wall.size else None,
        "sim_time_end": float(sim[-1]) if sim is not None and sim.size else None,
    }
    return out


_TEST_METRICS = ("test_loss", "test_accuracy")


def _has_test_split(tree: dict, ev: dict) -> bool:
    """False when the run had no test rows: the root attribute ``test_rows`` is 0 (files
    written before it existed lack it), or every test metric of every evaluation is NaN."""
    if tree.get("test_rows") == 0:
        return False
    cols = [c for c in (_col(ev, name) for name in _TEST_METRICS) if c is not None and c.size]
    return not cols or any(np.isfinite(c).any() for c in cols)


def _checksum_status(tree: dict, report) -> dict:
    """Files of format 1 have no checksums (the loader lets them in unchecked); in a
    newer file that loaded, every checksum matched."""
    version = tree["format_version"]
    status = ("verified" if version >= FIRST_CHECKSUMMED_VERSION else
              f"none (format {version}, written before checksums: loaded unchecked)")
    return {"verified": report.verified, "status": status}


# ---------------------------------------------------------------------- formatting
def _fmt(x: Any, digits: int = 5) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}"
    return str(x)


def _config_line(config: dict) -> str:
    """The run's choices, and of the [method] keys those the rule reads
    (``config.keys_read``, the table the ignored-key warnings use too)."""
    method = (config.get("method") if isinstance(config, dict) else None) or {}
    try:
        read = keys_read(config)
    except (KeyError, TypeError, ValueError, AttributeError):  # a damaged or foreign config
        read = {("method", "lr")}
    # the keys the registry flags as shown, then the master's heavy ball when it is on
    shown = [name for name, key in registry.method_keys().items() if key.shown] + ["momentum"]
    keys = [key for key in shown if ("method", key) in read and (key != "momentum" or method.get(key))]
    picks = [("data", "source"), ("data", "partition"), ("model", "kind"), ("method", "kind"),
             *(("method", key) for key in keys),
             ("order", "kind"), ("order", "batch"), ("stragglers", "model"), ("run", "seed")]
    parts = []
    for table, key in picks:
        t = config.get(table) if isinstance(config, dict) else None
        if isinstance(t, dict) and key in t:
            parts.append(f"{table}.{key}={_fmt(t[key])}")
    return " ".join(parts) if parts else "-"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _method_lines(rows: list, after: str, s: dict) -> None:
    for summary in registry.summaries():
        if summary.after == after and s.get(summary.name):
            rows.extend(summary.lines(s[summary.name], _fmt))


def format_summary(s: dict) -> str:
    rows: list[tuple[str, str]] = []
    add = lambda k, v: rows.append((k, v))  # noqa: E731
    add("checkpoint", s["file"])
    worker_ranks = s["ranks"] - s["servers"]
    hosted = f", on {worker_ranks} worker rank{'s' * (worker_ranks != 1)}" if worker_ranks != s["workers"] else ""
    if s["servers"] > 1:
        hosted += f", {s['servers']} parameter servers"
    add("method", f"{s['method']}  (clock {s['clock'] or '-'}, world size {s['world_size']} = "
                  f"master + {s['workers']} workers{hosted})")
    add("progress", f"update {_fmt(s['update'])}, epoch {_fmt(s['epoch'])}, "
                    f"{s['n_params']} parameters, created {s['created'] or '-'}")
    add("config", _config_line(s["config"]))
    sums = s.get("checksums")
    if sums:
        add("checksums", f"verified ({sums['verified']} datasets and groups)" if sums["status"] == "verified"
            else sums["status"])
    for skip in s.get("skipped") or []:
        add("skipped", f"{skip['file']}: {skip['reason']}")
    le = s["last_eval"]
    if le:
        # a regression run's accuracy is NaN throughout: not a result worth a column
        keys = [k for k in ("train_loss", "test_loss", "test_accuracy", "grad_norm") if k in le
                and not (k == "test_accuracy" and not s["best_test_accuracy"] and not _finite(le[k]))]
        extra = "  ".join(f"{k} {_fmt(le[k])}" for k in keys)
        add("last eval", f"update {_fmt(le.get('update'))}, epoch {_fmt(le.get('epoch'))}: {extra}")
    else:
        add("last eval", "none")
    b = s["best_test_accuracy"]
    if b:
        add("best acc", f"{_fmt(b['value'])} at update {_fmt(b['update'])}  ({s['evals']} evaluations)")
    elif not s.get("test_split", True):
        add("test", "no test split" + (" (test_rows = 0)" if s.get("test_rows") == 0 else
                                       " (every test metric is NaN)"))
    sb = s.get("stability")
    if sb:
        parts = [f"{n} std {_fmt(sb[n + '_std'], 3)} (detrended {_fmt(sb[n + '_detrended_std'], 3)}, "
                 f"mean {_fmt(sb[n + '_mean'], 4)})" for n in ("test_accuracy", "test_loss") if n + "_std" in sb]
        if parts:
            add("stability", f"last {sb['evals']} evaluations: " + ", ".join(parts))
    t = s["time"]
    sim_end = t["sim_time_end"]
    sim_txt = (f", simulated {_fmt(sim_end)} s" if isinstance(sim_end, float) and math.isfinite(sim_end)
               else "")
    wall_txt = f"; wall {_fmt(t['wall_time_end'])} s" if t["wall_time_end"] is not None else ""
    add("trace", f"{s['updates_traced']} updates{wall_txt}{sim_txt}"
        + (f"; extra columns: {', '.join(s['extra_trace_columns'])}" if s["extra_trace_columns"] else ""))
    st = s["staleness"]
    if st:
        add("staleness", f"mean {_fmt(st['mean'])}  max {st['max']}  p50 {_fmt(st['p50'])}  "
                         f"p90 {_fmt(st['p90'])}  p99 {_fmt(st['p99'])}")
        items = list(st["histogram"].items())
        shown = "  ".join(f"{k}:{v}" for k, v in items[:12]) + ("  ..." if len(items) > 12 else "")
        add("  histogram", shown)
    ss = s["step_size"]
    if ss:
        add("step size", f"mean {_fmt(ss['mean'])}  min {_fmt(ss['min'])}  max {_fmt(ss['max'])}")
    _method_lines(rows, "step_size", s)
    for name in ("k", "batch"):
        v = s[name]
        if v:
            if v["varies"]:
                add(name, f"mean {_fmt(v['mean'])}  min {_fmt(v['min'])}  max {_fmt(v['max'])} (varies)")
            else:
                add(name, f"{_fmt(v['min'])} (constant)")
    ld = s["load"]
    if ld and s["updates_traced"]:
        parts = []
        if "samples_computed_total" in ld:
            parts.append(f"samples {ld['samples_computed_total']} ({_fmt(ld['samples_per_update'])}/update)")
        if "messages_total" in ld:
            parts.append(f"messages {ld['messages_total']} ({_fmt(ld['messages_per_update'])}/update)")
        add("load", ", ".join(parts))
    _method_lines(rows, "load", s)
    pw = s["per_worker_updates"]
    if pw is not None:
        items = list(pw.items())
        shown = "  ".join(f"{k}:{v}" for k, v in items[:16]) + ("  ..." if len(items) > 16 else "")
        add("per worker", (shown or "-") + f"   aggregated updates: {s['aggregated_updates']}")
    if s.get("contributions"):
        items = list(s["contributions"].items())
        shown = "  ".join(f"{k}:{v}" for k, v in items[:16]) + ("  ..." if len(items) > 16 else "")
        add("contributed", shown + "   (updates each worker's gradients went into)")
    o = s["orders"]
    if o:
        shape = " x ".join(str(n) for n in o["perm_shape"])
        hist = f"{o['history_epochs']} epochs" if o["history_epochs"] is not None else "not recorded"
        add("orders", f"perm {shape} ({o['padded_entries']} padding entries), history {hist}")
    else:
        add("orders", "none stored")
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def summary_json(summary: dict) -> str:
    """JSON text of a summary; NaN/Inf become null (strict JSON)."""
    return json.dumps(_jsonable(summary), indent=2, allow_nan=False)


def main_inspect(path: str, as_json: bool, last: int = 10) -> int:
    if last < 2:
        raise UserError(f"inspect: --last {last}: the stability metric needs K >= 2 evaluations")
    s = summarize(path, last)
    print(summary_json(s) if as_json else format_summary(s))
    return 0
