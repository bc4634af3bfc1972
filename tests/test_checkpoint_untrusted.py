"""Checkpoints are untrusted input: a file rewritten with a recomputed checksum must be refused
with a CheckpointError (never a crash, a traceback or unbounded memory), and a refused newest
checkpoint falls back to the previous good one."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtrain import CheckpointError, TrainConfig, Trainer
from streamtrain.io.checkpoint import load_checkpoint, save_checkpoint
from streamtrain.io.resolve import list_checkpoints
from streamtrain.nn import minibatch
from streamtrain.train.schema import TRAINER

BIN = Path(sys.executable).with_name("streamtrain")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small valid run's checkpoint: Adam state, best parameters, scaler, sampler mid-run."""
    d = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    data = (X, (X[:, 0] > 0).astype(int))
    Trainer(TrainConfig(hidden=6, epochs=2, batch_size=16, optimizer="adam", lr=0.01, val_fraction=0.2,
                        early_stopping=3, keep=5)).fit(data, checkpoint_dir=d, log=None)
    path = list_checkpoints(d)[0]
    arrays, meta = load_checkpoint(path, TRAINER)
    assert {"optim.t", "best.W1", "scaler.mean"} <= set(arrays)
    return path, arrays, meta


def _rewrite(path, arrays, meta):
    """Save with a recomputed checksum, as someone who can write the file would."""
    meta = {k: v for k, v in meta.items() if k != "format_version"} if isinstance(meta, dict) else meta
    save_checkpoint(path, arrays, meta) if isinstance(meta, dict) else _save_raw(path, arrays, meta)
    return path


def _save_raw(path, arrays, meta):
    """A checkpoint whose metadata is any JSON value (save_checkpoint insists on a mapping)."""
    from streamtrain.io.digest import _digest

    meta_bytes = json.dumps(meta).encode()
    payload = dict(arrays, __meta__=np.frombuffer(meta_bytes, np.uint8),
                   __sha256__=np.frombuffer(_digest(meta_bytes, arrays).encode(), np.uint8))
    np.savez(path, **payload)


def _step_runs(t: Trainer) -> None:
    """What an accepted checkpoint must survive: the compiled step and prediction on its model."""
    X = np.random.default_rng(1).standard_normal((9, t.net.n_in)).astype(t.net.dtype)
    T = np.zeros(9, np.int64) if t.task != "regression" else np.zeros((9, t.net.n_out), t.net.dtype)
    minibatch.sgd_step(t.net.params, X, T, 0.01, 0.0, 0.0, t.net.activation, t.task)
    t.predict(X)


