"""Checkpoint files: round trip, no pickle, checksum, fallback to an older good one, rotation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamtrain import CheckpointError, TrainConfig, Trainer
from streamtrain.io.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from streamtrain.io.digest import params_digest
from streamtrain.io.resolve import latest_checkpoint, list_checkpoints
from streamtrain.train.schema import TRAINER


def test_round_trip(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "t": np.array(7)}
    save_checkpoint(tmp_path / "c.npz", arrays, {"x": [1, "two"]})
    got, meta = load_checkpoint(tmp_path / "c.npz")
    assert meta["x"] == [1, "two"] and meta["format_version"] == FORMAT_VERSION
    np.testing.assert_array_equal(got["a"], arrays["a"])
    assert got["t"].shape == () and int(got["t"]) == 7
    assert params_digest(got) == params_digest(arrays)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign", "pickle"])
def test_damaged_files_are_refused(tmp_path, damage):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.ones((50, 50))}, {"k": 1})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        i = data.find(b"\x00\x00\xf0\x3f")  # inside the float64 ones
        data[i + 3] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        np.savez(path, w=np.ones(3))
    else:  # an object array would need pickle to load: it must not be loaded
        np.savez(path, w=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_newest_corrupt_checkpoint_falls_back_to_the_previous(tmp_path):
    save_checkpoint(tmp_path / "ckpt-000000000010.npz", {"w": np.zeros(3)}, {"step": 10})
    save_checkpoint(tmp_path / "ckpt-000000000020.npz", {"w": np.ones(3)}, {"step": 20})
    (tmp_path / "ckpt-000000000020.npz").write_bytes(b"junk")
    warnings = []
    path, _, meta = latest_checkpoint(tmp_path, warn=warnings.append)
    assert meta["step"] == 10 and path.name == "ckpt-000000000010.npz"
    assert "ckpt-000000000020.npz" in warnings[0]


def test_rotation_keeps_the_newest(tmp_path):
    data = (np.random.default_rng(0).standard_normal((100, 3)), np.arange(100) % 2)
    Trainer(TrainConfig(hidden=3, epochs=5, batch_size=10, keep=2)).fit(data, checkpoint_dir=tmp_path, log=None)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000000000050.npz", "ckpt-000000000040.npz"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_checkpoint_is_all_prediction_needs(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 4)) * 100 + 50
    t = Trainer(TrainConfig(hidden=5, epochs=3))
    t.fit((X, (X[:, 0] > 50).astype(int)), log=None)
    t.save(tmp_path / "model.npz")
    loaded = Trainer.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(loaded.scaler.mean, t.scaler.mean)
    np.testing.assert_array_equal(loaded.predict_proba(X), t.predict_proba(X))


def test_time_interval_and_best_checkpoint(tmp_path, monkeypatch):
    import time

    clock = iter(range(0, 10**6, 7))  # each look at the clock: 7 "seconds" later
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    X = np.random.default_rng(0).standard_normal((300, 3))
    y = (X[:, 0] > 0).astype(int)
    t = Trainer(TrainConfig(hidden=3, epochs=3, batch_size=50, checkpoint_seconds=10, keep=100, keep_best=True,
                            val_fraction=0.2))
    t.fit((X, y), checkpoint_dir=tmp_path, log=None)
    steps = sorted(int(p.name[5:17]) for p in list_checkpoints(tmp_path))
    assert len(steps) > 3  # more than the three epoch ends: the clock triggered saves mid-epoch
    best = load_checkpoint(tmp_path / "best.npz")[1]
    best_epoch = min(t.history, key=lambda h: h["val_loss"])["epoch"]
    assert best["state"]["record"]["epoch"] == best_epoch


def _untimed(meta):
    """Checkpoint metadata without its wall-clock figures."""
    if isinstance(meta, dict):
        return {k: _untimed(v) for k, v in meta.items() if "second" not in k and "per_s" not in k}
    return [_untimed(v) for v in meta] if isinstance(meta, list) else meta


def test_checkpoints_written_in_the_background_hold_the_state_of_their_step(tmp_path, monkeypatch):
    # A slow disk: each write sleeps while training goes on and changes the parameters in place.
    # Every checkpoint must still hold exactly what a synchronous save at its step holds.
    import time as _time

    from streamtrain.io import rundir as state_module
    from streamtrain.io.background import BackgroundWriter
    from streamtrain.io.checkpoint import load_checkpoint

    data = (np.random.default_rng(0).standard_normal((3000, 5)).astype(np.float32), np.arange(3000) % 2)
    cfg = TrainConfig(hidden=6, epochs=2, batch_size=10, checkpoint_every=50, keep=1000)
    real_save = state_module.save_checkpoint
    steps_seen = []

    def slow_save(path, arrays, meta, **kw):
        _time.sleep(0.05)
        steps_seen.append((int(Path(path).name[5:17]), trainer.global_step))  # where training is meanwhile
        real_save(path, arrays, meta, **kw)

    monkeypatch.setattr(state_module, "save_checkpoint", slow_save)
    trainer = Trainer(cfg)
    trainer.fit(data, checkpoint_dir=tmp_path / "bg", log=None)
    monkeypatch.setattr(state_module, "save_checkpoint", real_save)
    monkeypatch.setattr(BackgroundWriter, "submit", lambda self, write, **kw: write())  # synchronous saves
    Trainer(cfg).fit(data, checkpoint_dir=tmp_path / "sync", log=None)
    bg, sync = sorted((tmp_path / "bg").glob("ckpt-*.npz")), sorted((tmp_path / "sync").glob("ckpt-*.npz"))
    assert [p.name for p in bg] == [p.name for p in sync] and len(bg) == 3000 // 10 * 2 // 50
    for a, b in zip(bg, sync):
        (arrays_a, meta_a), (arrays_b, meta_b) = load_checkpoint(a), load_checkpoint(b)
        assert _untimed(meta_a) == _untimed(meta_b)
        for k in arrays_b:
            np.testing.assert_array_equal(arrays_a[k], arrays_b[k])
    # the writes really overlapped training: it had moved on by the time most of them ran
    assert sum(now > step for step, now in steps_seen) >= len(steps_seen) // 2


def test_an_optimiser_added_to_its_table_alone_is_checkpointed_and_resumed(tmp_path, monkeypatch):
    """Its spec declares its state arrays; the checkpoint schema takes them without being edited,
    and a run with it resumes bitwise."""
    from streamtrain.nn import optim

    class Toy(optim.SGD):
        """SGD with a running count of steps and a running mean of each gradient."""

        def __init__(self, lr=0.1):
            super().__init__(lr)
            self.n, self.mean = 0, {}

        def step(self, params, grads):
            self.n += 1
            for k, g in grads.items():
                m = self.mean.setdefault(k, np.zeros_like(g))
                m += (g - m) / self.n
                params[k] -= self.lr * (0.5 * g + 0.5 * m)

        def state_dict(self):
            return {} if not self.n else {"n": np.array(self.n, np.int64), **{f"mean.{k}": m for k, m in
                                                                              self.mean.items()}}

        def load_state_dict(self, state):
            self.n = int(state.get("n", 0))
            self.mean = {k[5:]: np.array(a) for k, a in state.items() if k.startswith("mean.")}

    spec = optim.OptimizerSpec(Toy, 0.1, state=lambda shapes, dt: {
        "n": (np.dtype(np.int64), ()), **{f"mean.{k}": (np.dtype(dt), s) for k, s in shapes.items()}},
        check=lambda state: "array n is negative" if int(state.get("n", 0)) < 0 else None)
    monkeypatch.setitem(optim.OPTIMIZERS, "toy", spec)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    whole = Trainer(hidden=4, epochs=4, batch_size=50, optimizer="toy", lr_schedule="constant")
    whole.fit((X, y), checkpoint_dir=tmp_path / "whole", log=None)
    Trainer(hidden=4, epochs=2, batch_size=50, optimizer="toy", lr_schedule="constant").fit((X, y), checkpoint_dir=tmp_path / "half", log=None)
    resumed = Trainer(epochs=4)
    resumed.fit((X, y), checkpoint_dir=tmp_path / "half", resume=True, log=None)
    for k, v in whole.net.params.items():
        np.testing.assert_array_equal(resumed.net.params[k], v)
    path = list_checkpoints(tmp_path / "half")[0]  # the newest
    arrays, meta = load_checkpoint(path)
    assert int(arrays["optim.n"]) == 40 and arrays["optim.mean.W1"].shape == (4, 4)
    # what the spec declares is checked: a tampered count is refused like any other array
    arrays["optim.n"] = np.array(-3, np.int64)
    save_checkpoint(path, arrays, meta)
    with pytest.raises(CheckpointError, match="array optim.n is negative"):
        load_checkpoint(path, TRAINER)
