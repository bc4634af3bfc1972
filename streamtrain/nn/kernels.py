"""What the compiled loops share (the per-sample loop of ``online`` and the minibatch step of
``minibatch``): the module they are compiled from, written from their source and the
activations table; the codes their ``act`` and ``task`` arguments take; the targets' layout;
the float32 exponential. A leaf: it imports nothing of streamtrain; its module, numba (through
``streamtrain._jit``) and the compiled helpers it names.

A compiled loop is written once, with the activation left open: inside a
``with each_activation(act):`` block, ``ACTIVATE(s, one, zero)`` is the activation of ``s``,
``DERIVATIVE(a, one, zero)`` its derivative from its output ``a`` (``one`` and ``zero``: the
constants in the loop's precision), and ``SIGMOID`` and ``TANH`` say whether
the compiled code computes it through its vectorised sigmoid (and as ``2 sigmoid(2s) - 1``).
``build`` writes the loops into one module, each such block becoming an ``if act == k:`` branch
per entry of the table (``k``: its position) with that entry's forms, and imports it. numba
caches compiled code by source file, and a cached loop keeps the code of whatever it called,
so the module holds every function the loops call and is named by a hash of its text: a
changed table or loop is a new file, never a stale cache.
"""

from __future__ import annotations

import ast
import builtins
import copy
import hashlib
import importlib.util
import inspect
import os
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["available", "act_id", "task_id", "targets_2d", "TASK_IDS", "exp_neg_f32", "Generated", "build",
           "source", "module_text", "cache_dir", "each_activation", "ACTIVATE", "DERIVATIVE", "SIGMOID", "TANH",
           "each_task", "TASK_ROW", "task_function"]

# The compiled code's codes for functions.TASKS (a test checks that both name the same things).
TASK_IDS = {"binary": 0, "multiclass": 1, "regression": 2}


def available() -> bool:
    """True when numba is importable (the compiled loops can run)."""
    return importlib.util.find_spec("numba") is not None


def act_id(name: str, names: Sequence[str]) -> int:
    """The code of an activation in compiled code built for ``names`` (the table's order): its
    position (a ValueError for a name not among them)."""
    try:
        return list(names).index(name)
    except ValueError:
        raise ValueError(f"the compiled loops have no activation {name!r} (they have {', '.join(names)})") from None


def task_id(name: str) -> int:
    """The compiled code's code of a task (a ValueError for one it does not implement)."""
    try:
        return TASK_IDS[name]
    except KeyError:
        raise ValueError(f"the compiled loops have no task {name!r} (they have {', '.join(TASK_IDS)})") from None


def targets_2d(T: np.ndarray, dtype) -> np.ndarray:
    """Targets as a contiguous (rows, columns) array of the network's dtype, as the compiled loops take them."""
    return np.ascontiguousarray(T, dtype=dtype).reshape(len(T), -1)


# float32 e^-x = p * 2^n with x = n ln2 + r, |r| <= ln2/2 (Cephes' expf polynomial)
_LOG2E, _LN2_HI, _LN2_LO = 1.44269504088896341, 0.693359375, -2.12194440e-4
_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp_neg_f32(Z, E):  # pragma: no cover - compiled
    # Z <- the mantissa part of exp(-Z), E <- 2^n as float32 bits. Split in two so both loops
    # vectorise (no scalar bit cast in numba); -Z is clamped to +-80 so nothing overflows or
    # turns subnormal (sigmoid(-80) is 1.8e-35, not 0; the numpy path's tanh form gives 0 there).
    f = np.float32
    flat, bits = Z.reshape(-1), E.reshape(-1)
    for i in range(flat.size):
        x = min(max(-flat[i], f(-80.0)), f(80.0))
        n = np.floor(x * f(_LOG2E) + f(0.5))
        r = x - n * f(_LN2_HI) - n * f(_LN2_LO)
        p = f(_P[0])
        p = p * r + f(_P[1])
        p = p * r + f(_P[2])
        p = p * r + f(_P[3])
        p = p * r + f(_P[4])
        p = p * r + f(_P[5])
        flat[i] = p * r * r + r + f(1.0)
        bits[i] = (np.int32(n) + np.int32(127)) << np.int32(23)