@pytest.mark.parametrize("tamper,message", [
    (lambda a, m: a.update({"param.b1": a["param.b1"][:-2]}), "param.b1"),
    (lambda a, m: a.update({"param.W2": a["param.W2"].T.copy()}), "param.W2"),
    (lambda a, m: a.update({"param.W1": a["param.W1"].astype(np.float64)}), "param.W1"),
    (lambda a, m: a.update({"best.W1": a["best.W1"][:, :3]}), "best.W1"),
    (lambda a, m: a.update({"scaler.mean": a["scaler.mean"][:2]}), "scaler.mean"),
    (lambda a, m: a.update({"optim.m.W1": a["optim.m.W1"][:1]}), "optim.m.W1"),
    (lambda a, m: a.pop("optim.v.b2"), "optim.v.b2"),
    (lambda a, m: a.pop("param.W2"), "param.W2"),
    (lambda a, m: a.update({"extra": np.zeros(3)}), "unexpected array extra"),
    (lambda a, m: a["param.W1"].__setitem__((0, 0), np.nan), "NaN"),
    (lambda a, m: a["scaler.scale"].__setitem__(0, -1.0), "scaler.scale"),
    (lambda a, m: m["model"].update(hidden=10**9), "model.hidden"),
    (lambda a, m: m["model"].update(hidden=5), "disagree"),
    (lambda a, m: m["model"].update(n_in="5"), "model.n_in"),
    (lambda a, m: m["model"].update(activation="gelu"), "model.activation"),
    (lambda a, m: m["model"].update(task="ranking"), "model.task"),
    (lambda a, m: m["model"].update(classes=[0, 1, 2]), "classes"),
    (lambda a, m: m["state"].update(global_step=-1), "state.global_step"),
    (lambda a, m: m["state"].update(global_step=True), "state.global_step"),
    (lambda a, m: m["state"]["sampler"].update(position=1.5), "sampler.position"),
    (lambda a, m: m["state"]["sampler"].update(epoch="1"), "sampler.epoch"),
    (lambda a, m: m["config"].update(lr=-1), "config: lr"),
    (lambda a, m: m["config"].update(batch_size=0), "config: batch_size"),
    (lambda a, m: m["config"].update(optimizer="sgd"), "unexpected array optim"),
    (lambda a, m: m["model"].update(feature_names=[1, 2, 3, 4, 5]), "model.feature_names"),
    (lambda a, m: m["state"].update(epoch_acc=[]), "state.epoch_acc"),
    (lambda a, m: m["state"].update(record=[1]), "state.record"),
    (lambda a, m: m["state"].update(restored_best=0), "state.restored_best"),
    (lambda a, m: m["model"].update(source_format=3), "model.source_format"),
    (lambda a, m: m.update(fingerprint=None), "fingerprint"),
    (lambda a, m: m.pop("model"), "model is missing"),
    (lambda a, m: m.update(surprise=1), "unexpected metadata field"),
])
def test_tampered_checkpoint_with_a_recomputed_checksum_is_refused(tmp_path, good, tamper, message):
    _, arrays, meta = good
    arrays, meta = {k: v.copy() for k, v in arrays.items()}, copy.deepcopy(meta)
    tamper(arrays, meta)
    path = _rewrite(tmp_path / "ckpt-000000000001.npz", arrays, meta)
    with pytest.raises(CheckpointError, match="not a valid streamtrain checkpoint") as e:
        Trainer.load(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_metadata_that_is_not_a_mapping_or_nested_too_deep_is_refused(tmp_path, good):
    _, arrays, _ = good
    for meta, message in (([1, 2], "not a mapping"), ("text", "not a mapping"),
                          (json.loads("[" * 200 + "]" * 200), "nested")):
        path = tmp_path / "c.npz"
        _save_raw(path, arrays, meta)
        with pytest.raises(CheckpointError, match=message):
            Trainer.load(path)
    # 200,000 deep: refused before json.loads would recurse
    path = tmp_path / "deep.npz"
    deep = b"[" * 200_000 + b"]" * 200_000
    np.savez(path, __meta__=np.frombuffer(deep, np.uint8), __sha256__=np.frombuffer(b"0" * 64, np.uint8))
    with pytest.raises(CheckpointError, match="nested more than"):
        load_checkpoint(path)


def _npy_header(shape, dtype="<f4") -> bytes:
    import io

    from numpy.lib import format as npf

    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _crafted_npz(path, good, extra_name, extra_shape, extra_bytes):
    """A valid checkpoint plus one member whose header declares ``extra_shape``, holding
    ``extra_bytes`` zero bytes, streamed (never in memory) and checksummed like the rest."""
    _, arrays, meta = good
    meta = {**meta}
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    h = hashlib.sha256(meta_bytes)
    names = sorted([*arrays, extra_name])
    for name in names:
        if name == extra_name:
            h.update(f"{name}|<f4|{extra_shape}".encode())
            for _ in range(extra_bytes >> 20):
                h.update(bytes(1 << 20))
        else:
            a = np.ascontiguousarray(arrays[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
            h.update(a.tobytes())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrays.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(a))
        with zf.open(f"{extra_name}.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header(extra_shape))
            for _ in range(extra_bytes >> 20):
                fh.write(bytes(1 << 20))
        for name, data in (("__meta__", meta_bytes), ("__sha256__", h.hexdigest().encode())):
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, np.frombuffer(data, np.uint8))
    return path


def _peak_rss_loading(path) -> tuple[int, str, int]:
    code = textwrap.dedent(f"""
        import re, sys
        from streamtrain import Trainer, CheckpointError
        try:
            Trainer.load({str(path)!r})
            print("accepted")
        except CheckpointError as e:
            print(e)
        # VmHWM, not ru_maxrss: the latter starts at the forking parent's peak
        print(int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = res.stdout.strip().splitlines()
    return res.returncode, lines[0] if lines else res.stderr, int(lines[-1]) if len(lines) > 1 else -1


@pytest.mark.slow
def test_a_huge_extra_array_is_refused_before_it_is_read(tmp_path, good):
    # 1 GB of zeros compresses to 1 MB: refused from its header, in bounded memory.
    path = _crafted_npz(tmp_path / "big.npz", good, "param.zz", (1 << 28,), 1 << 30)
    assert path.stat().st_size < 8 << 20
    rc, message, peak_mb = _peak_rss_loading(path)
    assert rc == 0 and "unexpected array param.zz" in message, message
    assert peak_mb < 400, peak_mb


def test_a_header_declaring_ten_billion_elements_is_refused(tmp_path, good):
    path = tmp_path / "lie.npz"
    _, arrays, meta = good
    save_checkpoint(path, arrays, {k: v for k, v in meta.items() if k != "format_version"})
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    body = members["param.W1.npy"]
    members["param.W1.npy"] = _npy_header((10**10,)) + body[len(_npy_header((5, 6))):]
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    rc, message, peak_mb = _peak_rss_loading(path)
    assert rc == 0 and "param.W1" in message and "declares" in message, message
    assert peak_mb < 400


# -- property: whatever is mutated, the loader answers CheckpointError or a model that works --------
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def _paths(meta, prefix=()):
    for k, v in meta.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


def _array_mutations(a: np.ndarray):
    shape = a.shape
    return st.sampled_from([
        a[:-1] if a.ndim and len(a) else a[None], np.concatenate([a, a[:1]]) if a.ndim else a[None],
        a.reshape(-1), a.astype(np.float64 if a.dtype == np.float32 else np.float32), a[None],
        np.full(shape, np.nan, a.dtype) if a.dtype.kind == "f" else a + 10**12, np.zeros(0, a.dtype),
        np.full(shape, 1e30, np.float64).astype(a.dtype) if a.dtype.kind == "f" else -a,
    ])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_mutated_checkpoints_are_refused_or_safe(tmp_path, good, data):
    _, arrays, meta = good
    arrays, meta = {k: v.copy() for k, v in arrays.items()}, copy.deepcopy(meta)
    meta.pop("format_version")
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.booleans()):
            path = data.draw(st.sampled_from(list(_paths(meta))))
            node = meta
            for k in path[:-1]:
                node = node[k]
            if data.draw(st.integers(0, 4)) == 0:
                node.pop(path[-1], None)
            else:
                node[path[-1]] = data.draw(_JSON)
        else:
            name = data.draw(st.sampled_from(sorted(arrays)))
            choice = data.draw(st.integers(0, 5))
            if choice == 0:
                arrays.pop(name)
            elif choice == 1:
                arrays[data.draw(st.sampled_from(["param.X", "best.W1x", "optim.q"]))] = arrays[name]
            else:
                arrays[name] = data.draw(_array_mutations(arrays[name]))
    target = tmp_path / "m.npz"
    try:
        save_checkpoint(target, arrays, meta)
    except (TypeError, ValueError):
        return  # not even writable as a checkpoint (e.g. non-string keys)
    try:
        t = Trainer.load(target)
    except CheckpointError:
        return
    _step_runs(t)


# -- every consumer treats an invalid checkpoint as a corrupt one ---------------------------------
@pytest.fixture()
def run_dir(tmp_path):
    """A run directory of two good checkpoints, the newer then tampered with (checksum recomputed)."""
    from streamtrain import make_data

    make_data(tmp_path / "d.h5", rows=400, features=4, seed=3)
    d = tmp_path / "run"
    res = subprocess.run([str(BIN), "train", tmp_path / "d.h5", "--hidden", "5", "--epochs", "2", "--keep", "5",
                          "--checkpoint-dir", d, "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    newest = list_checkpoints(d)[0]
    arrays, meta = load_checkpoint(newest, TRAINER)
    arrays["param.b1"] = arrays["param.b1"][:2]
    _rewrite(newest, arrays, meta)
    return tmp_path / "d.h5", d, newest


@pytest.mark.parametrize("command", ["resume", "inspect", "evaluate", "predict", "plot"])
def test_every_command_warns_and_uses_the_previous_good_checkpoint(run_dir, command, tmp_path):
    data, d, newest = run_dir
    args = {"resume": ["train", data, "--hidden", "5", "--epochs", "3", "--checkpoint-dir", d, "--resume"],
            "inspect": ["inspect", d], "evaluate": ["evaluate", d, data],
            "predict": ["predict", d, data, "--out", tmp_path / "p.csv"],
            "plot": ["plot", d, "--out", tmp_path / "p.png"]}[command]
    res = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    warning = [line for line in res.stderr.splitlines() if "warning" in line]
    assert warning and newest.name in warning[0] and "param.b1" in warning[0]


@pytest.mark.parametrize("command", ["resume", "inspect", "evaluate", "predict"])
def test_exit_2_when_no_valid_checkpoint_is_left(run_dir, command, tmp_path):
    data, d, newest = run_dir
    for p in list_checkpoints(d):
        if p != newest:
            p.unlink()
    args = {"resume": ["train", data, "--hidden", "5", "--epochs", "3", "--checkpoint-dir", d, "--resume"],
            "inspect": ["inspect", d], "evaluate": ["evaluate", d, data],
            "predict": ["predict", d, data, "--out", tmp_path / "p.csv"]}[command]
    res = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "param.b1" in lines[0] and "no valid checkpoint left" in lines[0], lines
    assert not (tmp_path / "p.csv").exists()


def test_a_format_1_checkpoint_is_upgraded_and_resumes(tmp_path, good):
    """Checkpoints written before the history moved to metrics.jsonl (format 1) still load."""
    _, arrays, meta = good
    m = copy.deepcopy(meta)
    v1 = {"streamtrain_version": "0.1.0", "config": {**m["config"], "momentum": 0.9}, "task": m["model"]["task"],
          "model": {k: m["model"][k] for k in ("n_in", "hidden", "n_out", "activation", "task", "init", "dtype")},
          **{k: m["model"][k] for k in ("classes", "feature_names", "selection", "scale")},
          "label": m["model"]["label"], **{k: m["state"][k] for k in ("global_step", "sampler", "epoch_acc",
                                                                           "early_stopping")},
          "history": [m["state"]["record"]], "fingerprint": m["fingerprint"]}
    del v1["config"]["optimizer_params"]
    path = tmp_path / "old.npz"
    from streamtrain.io.digest import _digest

    meta_bytes = json.dumps({"format_version": 1, **v1}).encode()
    np.savez(path, **arrays, __meta__=np.frombuffer(meta_bytes, np.uint8),
             __sha256__=np.frombuffer(_digest(meta_bytes, arrays).encode(), np.uint8))
    old, new = Trainer.load(path), Trainer.load(good[0])
    for k in new.net.params:
        np.testing.assert_array_equal(old.net.params[k], new.net.params[k])
    assert old.state.record == new.state.record and old.config == new.config
