"""The package's shape: no import cycles between its modules, the library never imports the CLI
or the service, and the compiled code implements exactly the math tables' names."""

from __future__ import annotations

import ast

from .conftest import ROOT

PACKAGE = ROOT / "streamtrain"


def _imports() -> dict[str, set[str]]:
    """Module -> the streamtrain modules it imports (anywhere in it, at import time or in a function)."""
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    graph = {}
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + [node.module]) if node.module else ".".join(base)
                for a in node.names:
                    full = f"{mod}.{a.name}"
                    deps.add(full if full in mods else mod)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_in_a_circle():
    graph = _imports()
    assert len(graph) > 50
    # the package's __init__ re-exports the public API; what it imports may not import it back
    graph = {m: deps - {"streamtrain"} for m, deps in graph.items()}
    assert _cycles(graph) == []


def test_the_library_never_imports_the_cli_or_the_service():
    upward = {m for m in _imports() if m.startswith(("streamtrain.cli", "streamtrain.serve", "streamtrain.entry"))}
    for module, deps in _imports().items():
        if module in upward:
            continue
        assert not deps & upward, (module, deps & upward)


def test_the_compiled_code_implements_the_tables_names():
    import ast

    import pytest

    from streamtrain.nn import ACTIVATIONS, TASKS, kernels, minibatch, online

    assert set(kernels.TASK_IDS) == set(TASKS)
    # an activation's code is its place in the table; a name not in it has none
    assert [kernels.act_id(name, tuple(ACTIVATIONS)) for name in ACTIVATIONS] == list(range(len(ACTIVATIONS)))
    with pytest.raises(ValueError, match="no activation 'swish'"):
        kernels.act_id("swish", tuple(ACTIVATIONS))
    # the compiled code as written from the table: one branch per entry wherever it takes the
    # activation, and no branch for an unknown code
    step = {fn.__name__: fn for fn in minibatch._FUNCTIONS}  # as written (the compiled ones are bound over the names)
    for fn in (online._activate, online._score_and_back, step["_activate"], step["_backward"]):
        chains = []
        for node in ast.walk(ast.parse(kernels.source(fn, ACTIVATIONS, tasks=TASKS))):
            if isinstance(node, ast.If) and ast.unparse(node.test) == "act == 0":
                codes, branch = [], [node]
                while len(branch) == 1 and isinstance(branch[0], ast.If) and "act ==" in ast.unparse(branch[0].test):
                    codes.append(ast.unparse(branch[0].test))
                    branch = branch[0].orelse
                assert branch == [], (fn.__name__, "a fallback branch")
                chains.append(codes)
        assert chains and all(c == [f"act == {k}" for k in range(len(ACTIVATIONS))] for c in chains), fn.__name__
    # and the tasks: each loop's per-row loss dispatches from the tasks table to its row function
    assert [kernels.task_id(name) for name in TASKS] == list(range(len(TASKS)))
    for fn in (online._score_and_back, step["_loss_delta"]):
        text = kernels.source(fn, ACTIVATIONS, tasks=TASKS)
        tests = [ast.unparse(n.test) for n in ast.walk(ast.parse(text)) if isinstance(n, ast.If)
                 and ast.unparse(n.test).startswith("task ==")]
        assert tests == [f"task == {k}" for k in range(len(TASKS))], fn.__name__
        assert all(f"{kernels.task_function(name)}(" in text for name in TASKS) and "TASK_ROW" not in text


# The layers, bottom to top (docs/architecture.md): a module imports its own part and the layers below.
LAYERS = [{"errors", "_version", "_malloc", "_jit", "_cores", "progress", "plugins"}, {"readers", "metrics", "features"},
          {"data", "nn"},
          {"labels", "io", "config"}, {"model"}, {"train"}, {"batches", "estimator", "synthetic", "clicks", "plot", "report"},
          {"serve"}, {"cli"}, {"entry"}]


def test_no_module_imports_upward():
    level = {part: i for i, parts in enumerate(LAYERS) for part in parts}

    def part(module: str) -> str:
        return module.split(".")[1] if "." in module else ""

    graph = _imports()
    assert {part(m) for m in graph} - {""} <= set(level), "a new part of the package needs its layer here"
    upward = [(m, d) for m, deps in graph.items() if part(m) for d in deps
              if part(d) and part(d) != part(m) and level[part(d)] > level[part(m)]]
    assert upward == []
