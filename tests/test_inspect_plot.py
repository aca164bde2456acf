"""``hpcsgd inspect`` summary values and ``hpcsgd plot`` output."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from hpcsgd import checkpoint as ck
from hpcsgd import inspect as hin
from hpcsgd import plot as hplot
from hpcsgd.errors import UserError
from test_checkpoint import _flip_bit, _strip_checksums, with_engine_state

N_TRACE = 60
N_EVAL = 5


def fake_tree(update=120, seed=0, workers=4, clock="simulated", vary_k=False,
              regression=False, big_staleness=False, history=True) -> dict:
    rng = np.random.default_rng(seed)
    n = N_TRACE
    worker = rng.integers(1, workers + 1, size=n).astype(np.int32)
    worker[::7] = -1  # some aggregated (several contributors) updates
    hi = 500 if big_staleness else 7
    staleness = rng.integers(0, hi, size=n).astype(np.int32)
    k = (rng.integers(1, workers + 1, size=n) if vary_k else np.full(n, 2)).astype(np.int32)
    batch = (np.repeat([4, 8, 16], n // 3) if vary_k else np.full(n, 8)).astype(np.int32)
    perm = np.full((workers, 11), -1, dtype=np.int64)
    for w in range(workers):
        m = 11 - (w % 3)
        perm[w, :m] = rng.permutation(m)
    sim = np.cumsum(rng.exponential(size=n)) if clock == "simulated" else np.full(n, np.nan)
    ev_sim = np.linspace(0, sim[-1], N_EVAL) if clock == "simulated" else np.full(N_EVAL, np.nan)
    config = {"run": {"seed": seed, "clock": clock}, "data": {"source": "digits"},
              "model": {"kind": "least_squares" if regression else "softmax"},
              "method": {"kind": "adaptive_kb" if vary_k else "async", "lr": 0.1},
              "order": {"kind": "rr" if vary_k else "grab", "batch": 8}}
    tree = {
        "update": update, "epoch": update / 50.0,
        "method": "adaptive_kb" if vary_k else "async",
        "world_size": workers + 1, "config": json.dumps(config), "clock": clock,
        "model": {"params": rng.standard_normal(20)},
        "order": {"perm": perm},
        "trace": {
            "update": np.arange(update - n + 1, update + 1, dtype=np.int64),
            "wall_time": np.cumsum(rng.random(n)),
            "sim_time": sim,
            "worker": worker,
            "staleness": staleness,
            "step_size": rng.uniform(0.01, 0.1, size=n),
            "k": k,
            "batch": batch,
            "samples_computed": (k.astype(np.int64) * batch + rng.integers(0, 3, size=n)),
            "messages": (2 * k).astype(np.int32),
            "stage": np.zeros(n, dtype=np.int32),  # an extra, method-specific column
        },
        "eval": {
            "update": np.linspace(update - n, update, N_EVAL).astype(np.int64),
            "epoch": np.linspace(update - n, update, N_EVAL) / 50.0,
            "wall_time": np.linspace(0, 5, N_EVAL),
            "sim_time": ev_sim,
            "train_loss": np.geomspace(2.0, 0.05, N_EVAL),
            "test_loss": np.geomspace(2.1, 0.07, N_EVAL),
            "test_accuracy": np.full(N_EVAL, np.nan) if regression else np.array([0.2, 0.5, 0.8, 0.7, 0.75]),
            "grad_norm": np.geomspace(3, 0.3, N_EVAL),
        },
    }
    if history:
        tree["order"]["history"] = np.stack([perm] * 3)
    return with_engine_state(tree, seed)


def save(tmp_path, name, **kw):
    d = tmp_path / name
    tree = fake_tree(**kw)
    ck.save_checkpoint(d, tree)
    return d, tree


# --------------------------------------------------------------------------- inspect
def test_summary_values(tmp_path):
    d, tree = save(tmp_path, "run_a")
    tr = tree["trace"]
    s = hin.summarize(d)
    assert s["file"].endswith("ckpt-000000120.h5")
    assert s["method"] == "async" and s["clock"] == "simulated"
    assert s["world_size"] == 5 and s["workers"] == 4
    assert s["update"] == 120 and s["config"]["data"]["source"] == "digits"
    assert s["updates_traced"] == N_TRACE
    assert s["extra_trace_columns"] == ["stage"]

    st = tr["staleness"]
    assert s["staleness"]["mean"] == pytest.approx(st.mean())
    assert s["staleness"]["max"] == int(st.max())
    assert s["staleness"]["p90"] == pytest.approx(np.percentile(st, 90))
    assert s["staleness"]["histogram"] == {int(v): int(np.sum(st == v)) for v in np.unique(st)}
    assert sum(s["staleness"]["histogram"].values()) == N_TRACE

    w = tr["worker"]
    expect = {int(i): int(np.sum(w == i)) for i in np.unique(w[w >= 0])}
    assert s["per_worker_updates"] == expect
    assert s["aggregated_updates"] == int(np.sum(w == -1)) > 0

    assert s["load"]["samples_computed_total"] == int(tr["samples_computed"].sum())
    assert s["load"]["messages_total"] == int(tr["messages"].sum())
    assert s["load"]["samples_per_update"] == pytest.approx(tr["samples_computed"].mean())

    assert s["step_size"]["min"] == pytest.approx(tr["step_size"].min())
    assert s["step_size"]["max"] == pytest.approx(tr["step_size"].max())
    assert s["k"] == {"mean": 2.0, "min": 2, "max": 2, "varies": False}
    assert s["batch"]["varies"] is False

    assert s["last_eval"]["update"] == 120
    assert s["last_eval"]["train_loss"] == pytest.approx(0.05)
    assert s["best_test_accuracy"] == {"value": 0.8, "update": int(tree["eval"]["update"][2])}
    assert s["orders"]["perm_shape"] == [4, 11]
    assert s["orders"]["history_epochs"] == 3
    assert s["orders"]["padded_entries"] == int(np.sum(tree["order"]["perm"] < 0))
    assert s["time"]["sim_time_end"] == pytest.approx(tr["sim_time"][-1])
    assert s["time"]["wall_time_end"] == pytest.approx(tr["wall_time"][-1])


def test_stage_summary_of_a_staged_run(tmp_path, capsys):
    tree = fake_tree()
    tr = tree["trace"]
    n = tr["update"].size
    stage = np.repeat([0, 1, 2], [n // 2, n // 4, n - n // 2 - n // 4]).astype(np.int32)
    tr["stage"], tr["k"], tr["batch"] = stage, (4 + stage).astype(np.int32), (12 - 4 * stage).astype(np.int32)
    ck.save_checkpoint(tmp_path / "staged", tree)
    rows = hin.summarize(tmp_path / "staged")["stages"]
    assert [r["stage"] for r in rows] == [0, 1, 2]
    assert [r["updates"] for r in rows] == [n // 2, n // 4, n - n // 2 - n // 4]
    assert [(r["k"], r["batch"]) for r in rows] == [(4, 12), (5, 8), (6, 4)]
    for r in rows:
        sel = stage == r["stage"]
        assert r["samples"] == int(tr["samples_computed"][sel].sum())
        assert r["messages"] == int(tr["messages"][sel].sum())
    assert rows[1]["start_time"] == pytest.approx(tr["sim_time"][n // 2 - 1])
    assert hin.main_inspect(str(tmp_path / "staged"), as_json=False) == 0
    assert "stage 1" in capsys.readouterr().out


def test_summary_varying_and_binned(tmp_path):
    d, tree = save(tmp_path, "run_b", vary_k=True, big_staleness=True, history=False,
                   regression=True, clock="wall")
    s = hin.summarize(d)
    k = tree["trace"]["k"]
    assert s["k"]["varies"] is True
    assert s["k"]["mean"] == pytest.approx(k.mean())
    assert (s["k"]["min"], s["k"]["max"]) == (int(k.min()), int(k.max()))
    assert s["batch"] == {"mean": pytest.approx(28 / 3), "min": 4, "max": 16, "varies": True}
    assert s["staleness"]["histogram_binned"] is True
    assert sum(s["staleness"]["histogram"].values()) == N_TRACE
    assert s["best_test_accuracy"] is None
    assert s["orders"]["history_epochs"] is None
    text = hin.format_summary(s)
    assert "varies" in text and "not recorded" in text
    js = hin.summary_json(s)
    assert "NaN" not in js and "Infinity" not in js
    back = json.loads(js)
    assert back["last_eval"]["test_accuracy"] is None  # NaN -> null
    assert back["time"]["sim_time_end"] is None


def test_main_inspect_text_and_json(tmp_path, capsys):
    d, tree = save(tmp_path, "run_a")
    assert hin.main_inspect(str(d / "latest.h5"), as_json=False) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert 12 <= len(lines) <= 35
    for word in ("async", "staleness", "per worker", "orders", "4 x 11", "3 epochs", "load"):
        assert word in text, word
    assert hin.main_inspect(str(d), as_json=True) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out
    data = json.loads(out)
    assert data["per_worker_updates"] == {str(k): v for k, v in
                                          hin.summarize(d)["per_worker_updates"].items()}
    assert data["staleness"]["max"] == int(tree["trace"]["staleness"].max())


def test_inspect_bad_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        hin.summarize(tmp_path / "missing.h5")


# ------------------------------------------------------------------------------ plot
def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def figures(monkeypatch):
    """Capture the Figure objects plot_runs builds (so tests need not rebuild them)."""
    captured = []
    real = hplot.build_figure

    def spy(runs):
        fig = real(runs)
        captured.append((runs, fig))
        return fig

    monkeypatch.setattr(hplot, "build_figure", spy)
    return captured


def test_plot_one_run(tmp_path, figures):
    d, _ = save(tmp_path, "run_a")
    out = hplot.plot_runs([str(d)], str(tmp_path / "figs" / "one.png"))
    assert out == tmp_path / "figs" / "one.png"
    assert out.stat().st_size > 1000
    w, h = _png_size(out)
    assert w > 300 and h > 300
    (runs, fig), = figures
    assert runs[0].label == "run_a (async)"
    # loss/updates, accuracy, loss/time, staleness; no schedule (k, batch constant)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 4 and "k / batch schedule" not in titles
    assert "test accuracy vs updates" in titles
    assert fig.axes[0].get_yscale() == "log"
    assert fig.axes[titles.index("train loss vs time")].get_xlabel() == "simulated time (s)"
    stale_ax = fig.axes[titles.index("staleness histogram")]
    assert stale_ax.patches or stale_ax.collections or stale_ax.lines  # something drawn


def test_plot_two_runs_with_schedule(tmp_path, figures):
    d1, _ = save(tmp_path, "run_a")
    d2, _ = save(tmp_path, "run_b", seed=1, vary_k=True, clock="wall")
    file2 = d2 / "ckpt-000000120.h5"
    out = hplot.plot_runs([str(d1), str(file2)], str(tmp_path / "two.png"))
    assert out.exists() and out.stat().st_size > 1000
    (runs, fig), = figures
    assert [r.label for r in runs] == ["run_a (async)", "run_b (adaptive_kb)"]
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 5 and "k / batch schedule" in titles
    sched = fig.axes[titles.index("k / batch schedule")]
    assert len(sched.lines) == 4  # k and batch for each run
    time_ax = fig.axes[titles.index("train loss vs time")]
    assert "simulated where available" in time_ax.get_xlabel()
    assert fig.axes[0].get_legend() is not None


def test_plot_regression_skips_accuracy_and_labels(tmp_path, figures):
    d, _ = save(tmp_path, "reg", regression=True, clock="wall")
    out = hplot.plot_runs([str(d / "latest.h5")], str(tmp_path / "r.png"), labels=["mine"])
    assert out.stat().st_size > 1000
    (runs, fig), = figures
    assert runs[0].label == "mine"
    titles = [ax.get_title() for ax in fig.axes]
    assert "test accuracy vs updates" not in titles and len(fig.axes) == 3
    assert fig.axes[titles.index("train loss vs time")].get_xlabel() == "wall time (s)"
    with pytest.raises(UserError):
        hplot.plot_runs([str(d)], str(tmp_path / "r.png"), labels=["a", "b"])
    with pytest.raises(UserError):
        hplot.plot_runs([], str(tmp_path / "r.png"))
    with pytest.raises(UserError, match="does not exist"):
        hplot.plot_runs([str(tmp_path / "nope")], str(tmp_path / "r.png"))


def test_stability_is_the_std_over_the_last_k_distinct_evaluations():
    from hpcsgd.inspect import stability
    rng = np.random.default_rng(0)
    acc, loss = rng.random(30), rng.random(30)
    upd = np.arange(30) * 10
    # the final evaluation repeats the last periodic one (same update): counted once
    ev = {"update": np.r_[upd, upd[-1]], "test_accuracy": np.r_[acc, acc[-1]],
          "test_loss": np.r_[loss, loss[-1]]}
    s = stability(ev, last=8)
    assert s["evals"] == 8
    assert s["test_accuracy_std"] == pytest.approx(np.std(acc[-8:]), rel=1e-12)
    assert s["test_loss_std"] == pytest.approx(np.std(loss[-8:]), rel=1e-12)
    assert s["test_accuracy_mean"] == pytest.approx(acc[-8:].mean(), rel=1e-12)
    assert stability(ev, last=100)["evals"] == 30
    # a steady climb: large std, no fluctuation around its line
    ramp = {"update": upd, "test_accuracy": np.linspace(0.5, 0.9, 30), "test_loss": np.linspace(1, 0.2, 30)}
    s = stability(ramp, last=10)
    assert s["test_accuracy_std"] > 0.01 and s["test_accuracy_detrended_std"] < 1e-12
    assert s["test_loss_detrended_std"] < 1e-12


def test_config_line_shows_the_keys_the_method_reads():
    _config_line = hin._config_line
    unused = {"lr": 0.1, "k": 3, "assign": "random", "stepsize": "fixed", "absorb": 2, "momentum": 0.0}
    piag = _config_line({"method": {**unused, "kind": "piag"}})
    assert piag == "method.kind=piag method.stepsize=fixed method.absorb=2"
    fastest = _config_line({"method": {**unused, "kind": "fastest_k", "momentum": 0.9}})
    assert fastest == "method.kind=fastest_k method.lr=0.1 method.k=3 method.momentum=0.9"
    assert _config_line({"method": {**unused, "kind": "sync"}}) == "method.kind=sync method.lr=0.1"


# ------------------------------------------------------------------ inspect: damage
def test_inspect_dir_reports_the_damaged_newer_checkpoints_it_skipped(tmp_path, capsys):
    d = tmp_path / "run"
    good = ck.save_checkpoint(d, fake_tree(update=100, seed=1), keep=5)
    flipped = ck.save_checkpoint(d, fake_tree(update=110), keep=5)
    truncated = ck.save_checkpoint(d, fake_tree(update=120), keep=5)
    _flip_bit(flipped, "model/params")
    truncated.write_bytes(truncated.read_bytes()[:1000])

    s = hin.summarize(d)
    assert s["file"] == str(good) and s["update"] == 100
    assert [k["file"] for k in s["skipped"]] == [str(truncated), str(flipped)]
    assert s["skipped"][1]["reason"] == "the file is damaged: checksum mismatch in /model/params"
    assert s["skipped"][0]["reason"].startswith("cannot open as HDF5")
    assert s["checksums"]["status"] == "verified" and s["checksums"]["verified"] > 50
    assert capsys.readouterr().err == ""  # reported in the summary, not as warnings

    assert hin.main_inspect(str(d), as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    skipped = [line for line in lines if line.startswith("skipped")]
    assert len(skipped) == 2
    assert skipped[1].split(None, 1)[1] == f"{flipped}: the file is damaged: checksum mismatch in /model/params"
    assert str(truncated) in skipped[0] and "cannot open as HDF5" in skipped[0]
    assert any(line.startswith("checksums") and "verified" in line for line in lines)

    assert hin.main_inspect(str(d), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["skipped"] == s["skipped"] and data["file"] == str(good)


def test_inspect_of_a_damaged_file_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    d = tmp_path / "run"
    path = ck.save_checkpoint(d, fake_tree(), keep=5)
    _flip_bit(path, "trace/step_size", byte=9)
    proc = subprocess.run([sys.executable, "-m", "hpcsgd", "inspect", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"hpcsgd: error: {path}: not a valid hpcsgd checkpoint "
                           f"(the file is damaged: checksum mismatch in /trace/step_size)\n")


def test_inspect_says_when_a_file_carries_no_checksums(tmp_path, capsys):
    d, _ = save(tmp_path, "old")
    _strip_checksums(d / "ckpt-000000120.h5")
    s = hin.summarize(d)
    assert s["checksums"]["verified"] == 0
    assert s["checksums"]["status"].startswith("none (format 1")
    text = hin.format_summary(s)
    line, = [line for line in text.splitlines() if line.startswith("checksums")]
    assert line.split(None, 1)[1] == "none (format 1, written before checksums: loaded unchecked)"


def test_standard_trace_columns_come_from_the_trace_table(tmp_path):
    from hpcsgd.trace import TRACE_COLUMNS
    d, tree = save(tmp_path, "run_a")
    assert "compute_seconds" in tree["trace"] and "compute_seconds" in TRACE_COLUMNS
    s = hin.summarize(d)
    assert s["extra_trace_columns"] == ["stage"]
    assert "extra columns: stage" in hin.format_summary(s)


@pytest.mark.parametrize("why", ["test_rows = 0", "all NaN"])
def test_no_test_split_is_said_not_printed_as_nan(tmp_path, capsys, why):
    tree = fake_tree()
    if why == "test_rows = 0":
        tree["test_rows"] = 0
        tree["eval"]["test_loss"][:] = 0.0  # whatever the engine reports for no rows
        tree["eval"]["test_accuracy"][:] = 0.0
    else:
        tree["eval"]["test_loss"][:] = np.nan
        tree["eval"]["test_accuracy"][:] = np.nan
    ck.save_checkpoint(tmp_path / "run", tree)
    s = hin.summarize(tmp_path / "run")
    assert s["test_split"] is False and s["best_test_accuracy"] is None and s["stability"] is None
    assert "test_accuracy" not in s["last_eval"] and "test_loss" not in s["last_eval"]
    assert s["last_eval"]["train_loss"] == pytest.approx(0.05)
    assert hin.main_inspect(str(tmp_path / "run"), as_json=False) == 0
    text = capsys.readouterr().out
    assert "test_accuracy" not in text and "test_loss" not in text and "best acc" not in text
    test_line, = [line for line in text.splitlines() if line.startswith("test ")]
    assert test_line.split(None, 1)[1] == ("no test split (test_rows = 0)" if why == "test_rows = 0"
                                           else "no test split (every test metric is NaN)")
    data = json.loads(hin.summary_json(s))
    assert data["test_split"] is False


def test_a_test_split_is_reported_as_before(tmp_path):
    tree = fake_tree()
    tree["test_rows"] = 120
    ck.save_checkpoint(tmp_path / "run", tree)
    s = hin.summarize(tmp_path / "run")
    assert s["test_split"] is True and s["test_rows"] == 120
    assert s["best_test_accuracy"] == {"value": 0.8, "update": int(tree["eval"]["update"][2])}
    assert "no test split" not in hin.format_summary(s)
