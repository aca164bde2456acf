"""Atomic HDF5 checkpoint I/O: round trip, retention, corruption fallback, crash safety."""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcsgd import checkpoint as ck
from hpcsgd.config import resolve, to_json
from hpcsgd.errors import UserError
from hpcsgd.trace import EVAL_COLUMNS, TRACE_COLUMNS

N_TRACE = 50
N_EVAL = 5


def _stream(rng: np.random.Generator) -> str:
    """A bit-generator state as the engine stores it (stragglers.stream_state)."""
    return json.dumps(np.random.Generator(np.random.PCG64(int(rng.integers(2**63)))).bit_generator.state)


def with_engine_state(tree: dict, seed: int = 0) -> dict:
    """Complete ``tree`` (root attributes, config, /model/params, optionally /order/perm,
    /trace and /eval columns) into the layout hpcsgd.engine.layout writes: optimizer,
    method, engine and per-worker state, every rank's streams, order positions and
    every standard trace/eval column, sized by its world size and parameters."""
    rng = np.random.default_rng(seed + 1000)
    M = tree["world_size"] - 1
    d = tree["model"]["params"].size
    update = tree["update"]
    state = tree.setdefault("state", {})
    state.setdefault("optimizer", {}).setdefault("momentum", np.zeros(d))
    state.setdefault("method", {})
    live = 2  # jobs in flight, with their result rows (header + d)
    state.setdefault("engine", {
        "version": update, "seq": update + M, "sim_now": 1.5, "wall_time": 2.5,
        "worker_end": rng.random(M + 1), "contributions": rng.integers(0, update + 1, M + 1).astype(np.int64),
        "mirror_pos": rng.integers(0, 9, M).astype(np.int64), "mirror_started": np.ones(M, dtype=np.int64),
        "pending": np.array([[1, 0, 4]], dtype=np.int64), "arrivals": 0,
        "inflight": {"jobs": np.array([[j, update + j, update - 1, 4, 0] for j in range(1, live + 1)], dtype=np.int64),
                     "times": rng.random((live, 4)), "results": rng.standard_normal((live, 11 + d))},
        "row_samples": 0, "row_messages": 0, "row_compute": 0.0, "busy_seconds": 0.25, "wait_seconds": 0.5})
    workers = state.setdefault("workers", {})
    for j in range(1, M + 1):
        workers.setdefault(f"worker_{j}", {"kind": "rr", "epoch": 1})
    streams = tree.setdefault("rng", {})
    streams.setdefault("master", {"method": _stream(rng)})
    for j in range(1, M + 1):
        streams.setdefault(f"worker_{j}", {"order": _stream(rng), "delay": _stream(rng)})
    order = tree.setdefault("order", {})
    order.setdefault("perm", np.stack([rng.permutation(9) for _ in range(M)]).astype(np.int64))
    order.setdefault("pos", rng.integers(0, order["perm"].shape[1], M).astype(np.int64))
    order.setdefault("epochs_started", np.ones(M, dtype=np.int64))
    for group, columns in (("trace", TRACE_COLUMNS), ("eval", EVAL_COLUMNS)):
        table = tree.setdefault(group, {})
        n = len(next(iter(table.values()))) if table else 0
        for name, dtype in columns.items():
            table.setdefault(name, np.zeros(n, dtype=dtype))
    return tree


