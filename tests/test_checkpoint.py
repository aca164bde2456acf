"""Atomic HDF5 checkpoint I/O: round trip, retention, corruption fallback, crash safety."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcsgd import checkpoint as ck
from hpcsgd.errors import UserError

N_TRACE = 50
N_EVAL = 5


def make_tree(update: int = 100, seed: int = 0, d: int = 37, workers: int = 4) -> dict:
    """A realistic checkpoint tree as the engine would build it."""
    rng = np.random.default_rng(seed)
    n_local = 23
    perm = np.full((workers, n_local), -1, dtype=np.int64)
    for w in range(workers):
        n = n_local - (w % 2)  # ragged: padded with -1
        perm[w, :n] = rng.permutation(n)
    config = {
        "run": {"out": "runs/x", "seed": seed, "clock": "simulated", "epochs": 3},
        "data": {"source": "digits", "partition": "iid"},
        "model": {"kind": "softmax"},
        "method": {"kind": "async", "lr": 0.05, "assign": "shuffle"},
        "order": {"kind": "grab", "batch": 4, "record_history": True},
        "stragglers": {"model": "exp"},
    }
    rng_states = {
        f"rank{r}": json.dumps(
            {"bit_generator": "PCG64", "state": {"state": int(rng.integers(2**62)) * 7 ** 20, "inc": 3}}
        )
        for r in range(workers + 1)
    }
    upd0 = update - N_TRACE
    return {
        "update": update,
        "epoch": update / 40.0,
        "method": "async",
        "world_size": workers + 1,
        "config": json.dumps(config),
        "clock": "simulated",
        "model": {"params": rng.standard_normal(d)},
        "state": {
            "optimizer": {"velocity": rng.standard_normal(d), "momentum": 0.9},
            "pending": {"version": rng.integers(0, update, size=workers).astype(np.int64), "active": True},
        },
        "rng": rng_states,
        "order": {"perm": perm, "history": np.stack([perm, perm[:, ::-1]])},
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
    }


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
    assert loaded["state"]["pending"]["active"] is True
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
