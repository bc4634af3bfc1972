"""Plug-ins (streamtrain/plugins.py): found as installed packages or named in STREAMTRAIN_PLUGINS;
one that cannot load is one line naming it, with advice that works."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamtrain import plugins
from streamtrain.errors import ConfigError
from streamtrain.serve import sources
from streamtrain.serve.rows import Columns

from .test_serve import free_port

BIN = Path(sys.executable).with_name("streamtrain")
PLUGINS = Path(__file__).with_name("plugins")


def run(*args, env=None):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def installed(monkeypatch):
    """The toy plug-in's directory on the path, as an installed distribution; what it registers
    removed afterwards."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))
    yield


def test_an_installed_plugin_adds_its_source_to_the_registry(installed):
    assert "lines" not in sources.SOURCES
    assert "streamtrain_toy_source" in plugins.load_plugins()
    assert sources.SOURCES["lines"].usage == "lines:PATH"
    src = sources.open_source("lines:/nowhere.jsonl", Columns(["a"], "y"), "/tmp", 1 << 20)
    assert type(src).__name__ == "LinesSource" and src.poll(0.01) == []
    with pytest.raises(ConfigError, match=r"use http, dir:PATH, .*lines:PATH"):
        sources.open_source("kafka://x", None, "/tmp", 1 << 20)


def test_a_module_named_in_the_environment_is_loaded_once(installed, monkeypatch):
    monkeypatch.setenv(plugins.ENV, " streamtrain_toy_source , ")
    assert plugins.load_plugins().count("streamtrain_toy_source") == 2  # entry point and the variable: one module
    assert list(plugins._loaded) == ["streamtrain_toy_source"]


def test_the_command_without_the_plugin_names_the_sources_it_has(tmp_path):
    r = run("serve", "--source", f"lines:{tmp_path / 'x.jsonl'}", "--checkpoint-dir", tmp_path / "svc",
            "--features", "a,b", "--classes", "0,1", "--port", free_port())
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("error: --source 'lines:") and "use http, dir:PATH" in last and "lines:PATH" not in last


def test_a_plugin_that_cannot_load_is_one_line_and_the_advice_works(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,b,y\n1,2,0\n3,4,1\n")
    r = run("inspect", data, env={plugins.ENV: "streamtrain_no_such_plugin"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: plug-in 'streamtrain_no_such_plugin' (STREAMTRAIN_PLUGINS) could not be "
                               "loaded: ModuleNotFoundError") and "remove it from STREAMTRAIN_PLUGINS" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV}  # the advice, followed
    assert subprocess.run([str(BIN), "inspect", str(data)], capture_output=True, text=True, env=env).returncode == 0
    debug = run("inspect", data, "--debug", env={plugins.ENV: "streamtrain_no_such_plugin"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr
