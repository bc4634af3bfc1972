"""The service's training core: batches depend only on the stream, and a checkpoint taken between
any two pieces of it continues bitwise as if nothing had stopped (shuffle buffer included)."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrain import DataError, TrainConfig
from streamtrain.io.checkpoint import load_checkpoint, save_checkpoint
from streamtrain.serve.learner import StreamLearner
from streamtrain.train.schema import TRAINER

NAMES = [f"f{j}" for j in range(5)]


def _stream(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(3.0, 2.0, (n, 5)).astype(np.float32)
    y = np.where(X[:, 0] + X[:, 1] > 6, "yes", "no")
    return X, y


def _pieces(n, seed):
    """The stream cut at random places: how rows arrive does not matter."""
    rng = np.random.default_rng(seed)
    cuts = np.unique(rng.integers(1, n, size=n // 40))
    return list(zip(np.r_[0, cuts], np.r_[cuts, n]))


def _learner(**kw):
    cfg = TrainConfig(hidden=6, batch_size=kw.pop("batch_size", 32), optimizer=kw.pop("optimizer", "adam"), seed=3,
                      lr=0.02)
    return StreamLearner(cfg, NAMES, "y", classes=["no", "yes"], scale_rows=kw.pop("scale_rows", 200), **kw)


def _feed(learner, X, y, pieces):
    for a, b in pieces:
        learner.feed(X[a:b], learner.targets(y[a:b], "test"), {"row": int(b)})


@pytest.mark.parametrize("shuffle_rows", [0, 100])
@pytest.mark.parametrize("optimizer,batch_size", [("adam", 32), ("sgd", 1), ("momentum", 7)])
def test_how_rows_arrive_and_checkpoints_change_nothing(tmp_path, shuffle_rows, optimizer, batch_size):
    if batch_size < 32 and shuffle_rows:
        shuffle_rows = 50
    X, y = _stream()
    whole = _learner(shuffle_rows=shuffle_rows, optimizer=optimizer, batch_size=batch_size)
    _feed(whole, X, y, [(0, len(X))])
    pieces = _pieces(len(X), 1)
    learner = _learner(shuffle_rows=shuffle_rows, optimizer=optimizer, batch_size=batch_size)
    for i, (a, b) in enumerate(pieces):
        _feed(learner, X, y, [(a, b)])
        if i % 9 == 4:  # stop here and start again from the checkpoint
            path = save_checkpoint(tmp_path / f"c{i}.npz", *learner.checkpoint_contents())
            learner = _learner(shuffle_rows=shuffle_rows, optimizer=optimizer, batch_size=batch_size)
            learner.restore(*load_checkpoint(path, TRAINER))
            assert learner.position == {"row": int(b)}
    assert learner.state.global_step == whole.state.global_step == (len(X) - shuffle_rows) // batch_size
    for k, v in whole.model.net.params.items():
        np.testing.assert_array_equal(learner.model.net.params[k], v, err_msg=k)
    np.testing.assert_array_equal(learner.pending_X, whole.pending_X)
    # The parameters are bitwise equal; the prequential loss is a float sum whose association
    # follows the pieces (at batch size 1, one partial sum per compiled call): equal to 1e-12.
    a, b = learner.prequential(), whole.prequential()
    assert a.keys() == b.keys() and a == pytest.approx(b, rel=1e-12, abs=0)
    assert whole.prequential()["accuracy"] > 0.8


def test_the_first_rows_set_the_scaler_and_wait_for_it():
    X, y = _stream()
    learner = _learner(scale_rows=500)
    _feed(learner, X, y, [(0, 499)])
    assert learner.state.global_step == 0 and learner.model.scaler.kind == "none"
    _feed(learner, X, y, [(499, 520)])
    np.testing.assert_allclose(learner.model.scaler.mean, X[:500].mean(0), rtol=1e-5)
    assert learner.state.global_step == 520 // 32


def test_predictions_come_from_a_published_copy():
    X, y = _stream()
    learner = _learner()
    _feed(learner, X, y, [(0, 1000)])
    first = learner.publish()
    before = first.predict(X[:50])[1].copy()
    _feed(learner, X, y, [(1000, 3000)])
    np.testing.assert_array_equal(first.predict(X[:50])[1], before)  # untouched by training
    second = learner.publish()
    assert second.version == learner.state.global_step > first.version
    labels, proba = second.predict(X[:50])
    assert set(labels) <= {"no", "yes"} and proba.shape == (50, 2)


def test_an_adopted_model_gets_a_new_version_that_a_restart_keeps(tmp_path):
    import copy

    X, y = _stream()
    learner = _learner()
    _feed(learner, X, y, [(0, 1000)])
    trained = learner.publish().version
    learner.adopt(copy.deepcopy(learner.model), learner.optimizer)  # /reload, with the same weights even
    assert learner.publish().version == trained + 1
    path = save_checkpoint(tmp_path / "c.npz", *learner.checkpoint_contents())
    again = _learner()
    again.restore(*load_checkpoint(path, TRAINER))
    assert again.publish().version == trained + 1
    _feed(again, X, y, [(1000, 1100)])
    assert again.publish().version == again.state.global_step + 1


def test_labels_the_model_cannot_take_are_refused_naming_where():
    learner = _learner()
    with pytest.raises(DataError, match="request 7: label value 'maybe'"):
        learner.targets(np.array(["yes", "maybe"]), "request 7")
    with pytest.raises(DataError, match="needs its classes"):
        StreamLearner(TrainConfig(), NAMES, "y")


def test_a_checkpoint_s_stream_section_is_checked_as_strictly_as_its_other_parts(tmp_path):
    # The service declares its section to the trainer's schema (serve/section.py); a malformed
    # one, or a section nobody declared, is refused when the checkpoint is read.
    import re

    from streamtrain import CheckpointError

    X, y = _stream(300)
    learner = _learner(batch_size=8, shuffle_rows=10, scale_rows=20)
    _feed(learner, X, y, [(0, 45)])
    arrays, meta = learner.checkpoint_contents({"files": 2})
    assert len(arrays["stream.pending_t"]) and len(arrays["stream.buffer_t"]) == 10
    got_arrays, got = load_checkpoint(save_checkpoint(tmp_path / "good.npz", arrays, meta), TRAINER)
    assert got["stream"] == meta["stream"] and sorted(got_arrays) == sorted(arrays)
    wrong_t = {**arrays, "stream.pending_t": np.full_like(arrays["stream.pending_t"], 2)}
    cases = [
        (meta | {"stream": [1]}, arrays, "metadata field stream must be a mapping"),
        (meta | {"stream": meta["stream"] | {"extra": 1}}, arrays, "unexpected metadata field stream.'extra'"),
        (meta | {"stream": meta["stream"] | {"pending_rows": 1 << 40}}, arrays,
         "stream.pending_rows must be an integer"),
        (meta | {"stream": meta["stream"] | {"buffer_rows": 11}}, arrays, "stream.buffer_rows exceeds"),
        (meta | {"stream": meta["stream"] | {"rng": {"bit_generator": "MT19937"}}}, arrays, "PCG64"),
        (meta | {"elsewhere": {}}, arrays, "unexpected metadata field 'elsewhere'"),
        (meta, wrong_t, "array stream.pending_t holds class indices out of range"),
    ]
    for i, (bad_meta, bad_arrays, why) in enumerate(cases):
        path = save_checkpoint(tmp_path / f"bad{i}.npz", bad_arrays, bad_meta)  # no schema: written as given
        with pytest.raises(CheckpointError, match=re.escape(why)):
            load_checkpoint(path, TRAINER)
        with pytest.raises(CheckpointError, match="its loader would refuse it"):  # nor written with it
            save_checkpoint(tmp_path / f"refused{i}.npz", bad_arrays, bad_meta, TRAINER)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "momentum"])
def test_a_batch_that_diverges_in_a_block_is_named_and_the_ones_before_it_count(optimizer):
    # The rows waiting are trained in one call; one batch of them diverging stops it there.
    from streamtrain.errors import TrainingError

    X, y = _stream(1000)
    X[200 + 3 * 32 + 5] = np.inf  # in the fourth batch after the 200 rows that set the scaler
    learner = _learner(optimizer=optimizer)
    learner.feed(X[:200], learner.targets(y[:200], "test"), {"row": 200})
    assert learner.rows_trained == 192  # six batches of the rows that set the scaler
    with pytest.raises(TrainingError, match=r"training diverged at update 10 \("):
        learner.feed(X[200:], learner.targets(y[200:], "test"), {"row": 1000})
    assert learner.state.global_step == 9 and learner.rows_trained == 288 and learner.scored == 288
    np.testing.assert_array_equal(learner.pending_X, X[288:])  # from the batch that diverged on
    assert all(np.isfinite(v).all() for v in learner.model.net.params.values())