def make_tree(update: int = 100, seed: int = 0, d: int = 37, workers: int = 4) -> dict:
    """A realistic checkpoint tree as the engine would build it."""
    rng = np.random.default_rng(seed)
    n_local = 23
    perm = np.full((workers, n_local), -1, dtype=np.int64)
    for w in range(workers):
        n = n_local - (w % 2)  # ragged: padded with -1
        perm[w, :n] = rng.permutation(n)
    config = resolve({
        "run": {"out": "runs/x", "seed": seed, "clock": "simulated", "epochs": 3},
        "data": {"source": "digits", "partition": "iid"},
        "model": {"kind": "softmax"},
        "method": {"kind": "async", "lr": 0.05, "assign": "shuffle", "momentum": 0.9},
        "order": {"kind": "grab", "batch": 4, "record_history": True},
        "stragglers": {"model": "exp", "compute_mean": 0.01},
    })
    upd0 = update - N_TRACE
    return with_engine_state({
        "update": update,
        "epoch": update / 40.0,
        "method": "async",
        "world_size": workers + 1,
        "config": to_json(config),
        "clock": "simulated",
        "stop_reason": "",
        "model": {"params": rng.standard_normal(d)},
        "state": {
            "optimizer": {"momentum": rng.standard_normal(d)},
            "method": {"pos": 0, "perm": rng.permutation(workers).astype(np.int64), "active": True},
            "workers": {f"worker_{j}": {"kind": "grab", "dim": d, "epoch": 1,
                                        f"worker_{j}": {"acc": rng.standard_normal(d), "left": 3,
                                                        "next": rng.permutation(n_local).astype(np.int64)}}
                        for j in range(1, workers + 1)},
        },
        "order": {"perm": perm, "pos": rng.integers(0, n_local, workers).astype(np.int64),
                  "epochs_started": np.ones(workers, dtype=np.int64),
                  "history": np.stack([perm, perm[:, ::-1]])},
        "trace": {
            "update": np.arange(upd0 + 1, update + 1, dtype=np.int64),
            "wall_time": np.cumsum(rng.random(N_TRACE)),
            "sim_time": np.cumsum(rng.exponential(size=N_TRACE)),
            "worker": rng.integers(1, workers + 1, size=N_TRACE).astype(np.int32),
            "staleness": rng.integers(0, 6, size=N_TRACE).astype(np.int32),
            "step_size": np.full(N_TRACE, 0.05),
            "k": np.ones(N_TRACE, dtype=np.int32),
            "batch": np.full(N_TRACE, 4, dtype=np.int32),
            "samples_computed": np.full(N_TRACE, 4, dtype=np.int64),
            "messages": np.full(N_TRACE, 2, dtype=np.int32),
            "compute_seconds": rng.random(N_TRACE),
            "queue": rng.integers(0, 3, size=N_TRACE).astype(np.int32),  # a method's own column
        },
        "eval": {
            "update": np.linspace(upd0, update, N_EVAL).astype(np.int64),
            "epoch": np.linspace(upd0, update, N_EVAL) / 40.0,
            "wall_time": np.linspace(0, 10, N_EVAL),
            "sim_time": np.linspace(0, 30, N_EVAL),
            "train_loss": np.geomspace(2.0, 0.1, N_EVAL),
            "test_loss": np.geomspace(2.2, 0.2, N_EVAL),
            "test_accuracy": np.linspace(0.1, 0.9, N_EVAL),
            "grad_norm": np.geomspace(5, 0.5, N_EVAL),
        },
    }, seed)


def assert_tree_equal(a: dict, b: dict, path: str = "") -> None:
    assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
    for k in a:
        x, y = a[k], b[k]
        where = f"{path}/{k}"
        if isinstance(x, dict):
            assert isinstance(y, dict), where
            assert_tree_equal(x, y, where)
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), where
            assert x.dtype == y.dtype and x.shape == y.shape, where
            assert x.tobytes() == y.tobytes(), where  # bit-equal
        else:
            assert type(x) is type(y) and x == y, (where, x, y)


def snapshot(directory: Path) -> dict:
    """name -> (bytes, mtime_ns) for every regular file (not following symlinks)."""
    out = {}
    for p in directory.iterdir():
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[p.name] = (p.read_bytes(), st.st_mtime_ns)
    return out


def ckpt_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("ckpt-*.h5"))


# ------------------------------------------------------------------------ round trip
def test_round_trip_exact(tmp_path):
    tree = make_tree()
    path = ck.save_checkpoint(tmp_path, tree, keep=3)
    assert path == tmp_path / "ckpt-000000100.h5"
    assert ck.checkpoint_name(100) == "ckpt-000000100.h5"
    file, loaded = ck.load_checkpoint(path)
    assert file == path
    assert loaded["format"] == ck.FORMAT
    assert loaded["format_version"] == ck.FORMAT_VERSION
    assert isinstance(loaded["created"], str) and loaded["created"][:2] == "20"
    assert isinstance(loaded["hpcsgd_version"], str)
    for extra in ("format", "format_version", "created", "hpcsgd_version"):
        loaded.pop(extra)
    assert_tree_equal(tree, loaded)
    assert loaded["state"]["method"]["active"] is True
    assert loaded["config"] == tree["config"]  # JSON kept as str
    ck.validate_tree(ck.load_checkpoint(tmp_path)[1])

    with h5py.File(path, "r") as f:
        for group in ("trace", "eval"):
            for name, ds in f[group].items():
                assert ds.maxshape == (None,), (group, name)
                assert ds.chunks is not None
        assert f["model/params"].maxshape == f["model/params"].shape  # plain dataset
        # resizable trace really is extendable
    with h5py.File(path, "r+") as f:
        f["trace/update"].resize((N_TRACE + 10,))
        assert f["trace/update"].shape == (N_TRACE + 10,)


def test_save_does_not_mutate_and_requires_attrs(tmp_path):
    tree = make_tree()
    before = set(tree)
    ck.save_checkpoint(tmp_path, tree)
    assert set(tree) == before
    bad = make_tree()
    del bad["world_size"]
    with pytest.raises(ValueError, match="world_size"):
        ck.save_checkpoint(tmp_path, bad)
    with pytest.raises(ValueError):
        ck.save_checkpoint(tmp_path, make_tree(), keep=0)
    with pytest.raises(TypeError):
        ck.save_checkpoint(tmp_path, dict(make_tree(), junk=[1, 2, 3]))


# ------------------------------------------------------------------------- retention
def test_keep_n_and_latest(tmp_path):
    for i, u in enumerate((10, 20, 30, 40, 50)):
        ck.save_checkpoint(tmp_path, make_tree(update=u, seed=i), keep=2)
    assert ckpt_names(tmp_path) == ["ckpt-000000040.h5", "ckpt-000000050.h5"]
    latest = tmp_path / "latest.h5"
    assert latest.is_symlink()
    assert os.readlink(latest) == "ckpt-000000050.h5"  # relative target
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt-000000050.h5", "ckpt-000000040.h5"]
    assert ck.list_checkpoints(tmp_path / "ckpt-000000040.h5") == [tmp_path / "ckpt-000000040.h5"]
    file, tree = ck.load_checkpoint(latest)
    assert file.name == "ckpt-000000050.h5" and tree["update"] == 50
    file, tree = ck.load_checkpoint(tmp_path)
    assert tree["update"] == 50
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000000040.h5", "ckpt-000000050.h5", "latest.h5"]


def test_keep_one_never_deletes_new_file(tmp_path):
    ck.save_checkpoint(tmp_path, make_tree(update=300), keep=1)
    # resuming from an older point of the same directory: the new file must survive
    ck.save_checkpoint(tmp_path, make_tree(update=250), keep=1)
    assert "ckpt-000000250.h5" in ckpt_names(tmp_path)
    file, tree = ck.load_checkpoint(tmp_path)  # latest.h5 names the file written last
    assert tree["update"] == 250


# ------------------------------------------------------------------------ corruption
def _three_checkpoints(tmp_path):
    for i, u in enumerate((10, 20, 30)):
        ck.save_checkpoint(tmp_path, make_tree(update=u, seed=i), keep=5)
    return tmp_path / "ckpt-000000030.h5", tmp_path / "ckpt-000000020.h5"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_newest_falls_back(tmp_path, capsys, damage):
    newest, previous = _three_checkpoints(tmp_path)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(len(data)))
    else:
        newest.write_bytes(b"")
    file, tree = ck.load_checkpoint(tmp_path)
    assert file == previous
    assert tree["update"] == 20
    err = capsys.readouterr().err
    assert "hpcsgd: warning: skipping corrupt checkpoint" in err
    assert str(newest) in err and str(previous) in err
    # latest.h5 (pointing at the corrupt file) falls back the same way
    assert ck.load_checkpoint(tmp_path / "latest.h5")[0] == previous
    # naming the corrupt file itself is an error that names it
    with pytest.raises(UserError) as exc:
        ck.load_checkpoint(newest)
    msg = str(exc.value)
    assert str(newest) in msg and "\n" not in msg