# The open activation of a loop's source (see the module's documentation). They exist so the
# loops read (and lint) as Python; build replaces them, and nothing ever calls them.
class each_activation:
    """``with each_activation(act):`` a block written once, compiled once per activation."""

    def __init__(self, act):
        raise RuntimeError("each_activation marks a compiled loop's block; kernels.build expands it")


def ACTIVATE(s, one, zero):
    """In a compiled loop: the activation of ``s``, its constants ``one`` and ``zero`` in the loop's precision."""
    raise RuntimeError("ACTIVATE is expanded by kernels.build")


def DERIVATIVE(a, one, zero):
    """In a compiled loop: the activation's derivative, from its output ``a`` (``one``, ``zero``: as ``ACTIVATE``'s)."""
    raise RuntimeError("DERIVATIVE is expanded by kernels.build")


SIGMOID = TANH = False  # in a compiled loop: computed through the vectorised sigmoid; as 2 sigmoid(2s) - 1


class each_task:
    """``with each_task(task):`` a block written once, compiled once per task of the tasks table."""

    def __init__(self, task):
        raise RuntimeError("each_task marks a compiled loop's block; kernels.build expands it")


def TASK_ROW(z, t, w, n):
    """In a compiled loop: the task's ``row`` form (``functions.Task``): ``(w * loss, right)``,
    the logits ``z`` replaced by ``w * dL/dz / n``."""
    raise RuntimeError("TASK_ROW is expanded by kernels.build")

_VIA_SIGMOID = {None: (False, False), "sigmoid": (True, False), "tanh": (True, True)}
_FORM_NAMES = {"one", "zero", "np"} | set(dir(builtins))


def _form(entry_name: str, text: str, var: str) -> ast.expr:
    """One of an entry's compiled forms, checked: an expression of ``var``, ``one``, ``zero`` and ``np``."""
    try:
        tree = parse(text, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"activation {entry_name!r}: its compiled form {text!r} is not an expression "
                         f"({e.msg})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _FORM_NAMES | {var}:
            raise ValueError(f"activation {entry_name!r}: its compiled form {text!r} names {node.id!r}; "
                             f"it may name {var}, one, zero and np")
    return tree


class _Substitute(ast.NodeTransformer):
    """One entry's forms in place of the placeholders."""

    def __init__(self, forward: ast.expr, derivative: ast.expr, sigmoid: bool, tanh: bool):
        self.forms = {"ACTIVATE": (forward, ("s", "one", "zero")), "DERIVATIVE": (derivative, ("a", "one", "zero"))}
        self.flags = {"SIGMOID": sigmoid, "TANH": tanh}

    def visit_Call(self, node):
        self.generic_visit(node)
        if not (isinstance(node.func, ast.Name) and node.func.id in self.forms):
            return node
        form, params = self.forms[node.func.id]
        if len(node.args) != len(params) or node.keywords:
            raise ValueError(f"{node.func.id} takes {len(params)} arguments: {', '.join(params)}")
        bound = dict(zip(params, node.args))

        class Bind(ast.NodeTransformer):
            def visit_Name(self, name):
                return copy.deepcopy(bound[name.id]) if name.id in bound else name

        return Bind().visit(copy.deepcopy(form))

    def visit_Name(self, node):
        if node.id in self.flags:
            return ast.Constant(self.flags[node.id])
        return node


class _Rename(ast.NodeTransformer):
    """A name in place of another (a task's row function in place of ``TASK_ROW``)."""

    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node):
        return ast.Name(self.new, node.ctx) if node.id == self.old else node


def task_function(name: str) -> str:
    """The generated module's name of task ``name``'s row function."""
    return f"_task_{name}"


