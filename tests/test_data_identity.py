"""Data-set identity: the content_hash attribute and dataset_fingerprint()."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcsgd.data import dataset_fingerprint, open_dataset, prepare
from hpcsgd.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"


def _reference_hash(path: Path, task: str, n_classes: int) -> str:
    """The canonical form as documented in hpcsgd.data.dataset, from whole arrays."""
    sha = hashlib.sha256(b"hpcsgd-dataset-content/1\n")
    sha.update(f"task={task}\nn_classes={n_classes}\n".encode())
    with h5py.File(path, "r") as f:
        for key in ("train/X", "train/y", "test/X", "test/y"):
            a = f[key][...]
            little = a.astype(a.dtype.newbyteorder("<"))
            sha.update(f"{key} {little.dtype.str} {','.join(map(str, a.shape))}\n".encode())
            sha.update(little.tobytes(order="C"))
    return sha.hexdigest()


def _svm(tmp_path: Path, n: int = 60) -> Path:
    lines = [f"{i % 3} 1:{i + 1} {2 + i % 4}:{(i * 7) % 5 - 2}" for i in range(n)]
    path = tmp_path / "ident.svm"
    path.write_text("\n".join(lines) + "\n")
    return path


def _hand_made(path: Path, X, y, Xt, yt, task="multiclass", n_classes=3) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "hpcsgd-dataset"
        f.attrs["format_version"] = 1
        f.attrs["task"] = task
        f.attrs["n_classes"] = n_classes
        f["train/X"], f["train/y"], f["test/X"], f["test/y"] = X, y, Xt, yt
    return path


def test_prepared_file_stores_the_canonical_content_hash(tmp_path):
    for name, kwargs in (("digits", {}), ("synth_lsq", dict(n=300, d=4)), (f"libsvm:{_svm(tmp_path)}", {}),
                         ("breast_cancer", dict(test_fraction=0))):
        out = prepare(name, tmp_path / "p.h5", **kwargs)
        info = open_dataset(str(out))
        with h5py.File(out) as f:
            stored = f.attrs["content_hash"]
        assert isinstance(stored, str) and len(stored) == 64 and int(stored, 16) >= 0
        assert stored == _reference_hash(out, info.task, info.n_classes)
        assert dataset_fingerprint(info) == stored


def test_fingerprint_without_the_attribute_is_computed_slab_by_slab(tmp_path, monkeypatch):
    import tracemalloc

    import hpcsgd.data.dataset as ds

    out = prepare("synth_lsq", tmp_path / "a.h5", n=4000, d=200)  # 6.4 MB of features
    info = open_dataset(str(out))
    stored = dataset_fingerprint(info)
    with h5py.File(out, "a") as f:
        del f.attrs["content_hash"]
    monkeypatch.setattr(ds, "_BLOCK_ELEMS", 1 << 12)  # 20 rows per slab
    tracemalloc.start()
    try:
        computed = dataset_fingerprint(info)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert computed == stored
    assert peak < 2**20


def test_hand_made_files_get_a_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3)).astype(np.float32)
    y = (np.arange(12) % 3).astype(np.int64)
    a = _hand_made(tmp_path / "a.h5", X, y, X[:2], y[:2])
    fa = dataset_fingerprint(open_dataset(str(a)))
    assert fa == _reference_hash(a, "multiclass", 3)
    # big-endian storage of the same values is the same content
    b = _hand_made(tmp_path / "b.h5", X.astype(">f4"), y.astype(">i8"), X[:2].astype(">f4"), y[:2].astype(">i8"))
    with h5py.File(b) as f:
        assert f["train/X"].dtype == np.dtype(">f4")
    assert dataset_fingerprint(open_dataset(str(b))) == fa
    # any change to values, dtype, split, task or n_classes is another data set
    X2 = X.copy()
    X2[5, 1] = np.nextafter(X2[5, 1], np.float32(np.inf))
    variants = [
        _hand_made(tmp_path / "c.h5", X2, y, X[:2], y[:2]),
        _hand_made(tmp_path / "d.h5", X.astype(np.float64), y, X[:2].astype(np.float64), y[:2]),
        _hand_made(tmp_path / "e.h5", X[:11], y[:11], X[11:], y[11:]),
        _hand_made(tmp_path / "f.h5", X, y, X[:2], y[:2], n_classes=4),
        _hand_made(tmp_path / "g.h5", X, y.astype(np.float64), X[:2], y[:2].astype(np.float64),
                   task="regression", n_classes=0),
    ]
    prints = {dataset_fingerprint(open_dataset(str(p))) for p in variants}
    assert len(prints) == len(variants) and fa not in prints


def test_same_command_same_fingerprint_other_seed_other_one(tmp_path):
    src = _svm(tmp_path)
    out = tmp_path / "set.h5"

    def made(**kwargs) -> str:
        return dataset_fingerprint(open_dataset(str(prepare(f"libsvm:{src}", out, **kwargs))))

    first = made()
    assert made() == first
    other_seed = made(seed=1)
    other_fraction = made(test_fraction=0.3)
    assert len({first, other_seed, other_fraction}) == 3
    assert made() == first
    digits = [dataset_fingerprint(open_dataset(str(prepare("digits", tmp_path / "d.h5", seed=s))))
              for s in (0, 0, 1)]
    assert digits[0] == digits[1] != digits[2]


def test_cli_prepare_twice_gives_the_same_content_hash(tmp_path, capsys):
    from hpcsgd.cli import main

    hashes = []
    for out in (tmp_path / "a.h5", tmp_path / "b.h5"):
        assert main(["prepare", f"libsvm:{FIXTURES / 'tiny.libsvm'}", "--out", str(out)]) == 0
        with h5py.File(out) as f:
            hashes.append(f.attrs["content_hash"])
    assert hashes[0] == hashes[1]


def test_a_bad_content_hash_attribute_is_refused(tmp_path):
    out = prepare("synth_lsq", tmp_path / "a.h5", n=50, d=2)
    bad = tmp_path / "bad.h5"
    shutil.copy(out, bad)
    with h5py.File(bad, "a") as f:
        f.attrs["content_hash"] = "not-a-hash"
    with pytest.raises(UserError, match=r"bad\.h5 has content_hash 'not-a-hash'; it must be 64") as exc:
        dataset_fingerprint(open_dataset(str(bad)))
    assert "\n" not in str(exc.value)
