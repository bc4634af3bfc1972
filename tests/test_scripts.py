"""The README's two commands and CI: present, wired together, and the quickstart's job runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import ROOT


def test_readme_gives_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/quickstart.sh" in readme and "scripts/test.sh" in readme
    assert (ROOT / ".ci" / "run").read_text().count("scripts/test.sh") == 1


def test_ci_fails_when_pytest_collects_nothing(tmp_path):
    # A copy of .ci/run whose test.sh collects no tests must exit non-zero and say so.
    (tmp_path / ".ci").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    (tmp_path / "scripts" / "test.sh").write_text(f"exec {sys.executable} -m pytest -q -p no:cacheprovider empty\n")
    (tmp_path / "empty").mkdir()
    res = subprocess.run(["bash", ".ci/run"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 5 and "no tests" in res.stderr


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_suite_names_and_kills_what_a_test_leaves_running(tmp_path, workers):
    # As scripts/test.sh runs it (pytest-xdist's workers) and in one process: the process a test
    # left running is named in the summary and killed, and the workers themselves are not.
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    marker = f"left-behind-{tmp_path.name}"  # (the other variant may run beside this one)
    (tmp_path / "test_leaves.py").write_text(textwrap.dedent(f"""
        import subprocess, sys
        def test_leaves_a_process():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # {marker}"])
        def test_other():
            pass
    """))
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", workers, str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "2 passed" in res.stdout, res.stdout + res.stderr
    summary = res.stdout.split("processes left running by tests (killed now)", 1)
    assert len(summary) == 2 and marker in summary[1], res.stdout
    assert len(re.findall(r"^\d+: ", summary[1], re.M)) == 1, res.stdout  # the one process, not the workers
    for _ in range(100):  # (a killed process is gone once the kernel has torn it down: a moment on a busy machine)
        left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.1)
    assert not left, left


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_suite_fails_on_a_thread_a_test_leaves_running(tmp_path, workers):
    # A thread still running after the tests (it would keep CI's job alive): its stack is shown
    # and the run fails, also when pytest-xdist's workers ran the tests.
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_threads.py").write_text(textwrap.dedent("""
        import threading
        STOP = threading.Event()
        def test_leaves_a_thread():
            # (60 s: well past the grace on a loaded machine too; the watchdog ends the run)
            threading.Thread(target=STOP.wait, args=(60,), name="left-behind-thread").start()
        def test_other():
            pass
    """))
    env = {**os.environ, "STREAMTRAIN_TEST_THREAD_GRACE_S": "2"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", workers, str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode != 0, res.stdout + res.stderr
    said = res.stdout + res.stderr
    if workers == "0":  # (the watchdog's faulthandler dump: stacks without names)
        assert "a thread is still running" in said and "threading.py" in said, said
    else:  # each worker's threads, named, with their stacks
        assert "threads left running by tests (the run fails)" in said and "left-behind-thread:" in said, said


@pytest.mark.slow
def test_quickstart_trains_resumes_and_evaluates(tmp_path):
    # Run in a copy of the checkout that shares this .venv, skipping the install step.
    for name in ("scripts", "data"):
        os.symlink(ROOT / name, tmp_path / name)
    os.symlink(Path(sys.executable).parent.parent, tmp_path / ".venv")
    env = {**os.environ, "STREAMTRAIN_SKIP_INSTALL": "1"}
    for _ in range(2):  # idempotent: the second run works the same
        res = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert "resuming from runs/quickstart/ckpt-" in res.stderr
        acc = float(re.search(r"^accuracy (\S+)", res.stdout, re.M).group(1))
        assert acc > 0.95
        assert re.search(r"trained 60 epochs, .*samples/s", res.stdout)


def test_the_cli_reference_is_generated_from_the_commands(root):
    res = subprocess.run([sys.executable, str(root / "scripts" / "cli_reference.py"), "--check"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_the_benchmark_runs_and_reports_every_section_it_ran(tmp_path):
    # The figures of a 10,000-row smoke run mean nothing; that the script runs, measures and reports does.
    bench = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--rows", "10000", "--chunk-rows", "1000",
             "--out", str(tmp_path), "--smoke"]
    sections = ["readers", "loader", "holdout", "training", "checkpoint", "cache", "mpi", "cli"]
    res = subprocess.run([*bench, "--only", ",".join(sections), "--keep-data"], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    # --keep-data: its data files are kept for the next run (and nothing else is left behind)
    assert {p.name for p in (tmp_path / "scratch").iterdir()} == {
        "hdf5.h5", "hdf5-gzip.h5", "zarr-zstd.zarr", "parquet-snappy.parquet"}
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {*sections, "limits"}
    assert all(results[name] for name in sections)
    assert all(v > 0 for v in results["limits"]["sgemm_flops_by_cores"].values())
    rates = [r["streamtrain_rows_per_s"] for r in results["readers"]] + [r["rows_per_s"] for r in results["loader"]]
    assert rates and all(r > 0 for r in rates)
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Sequential scan", "## Sampler + prefetching loader", "## A --val-fraction hold-out",
                    "## Data-parallel training on MPI", "## A decoded local copy", "## Checkpoints",
                    "## Training throughput", "## Headline: the `streamtrain` command"):
        assert heading in report
    assert "A --smoke run" in report
    _check_cli_rows(results["cli"], report)
    # the README's table is written from the same rows, and only it
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench as script
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    script.update_readme(results, meta, readme)
    before, after = (ROOT / "README.md").read_text(), readme.read_text()
    table = after[after.index(script.HEADLINE_BEGIN):after.index(script.HEADLINE_END)]
    # a figure in each cell of a case the smoke run ran, "-" in the others; columns: uncompressed HDF5,
    # gzip HDF5, Zarr, Parquet
    filled = {"`train --batch-size 256`, epochs 2+": "-x--", "`train --batch-size 32`, epochs 2+": "----",
              "`train --batch-size 1`, epochs 2+": "-x--",
              "`train --batch-size 256 --cache-dir DIR`, epochs 2+ from the decoded copy": "-x--",
              "`train --batch-size 256`, the whole command (start-up, statistics pass, 2 epochs)": "-x--",
              "`train --batch-size 1`, the whole command (start-up, statistics pass, 2 epochs)": "-x--",
              "`evaluate RUN FILE`, rows/s, the whole command": "x---",
              "`predict RUN FILE --out OUT.parquet`, rows/s, the whole command": "-x--"}
    cells = {}
    for line in table.splitlines():
        if line.startswith("| `") and not line.startswith("| `streamtrain ...`"):  # not the header
            label, *values = (cell.strip() for cell in line.strip("|").split("|"))
            assert all(v == "-" or re.fullmatch(r"[\d.]+[kMG]? / [\d.]+[kMG]?( \*)?", v) for v in values), line
            cells[label] = "".join("-" if v == "-" else "x" for v in values)
    assert cells == filled
    assert all(row in report for row in table.splitlines() if row.startswith("| `"))  # the same figures
    assert after[:after.index(script.HEADLINE_BEGIN)] == before[:before.index(script.HEADLINE_BEGIN)]
    assert after[after.index(script.HEADLINE_END):] == before[before.index(script.HEADLINE_END):]
    # a real run's cli section has every case; a smoke run's are among them
    everything = {name: Path(name) for name in script.FORMATS}
    assert [script.cli_case_key(row) for row, _, _ in script.cli_cases(everything, everything, Path("run"), 1)] == [
        *(("start-up", f, c) for f in script.FORMATS for c in ("train", "evaluate", "predict")),
        *(("train", f, b) for b in (256, 32, 1) for f in script.FORMATS),
        *(("train from the decoded copy", f, 256) for f in ("hdf5-gzip", "zarr-zstd", "parquet-snappy")),
        *((c, f, None) for c in ("evaluate", "predict") for f in script.FORMATS)]
    # --readme is refused with --smoke: its figures are no measurement
    res = subprocess.run([*bench, "--readme"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--smoke" in res.stderr
    # a partial run updates its sections and keeps the others' figures
    before = results["holdout"]
    res = subprocess.run([*bench, "--only", "readers"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads((tmp_path / "results.json").read_text())["results"]
    assert again["holdout"] == before and again["readers"] != results["readers"]
    assert not (tmp_path / "scratch").exists()  # it read the kept data, then removed it (no --keep-data)


def _check_cli_rows(rows: list[dict], report: str) -> None:
    """The headline rows of a smoke run: the command beside the library for each of its cases."""
    settings = next(r for r in rows if r["what"] == "settings")
    assert settings["stderr"] in ("pty", "pipe") and settings["rounds"] == 1 and settings["cases"] == "smoke"
    assert {(r["what"], r["format"], r.get("batch_size", r.get("command"))) for r in rows if r is not settings} == {
        ("train", "hdf5-gzip", 256), ("train", "hdf5-gzip", 1), ("train from the decoded copy", "hdf5-gzip", 256),
        ("evaluate", "hdf5", None), ("predict", "hdf5-gzip", None),
        ("start-up", "hdf5-gzip", "train"), ("start-up", "hdf5", "evaluate"), ("start-up", "hdf5-gzip", "predict")}
    for r in rows:
        if r["what"].startswith("train"):
            assert min(r["cli_samples_per_s"], r["library_samples_per_s"], r["cli_wall_samples_per_s"],
                       r["library_wall_samples_per_s"]) > 0
            assert r["ratio"] == r["cli_samples_per_s"] / r["library_samples_per_s"]
            assert r["stderr"] == settings["stderr"]
        elif r["what"] in ("evaluate", "predict"):
            assert min(r["cli_rows_per_s"], r["library_rows_per_s"]) > 0
    for row in ("| `train --batch-size 256`, epochs 2+ | ", "| `train --batch-size 1`, epochs 2+ | ",
                "| `train --batch-size 256 --cache-dir DIR`, epochs 2+ from the decoded copy | ",
                "| `evaluate RUN FILE`, rows/s, the whole command | ",
                "| `predict RUN FILE --out OUT.parquet`, rows/s, the whole command | "):
        assert row in report
    assert "Where the command and the library differ by more than 10%:" in report


def test_the_model_across_hosts_and_its_report(root):
    # scripts/bench_hosts.py's model: communication's share of a step falls with the global batch,
    # and the smallest power of two under 10% is the first that is; the report renders its JSON.
    sys.path.insert(0, str(root / "scripts"))
    try:
        from bench_hosts import report_hosts, shares, step_model
    finally:
        sys.path.remove(str(root / "scripts"))
    fixed, per_row = step_model({256: 256 / 1e-3, 1024: 1024 / 2.5e-3, 4096: 4096 / 8.5e-3})
    assert abs(fixed - 5e-4) < 1e-12 and abs(per_row - 1.5e-3 / 768) < 1e-15
    m = shares(fixed, per_row, 0.02)
    under = m["global_batch_under_10pct"]
    assert 0.02 / (fixed + per_row * under / 2 + 0.02) < 0.1 <= 0.02 / (fixed + per_row * under / 4 + 0.02)
    assert list(m["share_at_global_batch"].values()) == sorted(m["share_at_global_batch"].values(), reverse=True)
    lines = report_hosts(json.loads((root / "benchmarks" / "hosts.json").read_text()))
    assert lines[0] == "## Across two hosts (scripts/bench_hosts.py)"
    assert sum(line.startswith("| veth") or line.startswith("| 20 ms") for line in lines) == 2