class _Expand:
    """Each ``with each_activation(code):`` block -> an ``if code == k`` branch per table entry;
    each ``with each_task(code):`` block -> one per task, calling its row function."""

    def __init__(self, table: Mapping[str, Any], tasks: Sequence[str] = ()):
        self.tasks = list(tasks)
        self.entries = []
        for name, e in table.items():
            if e.via_sigmoid not in _VIA_SIGMOID:
                raise ValueError(f"activation {name!r}: via_sigmoid is {e.via_sigmoid!r}; "
                                 f"use one of {', '.join(map(repr, _VIA_SIGMOID))}")
            self.entries.append((_form(name, e.scalar, "s"), _form(name, e.scalar_grad, "a"),
                                 *_VIA_SIGMOID[e.via_sigmoid]))

    def body(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        """``stmts`` with their blocks expanded, at any depth. (Statements only: the blocks are
        statements, and a NodeTransformer's visit of every expression costs milliseconds.)"""
        out = []
        for st in stmts:
            call = st.items[0].context_expr if isinstance(st, ast.With) and len(st.items) == 1 else None
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "each_activation":
                out.extend(self.chain(call.args[0], self.body(st.body)))
                continue
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "each_task":
                out.extend(self.task_chain(call.args[0], self.body(st.body)))
                continue
            for field in ("body", "orelse", "finalbody"):
                if isinstance(getattr(st, field, None), list):
                    setattr(st, field, self.body(getattr(st, field)))
            for handler in getattr(st, "handlers", ()):
                handler.body = self.body(handler.body)
            out.append(st)
        return out

    def chain(self, code: ast.expr, block: list[ast.stmt]) -> list[ast.stmt]:
        chain: list[ast.stmt] = []
        for k, entry in reversed(list(enumerate(self.entries))):
            body = [_Substitute(*entry).visit(copy.deepcopy(stmt)) for stmt in block]
            test = ast.Compare(copy.deepcopy(code), [ast.Eq()], [ast.Constant(k)])
            chain = [ast.If(test, body, chain)]
        return chain or [ast.Pass()]

    def task_chain(self, code: ast.expr, block: list[ast.stmt]) -> list[ast.stmt]:
        if not self.tasks:
            raise ValueError("a `with each_task(...)` block, but no tasks table was given to build")
        chain: list[ast.stmt] = []
        for k, name in reversed(list(enumerate(self.tasks))):
            body = [_Rename("TASK_ROW", task_function(name)).visit(copy.deepcopy(stmt)) for stmt in block]
            test = ast.Compare(copy.deepcopy(code), [ast.Eq()], [ast.Constant(k)])
            chain = [ast.If(test, body, chain)]
        return chain


_ast_lock = threading.RLock()


def parse(text: str, filename: str = "<unknown>", mode: str = "exec") -> ast.AST:
    """``ast.parse``, one thread at a time. CPython 3.11 keeps the depth count of its syntax-tree
    constructor in state every thread shares, so two threads parsing at once can fail with
    "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905): a service
    building its two compiled loops in two threads met it. A parse in another library's thread
    can still meet ours; parsing again is then right, as a parse changes nothing."""
    with _ast_lock:
        for attempt in range(3):
            try:
                return ast.parse(text, filename, mode)
            except SystemError:
                if attempt == 2:
                    raise


_PLACEHOLDERS = {"ACTIVATE", "DERIVATIVE", "SIGMOID", "TANH", "each_activation", "TASK_ROW", "each_task"}


def _function(fn: Callable, trees: dict) -> ast.FunctionDef:
    """``fn``'s syntax tree, taken from its module's file parsed once into ``trees`` (path ->
    tree; each function taken once, so never copied). ``inspect.getsource`` would tokenise the file
    again for every function: tens of milliseconds at every process's first step."""
    path = inspect.getsourcefile(fn)
    if path not in trees:
        trees[path] = parse(Path(path).read_text(), path)
    for node in trees[path].body:
        if isinstance(node, ast.FunctionDef) and node.name == fn.__name__:
            return node
    return parse(textwrap.dedent(inspect.getsource(fn))).body[0]  # not at a module's top level


def _expanded(fn: Callable, expand: _Expand, name: str, trees: dict) -> ast.FunctionDef:
    func = _function(fn, trees)
    func.decorator_list = []
    func.name = name
    func.body = expand.body(func.body)
    return func


def source(fn: Callable, table: Mapping[str, Any], name: str | None = None, tasks: Sequence[str] = ()) -> str:
    """``fn``'s source as the generated module holds it: named ``name``, its
    ``each_activation`` blocks expanded for ``table`` (and ``each_task`` blocks for ``tasks``'
    names), without decorators."""
    func = _expanded(fn, _Expand(table, list(tasks)), name or fn.__name__, {})
    _free_names(func, fn.__qualname__)
    return ast.unparse(func)


def _free_names(func: ast.FunctionDef, qualname: str) -> set[str]:
    """Names a function reads but neither takes nor assigns (a placeholder left outside a
    block is a ValueError)."""
    a = func.args
    bound = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x is not None}
    loaded = set()
    for n in ast.walk(func):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
    if loaded & _PLACEHOLDERS:
        raise ValueError(f"{qualname}: {', '.join(sorted(loaded & _PLACEHOLDERS))} outside a "
                         "`with each_activation(...)` block")
    return loaded - bound


