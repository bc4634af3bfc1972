"""The library API for pipelines: partial_fit, the batch iterator, docstring and README examples."""

from __future__ import annotations

import doctest
import re
import sys
import types

import numpy as np
import pytest

import streamtrain
from streamtrain import BatchIterator, TrainConfig, Trainer

from .conftest import DATA, ROOT


def test_partial_fit_learns_online_and_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    t = Trainer(TrainConfig(hidden=8, batch_size=16, lr=0.1))
    for _ in range(60):  # a pipeline pushing blocks of rows
        X = rng.standard_normal((64, 5))
        t.partial_fit(X, (X[:, 0] + X[:, 1] > 0).astype(int), classes=[0, 1])
    X = rng.standard_normal((2000, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    assert t.task == "binary" and np.mean(t.predict(X) == y) > 0.9
    t.save(tmp_path / "m.npz")
    assert np.array_equal(Trainer.load(tmp_path / "m.npz").predict(X), t.predict(X))


def test_partial_fit_classes_must_cover_later_labels():
    t = Trainer(TrainConfig(hidden=3))
    t.partial_fit(np.ones((4, 2)), [0, 1, 0, 1], classes=[0, 1, 2])
    assert t.task == "multiclass" and t.classes == [0, 1, 2]
    t.partial_fit(np.ones((2, 2)), [2, 2])
    with pytest.raises(streamtrain.DataError, match="label value 5"):
        t.partial_fit(np.ones((1, 2)), [5])


def test_batch_iterator_epochs_state_and_sharding(monkeypatch):
    it = BatchIterator(DATA / "digits.h5", batch_size=64, shuffle="global", seed=1)
    first = [y for _, y in it]
    assert len(first) == len(it) == 29 and sum(map(len, first)) == 1797
    second = [y for _, y in it]  # the next epoch: another order
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    # resume mid-epoch from the state dict
    it2 = BatchIterator(DATA / "digits.h5", batch_size=64, shuffle="global", seed=1)
    gen = iter(it2)
    for _ in range(5):
        next(gen)
    state = it2.state_dict()
    it3 = BatchIterator(DATA / "digits.h5", batch_size=64, shuffle="global", seed=1)
    it3.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip([y for _, y in it3], first[5:]))
    # inside a DataLoader worker (torch's worker info, faked: streamtrain never imports torch)
    shares = []
    for worker in range(2):
        info = types.SimpleNamespace(id=worker, num_workers=2)
        fake = types.SimpleNamespace(utils=types.SimpleNamespace(data=types.SimpleNamespace(get_worker_info=lambda: info)))
        monkeypatch.setitem(sys.modules, "torch", fake)
        shares.append(np.concatenate([X for X, _ in BatchIterator(DATA / "digits.h5", batch_size=64)]))
    assert len(shares[0]) == len(shares[1]) == 898
    assert not set(map(bytes, shares[0])) & set(map(bytes, shares[1]))  # disjoint rows


def test_batch_iterator_in_a_real_torch_dataloader():
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(BatchIterator(DATA / "digits.h5", batch_size=100).as_torch(),
                                         batch_size=None, num_workers=2)
    assert sum(len(X) for X, _ in loader) == 1796  # two workers, 898 rows each


@pytest.mark.parametrize("module", ["streamtrain.readers", "streamtrain.data.sampling", "streamtrain.train.trainer",
                                    "streamtrain.nn.network", "streamtrain.synthetic", "streamtrain.batches",
                                    "streamtrain.estimator", "streamtrain.labels", "streamtrain.model",
                                    "streamtrain.train.distributed", "streamtrain.serve.sources.base"])
def test_docstring_examples_run(module, monkeypatch):
    monkeypatch.chdir(ROOT)
    mod = __import__(module, fromlist=["_"])
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("page", ["README.md", "docs/library.md", "docs/user-guide.md"])
def test_documented_python_examples_run(tmp_path, monkeypatch, page):
    """Every ```python block of the page runs as written (from a copy of data/)."""
    import shutil

    shutil.copytree(DATA, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)
    assert blocks or page == "docs/user-guide.md"
    for code in blocks:
        exec(compile(code, page, "exec"), {})


def test_batch_iterator_scales_as_the_trainer_and_transforms():
    from streamtrain import Trainer

    raw = np.concatenate([X for X, _ in BatchIterator(DATA / "digits.h5", batch_size=100, shuffle="none")])
    std = np.concatenate([X for X, _ in BatchIterator(DATA / "digits.h5", batch_size=100, shuffle="none",
                                                       scale="standard")])
    t = Trainer(hidden=4, epochs=1)
    t.fit(DATA / "digits.h5", log=None)
    np.testing.assert_allclose(std, t.scaler.transform(raw), rtol=1e-6, atol=1e-6)  # the trainer's scaling
    from_model = np.concatenate([X for X, _ in BatchIterator(DATA / "digits.h5", batch_size=100, shuffle="none",
                                                              scale=t.scaler)])
    np.testing.assert_array_equal(from_model, std)
    doubled = BatchIterator(DATA / "digits.h5", batch_size=100, shuffle="none", transform=lambda X, y: (X * 2, y + 1))
    X0, y0 = next(iter(doubled))
    np.testing.assert_array_equal(X0, raw[:100] * 2)
    assert y0.min() >= 1


def test_torch_batches_carry_int64_class_labels():
    from streamtrain.batches import _torch_wrapper

    batches = _torch_wrapper(object)(BatchIterator(DATA / "digits.h5", batch_size=100))  # no torch needed
    _, y = next(iter(batches))
    assert y.dtype == np.int64
    torch = pytest.importorskip("torch")
    X, y = next(iter(torch.utils.data.DataLoader(BatchIterator(DATA / "digits.h5", batch_size=64).as_torch(),
                                                 batch_size=None)))
    loss = torch.nn.functional.cross_entropy(torch.zeros((len(y), 10)), y)  # refuses int32 labels
    assert y.dtype == torch.int64 and torch.isfinite(loss)