def test_incomplete_checkpoints_rejected(tmp_path, capsys):
    # Structurally valid HDF5 files that are not complete checkpoints.
    ck.save_checkpoint(tmp_path, make_tree(update=10), keep=10)
    cases = {
        20: lambda f: f.attrs.__setitem__("format", "something-else"),
        30: lambda f: f.attrs.__setitem__("format_version", ck.FORMAT_VERSION + 1),
        40: lambda f: f.__delitem__("model/params"),
        50: lambda f: f.attrs.__delitem__("world_size"),
        60: lambda f: (f["trace/update"].resize((N_TRACE - 1,))),
    }
    reasons = {20: "format", 30: "newer than supported", 40: "/model/params",
               50: "world_size", 60: "unequal lengths"}
    for u, damage in cases.items():
        p = ck.save_checkpoint(tmp_path, make_tree(update=u), keep=10)
        with h5py.File(p, "r+") as f:
            damage(f)
        with pytest.raises(UserError, match=reasons[u]):
            ck.load_checkpoint(p)
    file, tree = ck.load_checkpoint(tmp_path)
    assert tree["update"] == 10
    err = capsys.readouterr().err
    assert err.count("skipping corrupt checkpoint") == 5


def test_no_valid_or_no_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint in"):
        ck.load_checkpoint(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope")
    (tmp_path / "ckpt-000000005.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(UserError, match="no valid checkpoint in") as exc:
        ck.load_checkpoint(tmp_path)
    assert "ckpt-000000005.h5" in str(exc.value)


# ----------------------------------------------------------------------------- crash
def test_crash_in_rename_leaves_previous_untouched(tmp_path, monkeypatch):
    _three_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    latest_before = os.readlink(tmp_path / "latest.h5")
    real_replace = os.replace

    def boom(src, dst, *a, **kw):
        if str(src).endswith(".h5.tmp"):
            raise OSError("simulated crash during rename")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        ck.save_checkpoint(tmp_path, make_tree(update=40), keep=1)
    monkeypatch.setattr(os, "replace", real_replace)

    assert snapshot(tmp_path) == before  # bytes and mtimes unchanged, nothing deleted
    assert os.readlink(tmp_path / "latest.h5") == latest_before
    assert not (tmp_path / "ckpt-000000040.h5").exists()
    assert ck.load_checkpoint(tmp_path)[1]["update"] == 30


def test_crash_between_rename_and_latest_swap_loads_the_new_file(tmp_path, monkeypatch):
    """The new file is complete once renamed; a crash before latest.h5 is re-pointed
    must not send a resume back to the previous checkpoint."""
    _three_checkpoints(tmp_path)

    def crash(*a, **kw):
        raise KeyboardInterrupt("simulated crash before the symlink swap")

    monkeypatch.setattr(ck, "_point_latest", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, make_tree(update=40), keep=3)
    monkeypatch.undo()
    assert os.readlink(tmp_path / "latest.h5") == "ckpt-000000030.h5"
    assert ck.load_checkpoint(tmp_path)[1]["update"] == 40


def test_the_file_written_last_wins_over_an_abandoned_higher_update(tmp_path):
    _three_checkpoints(tmp_path)  # 10, 20, 30
    # resumed from update 10: the new timeline writes 15 after the old 20 and 30
    time.sleep(0.01)
    ck.save_checkpoint(tmp_path, make_tree(update=15, seed=5), keep=3)
    file, tree = ck.load_checkpoint(tmp_path)
    assert tree["update"] == 15 and file.name == "ckpt-000000015.h5"


def test_crash_mid_write_leaves_previous_untouched(tmp_path, monkeypatch):
    _three_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    real_write = ck.write_tree

    def partial(group, tree):
        if group.name == "/":
            group.create_group("model").create_dataset("params", data=np.zeros(3))
            raise RuntimeError("simulated crash mid-write")
        return real_write(group, tree)

    monkeypatch.setattr(ck, "write_tree", partial)
    with pytest.raises(RuntimeError, match="mid-write"):
        ck.save_checkpoint(tmp_path, make_tree(update=40), keep=1)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert ck.load_checkpoint(tmp_path)[1]["update"] == 30


def test_stale_tmp_from_hard_crash_is_ignored_then_removed(tmp_path):
    _three_checkpoints(tmp_path)
    # A process killed mid-write leaves a partial temp file (and maybe a link temp).
    good = (tmp_path / "ckpt-000000030.h5").read_bytes()
    stale = tmp_path / ".ckpt-000000040.h5.tmp"
    stale.write_bytes(good[: len(good) // 3])
    os.symlink("ckpt-000000030.h5", tmp_path / ".latest.h5.tmp")
    assert ck.load_checkpoint(tmp_path)[1]["update"] == 30  # temp never considered
    ck.save_checkpoint(tmp_path, make_tree(update=50), keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-000000030.h5", "ckpt-000000050.h5", "latest.h5"]
    assert ck.load_checkpoint(tmp_path)[1]["update"] == 50


def test_read_write_tree_generic(tmp_path):
    tree = {
        "a": 1, "b": 2.5, "c": True, "s": "héllo", "n": np.int32(7), "f": np.float32(0.5),
        "g": {"x": np.arange(6, dtype=np.uint8).reshape(2, 3), "empty": {}},
        "trace": {"col": np.zeros(0, dtype=np.int32)},
    }
    with h5py.File(tmp_path / "t.h5", "w") as f:
        ck.write_tree(f, tree)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        back = ck.read_tree(f)
        assert f["trace/col"].maxshape == (None,)
    assert back["a"] == 1 and type(back["a"]) is int
    assert back["b"] == 2.5 and back["c"] is True and back["s"] == "héllo"
    assert back["n"] == 7 and back["f"] == 0.5
    assert back["g"]["empty"] == {}
    np.testing.assert_array_equal(back["g"]["x"], tree["g"]["x"])
    assert back["trace"]["col"].shape == (0,)
    with h5py.File(tmp_path / "u.h5", "w") as f:
        ck.write_tree(f, {"unset": None})
        assert "unset" not in f.attrs and "unset" not in f
        with pytest.raises(TypeError):
            ck.write_tree(f, {"bad": [1, 2]})
        with pytest.raises(TypeError):
            ck.write_tree(f, {"bad": np.array(["a", "b"])})
        with pytest.raises(ValueError):
            ck.write_tree(f, {"a/b": 1})


# --------------------------------------------------- damage: checksums and structure
def _flip_bit(path: Path, dataset: str, byte: int = 3, bit: int = 0) -> None:
    """Flip one bit of a dataset's stored bytes in the file itself (not through h5py)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + byte)
        value = fh.read(1)[0]
        fh.seek(offset + byte)
        fh.write(bytes([value ^ (1 << bit)]))


def _edit(fn):
    """A damage done through h5py on the open file."""
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            fn(f)
    return damage


def _config_edit(change):
    def fn(f):
        cfg = json.loads(f.attrs["config"])
        change(cfg)
        f.attrs["config"] = json.dumps(cfg)
    return _edit(fn)


def _recreate(name: str, shrink: int):
    """Delete a dataset and write it back shorter (an old file's param vector, say)."""
    def fn(f):
        data = f[name][...]
        del f[name]
        f[name] = data[:-shrink]
    return _edit(fn)


def _raw_replace(old: bytes, new: bytes):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        assert data.count(old) == 1, old
        path.write_bytes(data.replace(old, new))
    return damage


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def _shrink_all_trace(f):
    for name in f["trace"]:
        f["trace"][name].resize((N_TRACE - 3,))


# name -> (damage applied to the newest file, what its reason must say)
DAMAGE = {
    "trace column shortened": (_edit(lambda f: f["trace/staleness"].resize((N_TRACE - 1,))), "unequal lengths"),
    "whole trace shortened": (_edit(_shrink_all_trace), "checksum mismatch in /trace/"),
    "params shortened": (_recreate("model/params", 1), "momentum has shape"),
    "momentum deleted": (_edit(lambda f: f.__delitem__("state/optimizer/momentum")),
                         "missing dataset /state/optimizer/momentum"),
    "eval column deleted": (_edit(lambda f: f.__delitem__("eval/test_loss")), "missing column /eval/test_loss"),
    "compute_seconds deleted": (_edit(lambda f: f.__delitem__("trace/compute_seconds")),
                                "missing column /trace/compute_seconds"),
    "method state deleted": (_edit(lambda f: f.__delitem__("state/method/perm")),
                             r"checksum mismatch in /state/method \(attributes or members\)"),
    "worker group deleted": (_edit(lambda f: f.__delitem__("rng/worker_3")), "missing group /rng/worker_3"),
    "worker state deleted": (_edit(lambda f: f.__delitem__("state/workers/worker_4")),
                             "missing group /state/workers/worker_4"),
    "engine deleted": (_edit(lambda f: f.__delitem__("state/engine")), "missing group /state/engine"),
    "engine attribute deleted": (_edit(lambda f: f["state/engine"].attrs.__delitem__("seq")),
                                 "missing attribute 'seq' of /state/engine"),
    "root attribute deleted": (_edit(lambda f: f.attrs.__delitem__("clock")), r"checksum mismatch in /[ ;(]"),
    "stream garbled": (_edit(lambda f: f["rng/worker_2"].attrs.__setitem__("delay", "{not json")),
                       "/rng/worker_2 attribute 'delay' is not valid JSON"),
    "bogus method name": (_edit(lambda f: f.attrs.__setitem__("method", "bogus")),
                          "'method' is 'bogus' but its config has method.kind = 'async'"),
    "config lr changed": (_config_edit(lambda c: c["method"].__setitem__("lr", 0.07)), r"checksum mismatch in /[ ;(]"),
    "config unknown key": (_config_edit(lambda c: c["method"].__setitem__("lrr", 0.1)),
                           "config is invalid .*unknown key method.lrr"),
    "config not JSON": (_edit(lambda f: f.attrs.__setitem__("config", "{")), "'config' is not valid JSON"),
    "world size changed": (_edit(lambda f: f.attrs.__setitem__("world_size", 6)), "expected [(]6,[)]"),
    "update changed": (_edit(lambda f: f.attrs.__setitem__("update", 101)), "version 100 differs from the root update 101"),
    "perm out of range": (_edit(lambda f: f["order/perm"].__setitem__((0, 0), 23)), r"outside \[-1, 23\)"),
    "checksum deleted": (_edit(lambda f: f["model/params"].attrs.__delitem__(ck.CHECKSUM_ATTR)),
                         "no checksum on /model/params"),
    "bit flip in params": (lambda p: _flip_bit(p, "model/params", byte=5), "checksum mismatch in /model/params"),
    "bit flip in a trace column": (lambda p: _flip_bit(p, "trace/step_size", byte=16, bit=7),
                                   "checksum mismatch in /trace/step_size"),
    "bit flip in the params' sign": (lambda p: _flip_bit(p, "model/params", byte=7, bit=7),
                                     "checksum mismatch in /model/params"),
    "config edited in the raw file": (_raw_replace(b'"lr": 0.05', b'"lr": 0.06'), ""),
    "truncated file": (_truncate, "cannot open as HDF5|unreadable content"),
    "zero-length file": (lambda p: p.write_bytes(b""), "cannot open as HDF5"),
    "not an HDF5 file": (lambda p: p.write_text("ckpt? no: a text file\n" * 100), "cannot open as HDF5"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_damage_falls_back_to_the_intact_older_checkpoint(tmp_path, capsys, kind):
    damage, reason = DAMAGE[kind]
    older = ck.save_checkpoint(tmp_path, make_tree(update=90, seed=1), keep=5)
    newest = ck.save_checkpoint(tmp_path, make_tree(update=100), keep=5)
    ck.load_checkpoint(newest)  # intact before the damage
    damage(newest)

    file, tree = ck.load_checkpoint(tmp_path)
    assert file == older and tree["update"] == 90
    np.testing.assert_array_equal(tree["model"]["params"], make_tree(update=90, seed=1)["model"]["params"])
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"hpcsgd: warning: skipping corrupt checkpoint {newest} (")
    assert warning.endswith(f"; falling back to {older}") and "\n" not in warning
    assert re.search(reason, warning), warning

    with pytest.raises(UserError) as exc:
        ck.load_checkpoint(newest)
    msg = str(exc.value)
    assert msg.startswith(f"{newest}: not a valid hpcsgd checkpoint (") and "\n" not in msg
    assert re.search(reason, msg), msg


def test_a_dangling_latest_symlink_falls_back_with_a_warning(tmp_path, capsys):
    older = ck.save_checkpoint(tmp_path, make_tree(update=90), keep=5)
    newest = ck.save_checkpoint(tmp_path, make_tree(update=100), keep=5)
    newest.unlink()  # latest.h5 -> ckpt-000000100.h5, which is gone
    for path in (tmp_path, tmp_path / "latest.h5"):
        file, tree = ck.load_checkpoint(path)
        assert file == older and tree["update"] == 90
        err = capsys.readouterr().err
        assert (f"skipping corrupt checkpoint {tmp_path / 'latest.h5'} (a symlink to ckpt-000000100.h5, "
                f"which does not exist); falling back to {older}") in err
    older.unlink()
    with pytest.raises(UserError, match="no valid checkpoint in .*latest.h5: a symlink to ckpt-000000100.h5"):
        ck.load_checkpoint(tmp_path)


def test_every_damaged_candidate_is_named_when_none_is_valid(tmp_path):
    a = ck.save_checkpoint(tmp_path, make_tree(update=90), keep=5)
    b = ck.save_checkpoint(tmp_path, make_tree(update=100), keep=5)
    a.write_bytes(b"")
    _flip_bit(b, "model/params")
    with pytest.raises(UserError) as exc:
        ck.load_checkpoint(tmp_path)
    msg = str(exc.value)
    assert msg.startswith(f"no valid checkpoint in {tmp_path} (") and "\n" not in msg
    assert "ckpt-000000100.h5: the file is damaged: checksum mismatch in /model/params" in msg
    assert "ckpt-000000090.h5: cannot open as HDF5" in msg


def test_checksums_cover_every_dataset_and_group(tmp_path):
    tree = make_tree()
    path = ck.save_checkpoint(tmp_path, tree)
    datasets, groups = [], []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: (datasets if isinstance(obj, h5py.Dataset) else groups).append(obj.name))
        for name in datasets:
            arr = f[name][...]
            assert f[name].attrs[ck.CHECKSUM_ATTR] == ck._dataset_crc(arr)
            # an independent reference: CRC-32 of the dtype, shape and raw bytes
            header = f"{arr.dtype.str} {arr.shape}".encode()
            assert f[name].attrs[ck.CHECKSUM_ATTR] == zlib.crc32(arr.tobytes(), zlib.crc32(header))
        for name in groups + ["/"]:
            assert ck.CHECKSUM_ATTR in f[name].attrs, name
    report = ck.ChecksumReport()
    loaded = ck._read_checkpoint(path, checksums=report)
    assert report.verified == len(datasets) + len(groups) + 1 and not report.missing and not report.mismatched
    assert ck.CHECKSUM_ATTR not in loaded and ck.CHECKSUM_ATTR not in loaded["model"]
    with pytest.raises(ValueError, match="reserved"):
        with h5py.File(tmp_path / "x.h5", "w") as f:
            ck.write_tree(f, {ck.CHECKSUM_ATTR: 1})


def _strip_checksums(path: Path) -> None:
    """What a file written before checksums looks like: format 1, no _crc32 anywhere."""
    with h5py.File(path, "r+") as f:
        def strip(name, obj):
            if ck.CHECKSUM_ATTR in obj.attrs:
                del obj.attrs[ck.CHECKSUM_ATTR]
        f.visititems(strip)
        del f.attrs[ck.CHECKSUM_ATTR]
        f.attrs["format_version"] = 1


def test_a_file_written_before_checksums_loads_unchecked(tmp_path, capsys):
    tree = make_tree()
    path = ck.save_checkpoint(tmp_path, tree)
    _strip_checksums(path)
    loaded = ck.find_checkpoint(tmp_path)
    assert loaded.file == path and loaded.skipped == [] and capsys.readouterr().err == ""
    assert loaded.checksums.verified == 0 and loaded.checksums.missing and not loaded.checksums.mismatched
    np.testing.assert_array_equal(loaded.tree["model"]["params"], tree["model"]["params"])
    # unchecked is not unvalidated: the layout is still checked
    with h5py.File(path, "r+") as f:
        f.attrs["method"] = "bogus"
    with pytest.raises(UserError, match="'method' is 'bogus'"):
        ck.load_checkpoint(path)


def test_check_hook_rejects_a_candidate_like_damage(tmp_path, capsys):
    older = ck.save_checkpoint(tmp_path, make_tree(update=90), keep=5)
    newest = ck.save_checkpoint(tmp_path, make_tree(update=100), keep=5)
    seen = []

    def check(tree):
        seen.append(tree["update"])
        if tree["update"] == 100:
            raise ValueError("method state does not fit: perm has 3 entries, expected 4")

    file, tree = ck.load_checkpoint(tmp_path, check=check)
    assert file == older and seen == [100, 90]
    assert ("skipping corrupt checkpoint " + str(newest) + " (method state does not fit: perm has 3 "
            "entries, expected 4); falling back to") in capsys.readouterr().err
    with pytest.raises(UserError, match=r"ckpt-000000100.h5: not a valid hpcsgd checkpoint \(method state"):
        ck.load_checkpoint(newest, check=check)

    def lookup(tree):
        return tree["state"]["method"]["no such key"]

    with pytest.raises(UserError, match=r"not a valid hpcsgd checkpoint \(KeyError: 'no such key'\)"):
        ck.load_checkpoint(older, check=lookup)

    def user_error(tree):
        raise UserError("data set digits is not prepared")

    # a problem with the user's setup, not with the file: no fallback, the error as is
    with pytest.raises(UserError, match="^data set digits is not prepared$"):
        ck.load_checkpoint(tmp_path, check=user_error)


@pytest.mark.parametrize("error", [
    OSError("Can't read data (inflate() failed)"), KeyError("model"), ValueError("Invalid dataspace"),
    TypeError("No NumPy equivalent for TypeBitfieldID"), RuntimeError("Unable to get attribute"),
    IndexError("index out of range"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    json.JSONDecodeError("Expecting value", "{", 1), MemoryError("Unable to allocate 8.00 EiB"),
    OverflowError("cannot fit 'int' into an index-sized integer"), RecursionError("maximum recursion depth"),
])
def test_every_read_error_becomes_a_reason(tmp_path, monkeypatch, capsys, error):
    older = ck.save_checkpoint(tmp_path, make_tree(update=90), keep=5)
    newest = ck.save_checkpoint(tmp_path, make_tree(update=100), keep=5)
    real = ck.read_tree

    def failing(group, checksums=None):
        if group.name == "/" and Path(group.file.filename) == newest:
            raise error
        return real(group, checksums)

    monkeypatch.setattr(ck, "read_tree", failing)
    assert ck.load_checkpoint(tmp_path)[0] == older
    err = capsys.readouterr().err
    assert f"skipping corrupt checkpoint {newest} (unreadable content (" in err and "Traceback" not in err
    with pytest.raises(UserError, match="unreadable content"):
        ck.load_checkpoint(newest)


def test_a_garbled_shape_is_refused_before_it_is_allocated(tmp_path):
    path = ck.save_checkpoint(tmp_path, make_tree(), keep=5)
    with h5py.File(path, "r+") as f:  # a trace column claiming 2^40 rows, unallocated
        f["trace/messages"].resize((2**40,))
    with pytest.raises(UserError, match=r"dataset /trace/messages claims shape \(1099511627776,\)"):
        ck.load_checkpoint(path)


def test_validate_tree_accepts_each_engine_method_name(tmp_path):
    for kind, extra in (("sync", {}), ("fastest_k", {"k": 2}), ("gsgm", {}), ("piag", {"L": 1.0}),
                        ("adaptive_k", {})):
        tree = make_tree()
        cfg = json.loads(tree["config"])
        cfg["method"].update(kind=kind, momentum=0.0, **extra)
        if kind == "adaptive_k":
            cfg["order"]["kind"] = "rr"
        tree["config"], tree["method"] = json.dumps(cfg), kind
        tree.update(format=ck.FORMAT, format_version=ck.FORMAT_VERSION, created="2026-01-01T00:00:00+00:00")
        ck.validate_tree(tree)
        tree["method"] = "async" if kind != "async" else "sync"
        with pytest.raises(ValueError, match="method.kind"):
            ck.validate_tree(tree)


def test_a_named_file_that_is_no_checkpoint_file(tmp_path):
    os.symlink("ckpt-000000100.h5", tmp_path / "mine.h5")
    with pytest.raises(UserError, match=r"mine.h5: not a valid hpcsgd checkpoint \(a symlink to ckpt-000000100.h5, "
                                        r"which does not exist\)"):
        ck.load_checkpoint(tmp_path / "mine.h5")
    (tmp_path / "ckpt-000000200.h5").mkdir()  # a directory with a checkpoint's name
    older = ck.save_checkpoint(tmp_path, make_tree(update=90), keep=5)
    loaded = ck.find_checkpoint(tmp_path)
    assert loaded.file == older
    assert loaded.skipped == [(tmp_path / "ckpt-000000200.h5", "not a regular file")]