def _constant(value) -> bool:
    return isinstance(value, (bool, int, float)) or (isinstance(value, tuple) and all(map(_constant, value)))


def _literal(value) -> str:
    """A jit option as source text that is the same in every process (a set's repr is not)."""
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(map(repr, value))) + "}"
    return repr(value)


def module_text(stem: str, table: Mapping[str, Any], parts: Sequence[tuple[str, Callable, dict]],
                tasks: Mapping[str, Any] | None = None, task_options: dict | None = None) -> str:
    """The text of the module ``build`` writes: ``parts`` are (name, function, numba.njit's
    options), written in order, after the ``tasks`` table's row functions (compiled with
    ``task_options``, where the loops' ``each_task`` blocks call them); the module constants they
    read are copied in."""
    tasks = dict(tasks or {})
    parts = [*((task_function(name), t.row, dict(task_options or {})) for name, t in tasks.items()), *parts]
    names = {name for name, _, _ in parts} | {"np", "numba"} | set(dir(builtins))
    expand, trees = _Expand(table, list(tasks)), {}
    constants: dict[str, Any] = {}
    functions = []
    imports: dict[str, str] = {}
    for name, fn, options in parts:
        func = _expanded(fn, expand, name, trees)
        for free in sorted(_free_names(func, fn.__qualname__) - names):
            value = fn.__globals__.get(free)
            if _compiled_helper(value):
                imports[free] = getattr(value, "py_func", value).__module__
                continue
            if not _constant(value):
                raise ValueError(f"{fn.__qualname__} reads {free!r}, which is not a number: the generated "
                                 "module copies only numbers, tuples of numbers and streamtrain's compiled helpers")
            if constants.setdefault(free, value) != value:
                raise ValueError(f"two compiled functions read {free!r} with different values")
        opts = ", ".join(f"{k}={_literal(v)}" for k, v in sorted(options.items()))
        functions.append(f"@numba.njit({opts})\n{ast.unparse(func)}\n")
    codes = ", ".join(f"{name} {k}" for k, name in enumerate(table))
    head = [f"# Written by streamtrain.nn.kernels.build for {stem}: its compiled functions, each activation's",
            f"# forms in place (codes: {codes}). Not to be edited: rewritten when either changes.",
            "from streamtrain._jit import numba", "import numpy as np", "", f"ACTIVATIONS = {tuple(table)!r}",
            f"TASKS = {tuple(tasks)!r}"]
    head += [f"{k} = {v!r}" for k, v in sorted(constants.items())]
    for k, where in sorted(imports.items()):
        # (its source's hash in the text: the module's name, and so numba's cache of it, changes with it)
        source = hashlib.sha256(inspect.getsource(sys.modules[where]).encode()).hexdigest()[:16]
        head.append(f"from {where} import {k}  # {where} {source}")
    return "\n".join(head) + "\n\n\n" + "\n\n".join(functions)


def _compiled_helper(value) -> bool:
    """A function compiled in a streamtrain module (an intrinsic's caller, which the generated
    module cannot write out): imported there by name."""
    py = getattr(value, "py_func", None)
    if py is None and inspect.isfunction(value) and _jit_disabled():  # (numba's pure-Python mode: a plain function)
        py = value
    return py is not None and getattr(py, "__module__", "").startswith("streamtrain.")


def _jit_disabled() -> bool:
    numba = sys.modules.get("numba")
    return numba is not None and bool(numba.config.DISABLE_JIT)


