"""An activation added to the activations table alone (``functions.ACTIVATIONS``): the numpy path,
the compiled per-sample loop and the compiled minibatch step all train with it, agree with each
other and with central differences, and once it is gone it is unknown again everywhere."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streamtrain import TrainConfig, Trainer
from streamtrain.nn import kernels, minibatch, online
from streamtrain.nn.functions import ACTIVATIONS, TASKS, Activation
from streamtrain.nn.network import TwoLayerNet

from . import test_minibatch, test_network, test_online

pytestmark = pytest.mark.skipif(not minibatch.available(), reason="numba or scipy not importable")


def _softsign(z):
    return z / (1.0 + np.abs(z))


def _softsign_grad(a):
    return (1.0 - np.abs(a)) ** 2  # 1 / (1 + |z|)^2, from the output


# the toy: softsign(s) = s / (1 + |s|); its derivative from the output a is (1 - |a|)^2
SOFTSIGN = Activation(_softsign, _softsign_grad, "s / (one + abs(s))", "(one - abs(a)) * (one - abs(a))")
CASES = list(itertools.product(["binary", "multiclass", "regression"], [(0.0, 0.0), (0.001, 0.01)]))


@pytest.fixture
def softsign(monkeypatch):
    """The toy in the table, for this test only."""
    monkeypatch.setitem(ACTIVATIONS, "softsign", SOFTSIGN)
    return "softsign"


@pytest.mark.parametrize("task,reg", list(itertools.product(["binary", "multiclass", "regression"],
                                                           [(0.0, 0.0), (0.05, 0.1)])))
def test_numpy_gradients_match_central_differences(softsign, task, reg):
    test_network.test_gradients_match_central_differences(softsign, task, reg)


@pytest.mark.parametrize("task,reg", CASES)
def test_compiled_per_sample_loop_equals_numpy_steps(softsign, task, reg):
    test_online.test_compiled_loop_equals_numpy_steps_in_float64(softsign, task, reg)  # float64, 1e-12


@pytest.mark.parametrize("task,reg", CASES)
def test_compiled_minibatch_step_and_gradients_equal_numpy(softsign, task, reg, monkeypatch):
    for hidden in test_minibatch.WIDTHS:  # the layer whole, and in two halves of its columns
        for block in (512, 10):  # the batch in one block of rows, and in several (the last one short)
            test_minibatch.test_compiled_step_equals_numpy_step(softsign, task, reg, np.float64, 1e-12, block, hidden,
                                                                monkeypatch)
        test_minibatch.test_compiled_gradients_equal_numpy_gradients(softsign, task, reg, np.float64, 1e-12, hidden,
                                                                     monkeypatch)


def test_float32_compiled_paths_follow_float64(softsign, monkeypatch):
    test_online.test_compiled_loop_in_float32_follows_the_float64_steps(softsign, "binary")
    for hidden in test_minibatch.WIDTHS:
        test_minibatch.test_compiled_step_equals_numpy_step(softsign, "binary", (0.0, 0.0), np.float32, 1e-5, 512,
                                                            hidden, monkeypatch)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_the_trainer_learns_with_it_compiled_as_in_numpy(softsign, batch_size):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5))
    y = (X[:, 0] - X[:, 1] * X[:, 2] > 0).astype(int)
    runs = {}
    for compiled in (True, False):
        t = Trainer(TrainConfig(hidden=8, epochs=3, batch_size=batch_size, lr=0.05, activation=softsign,
                                compiled=compiled, dtype="float64", scale="none", shuffle="none"))
        runs[compiled] = (t, t.fit((X, y), log=None))
        assert t.stepper.compiled is compiled and t.net.activation == softsign
    (fast, h_fast), (slow, h_slow) = runs[True], runs[False]
    for k in fast.net.params:
        np.testing.assert_allclose(fast.net.params[k], slow.net.params[k], rtol=0, atol=1e-10)
    assert h_fast[-1]["train_loss"] == pytest.approx(h_slow[-1]["train_loss"], rel=1e-10)
    assert h_fast[-1]["train_loss"] < h_fast[0]["train_loss"]


def test_once_removed_it_is_unknown_again(monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(ACTIVATIONS, "softsign", SOFTSIGN)
        with_toy = online._generated.module()
        assert with_toy.ACTIVATIONS == minibatch._generated.module().ACTIVATIONS == tuple(ACTIVATIONS)
    assert "softsign" not in online._generated.module().ACTIVATIONS and online._generated.module() is not with_toy
    net = TwoLayerNet(3, 4, 1, dtype=np.float64)
    X, y = np.ones((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match="no activation 'softsign'"):
        online.sgd_online(net.params, X, y, 0.1, 0.0, 0.0, "softsign", "binary")
    with pytest.raises(ValueError, match="no activation 'softsign'"):
        minibatch.sgd_step(net.params, X, y, 0.1, 0.0, 0.0, "softsign", "binary")
    with pytest.raises(ValueError, match="unknown activation 'softsign'"):
        TwoLayerNet(3, 4, 1, "softsign")
    with pytest.raises(ValueError, match="softsign"):
        TrainConfig(activation="softsign")


def test_the_step_is_compiled_without_fastmath_in_every_module_built(monkeypatch):
    # Its results must not depend on which copy of a helper a process runs (see minibatch._parts):
    # no function of the step or of the tasks' rows is compiled with fastmath, the float32
    # exponential only with flags that keep its values. The options were once chosen by identity
    # with a module global that _get rebinds to the compiled form: a module built after that (a
    # table changed and changed back) compiled the loop with fastmath, and Adam's updates moved.
    minibatch._get("_sgd")  # (binds the module's names to the compiled forms)

    def check(module):
        names = [fn.__name__ for fn in minibatch._FUNCTIONS] + ["_scale_rows", "_adam_one"]
        names += [n for n in vars(module) if n.startswith("_task_")]
        assert len(names) > 20 and all("fastmath" not in getattr(module, n).targetoptions for n in names)
        assert set(module._exp_neg_f32.targetoptions["fastmath"]) == {"nsz", "contract"}

    with monkeypatch.context() as m:
        m.setitem(ACTIVATIONS, "softsign", SOFTSIGN)
        check(minibatch._generated.module())
    check(minibatch._generated.module())


@pytest.mark.parametrize("entry,message", [
    (SOFTSIGN._replace(scalar="s / (one + math.fabs(s))"), "names 'math'"),
    (SOFTSIGN._replace(scalar_grad="(one - abs(a)"), "not an expression"),
    (SOFTSIGN._replace(via_sigmoid="softplus"), "via_sigmoid is 'softplus'"),
])
def test_an_entry_the_compiled_code_cannot_take_is_refused_by_name(entry, message):
    table = {**ACTIVATIONS, "softsign": entry}
    with pytest.raises(ValueError, match=f"activation 'softsign'.*{message}"):
        kernels.module_text("online", table, [("_loop", online._loop, {})])


def test_a_compiled_helper_is_imported_by_name_with_its_module_s_hash_and_other_values_are_refused(monkeypatch):
    # (the online loops call sparse_compiled's prefetch, an intrinsic's caller that cannot be written out)
    g = online._generated

    def text():
        return kernels.module_text(g.stem, ACTIVATIONS, g.parts(), g.tasks, g.task_options)

    before = text()
    imports = [line for line in before.splitlines() if line.startswith("from ")]
    assert len(imports) == 3 and imports[0] == "from streamtrain._jit import numba"
    for name, line in zip(("_finite", "_prefetch_row"), imports[1:]):
        assert line.startswith(f"from streamtrain.nn.sparse_compiled import {name}  # streamtrain.nn.sparse_compiled ")
    # the helper's module changing changes the text (and so the module's name, and numba's cache of it)
    monkeypatch.setattr(kernels.inspect, "getsource", lambda module: "changed")
    assert text() != before
    monkeypatch.undo()
    monkeypatch.setattr(online, "_prefetch_row", np.zeros(3))  # a value neither a number nor a helper
    with pytest.raises(ValueError, match="reads '_prefetch_row', which is not a number"):
        text()


@pytest.mark.slow
def test_a_fresh_process_reads_both_compiled_loops_from_the_cache():
    # numba caches by source file: the generated modules' files keep their names and times, so a
    # second process compiles nothing (the first may fill the cache).
    import subprocess
    import sys

    code = "\n".join([
        "import numpy as np", "from streamtrain.nn import minibatch, online",
        "from streamtrain.nn.network import TwoLayerNet", "net = TwoLayerNet(4, 3, 1)",
        "X, y = np.ones((8, 4), np.float32), np.arange(8) % 2",
        "online.sgd_online(net.params, X, y, 0.1, 0, 0, 'sigmoid', 'binary')",
        "minibatch.sgd_step(net.params, X, y, 0.1, 0, 0, 'relu', 'binary')",
        "s = [online._generated.module()._loop.stats, minibatch._get('_sgd').stats]",
        "print(sum(sum(x.cache_hits.values()) for x in s), sum(sum(x.cache_misses.values()) for x in s))"])
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    hits, misses = map(int, out.split())
    assert hits == 2 and misses == 0


def test_two_threads_building_the_compiled_loops_never_parse_at_once(monkeypatch):
    # CPython 3.11's parser shares its depth count between threads (python/cpython#106905): a
    # service building both loops in two threads failed with "AST constructor recursion depth
    # mismatch". Each parse is slowed here so that overlapping parses would be seen.
    import ast
    import threading
    import time

    parse, inside, overlaps = ast.parse, [0], []

    def slow_parse(*args, **kwargs):
        inside[0] += 1
        overlaps.append(inside[0] > 1)
        time.sleep(0.02)
        try:
            return parse(*args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(ast, "parse", slow_parse)
    table = {**ACTIVATIONS, "softsign": SOFTSIGN}  # a table not built before: both modules are built now
    builds = [lambda: kernels.build("online", table, online._parts(), TASKS, online._generated.task_options),
              lambda: kernels.build("minibatch", table, minibatch._parts(), TASKS, minibatch._generated.task_options)]
    threads = [threading.Thread(target=b) for b in builds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) >= 2 and not any(overlaps)


def test_old_generated_modules_are_pruned_when_a_new_one_is_written(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setattr(kernels, "cache_dir", lambda: tmp_path)
    (tmp_path / "__pycache__").mkdir()
    stale = time.time() - kernels.PRUNE_AFTER_S - 60
    for name, age in (("_streamtrain_online_00000000000000aa", stale), ("_streamtrain_online_00000000000000bb", None),
                      ("_streamtrain_minibatch_00000000000000cc", stale)):
        for path in (tmp_path / f"{name}.py", tmp_path / "__pycache__" / f"{name}._loop-1.py311.nbi"):
            path.write_text("# an older build\n")
            if age is not None:
                os.utime(path, (age, age))
    table = {**ACTIVATIONS, "prune_probe": SOFTSIGN}  # a module no test builds otherwise: written here, once
    module = kernels.build("online", table, online._parts(), TASKS, online._generated.task_options)
    left = sorted(p.name for p in tmp_path.glob("*.py"))
    assert f"{module.__name__}.py" in left
    assert "_streamtrain_online_00000000000000aa.py" not in left  # stale: gone, with its compiled code
    assert not list((tmp_path / "__pycache__").glob("_streamtrain_online_00000000000000aa.*"))
    assert "_streamtrain_online_00000000000000bb.py" in left  # recent: another version may be using it
    assert "_streamtrain_minibatch_00000000000000cc.py" in left  # another loop's: pruned when its own is written