def cache_dir() -> Path:
    """Where generated modules are written: under ``NUMBA_CACHE_DIR`` where it is set (numba
    caches their machine code there too), else the user's cache (``XDG_CACHE_HOME`` or
    ``~/.cache``) in ``streamtrain/kernels``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "streamtrain-kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamtrain" / "kernels"


def _private_temp_dir() -> Path:
    # Where the cache cannot be written (a read-only home): a directory of this user's alone, as
    # what is imported from it must be what was written.
    d = Path(tempfile.gettempdir()) / f"streamtrain-kernels-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    st = d.lstat()
    if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise OSError(f"{d} is not a directory of this user's alone: cannot write compiled code there")
    return d


def _write(path: Path, text: str) -> None:
    """``text`` at ``path``, unless it is there: a new file appears whole (a link), a damaged one is replaced."""
    try:
        if path.read_text() == text:
            return
        exists = True
    except (FileNotFoundError, UnicodeDecodeError):
        exists = path.exists()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        if exists:
            os.replace(tmp, path)
        else:
            try:  # not os.replace: a file another process has just written keeps its time (numba's cache keys on it)
                os.link(tmp, path)
            except FileExistsError:
                if path.read_text() != text:
                    os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_built: dict[str, Any] = {}  # module name -> module, once per process
_build_lock = threading.Lock()  # minibatch.load in a background thread may meet a first call


def build(stem: str, table: Mapping[str, Any], parts: Sequence[tuple[str, Callable, dict]],
          tasks: Mapping[str, Any] | None = None, task_options: dict | None = None):
    """The generated module of ``parts`` for ``table`` and ``tasks`` (see ``module_text``), written
    (once) as ``cache_dir()/_streamtrain_<stem>_<hash of its text>.py`` and imported (once per
    process): numba compiles its functions on their first call, or reads them from its cache."""
    with _build_lock:
        text = module_text(stem, table, parts, tasks, task_options)
        name = f"_streamtrain_{stem}_{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        if name not in _built:
            _built[name] = _import(name, text)
        return _built[name]


#: A generated module of the same loop not written for this long is deleted (with numba's cache
#: of it) when another is written: each change of the code or the tables leaves one behind.
PRUNE_AFTER_S = 14 * 86400


def _prune(where: Path, name: str) -> None:
    """Delete the generated modules of ``name``'s loop (not ``name`` itself) older than
    ``PRUNE_AFTER_S``, and their compiled code in ``__pycache__``. Another version's process
    that still wants one writes it again."""
    import time

    stem = name.rsplit("_", 1)[0]
    old = time.time() - PRUNE_AFTER_S
    for path in where.glob(f"{stem}_*.py"):
        try:
            if path.stem != name and path.stat().st_mtime < old:
                path.unlink()
                for cached in (where / "__pycache__").glob(f"{path.stem}.*"):
                    cached.unlink()
        except OSError:
            pass  # another process pruned it first, or it is not ours to delete


def _import(name: str, text: str):
    try:
        where = cache_dir()
        where.mkdir(parents=True, exist_ok=True)
        fresh = not (where / f"{name}.py").exists()
        _write(where / f"{name}.py", text)
    except OSError:
        where = _private_temp_dir()
        fresh = not (where / f"{name}.py").exists()
        _write(where / f"{name}.py", text)
    if fresh:
        _prune(where, name)
    spec = importlib.util.spec_from_file_location(name, where / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba finds a cached function's module by its name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class Generated:
    """A compiled loop's generated module for the activations table as it is now: ``build``'s
    module of ``parts()`` (see ``module_text``), built again when the table has changed."""

    def __init__(self, stem: str, table: Mapping[str, Any], parts: Callable[[], Sequence[tuple[str, Callable, dict]]],
                 tasks: Mapping[str, Any] | None = None, task_options: dict | None = None) -> None:
        self.stem, self.table, self.parts = stem, table, parts
        self.tasks, self.task_options = tasks, task_options
        self._state: tuple = (None, None, {})  # (the table as built, its module, name -> code)
        self._lock = threading.Lock()

    def module(self):
        """The module (its functions; ``ACTIVATIONS``, the names of its ``act`` codes)."""
        if self.table != self._state[0]:  # a comparison of dicts, ~0.1 us: this runs per batch
            with self._lock:
                if self.table != self._state[0]:
                    table = dict(self.table)
                    module = build(self.stem, table, self.parts(), self.tasks, self.task_options)
                    self._state = (table, module, {name: k for k, name in enumerate(module.ACTIVATIONS)})
        return self._state[1]

    def get(self, activation: str):
        """The module and ``activation``'s code in it (a ValueError for a name not in the table)."""
        self.module()
        _, module, codes = self._state  # (the module and its codes read together)
        code = codes.get(activation)
        return module, act_id(activation, module.ACTIVATIONS) if code is None else code
