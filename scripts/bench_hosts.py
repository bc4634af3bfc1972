"""MPI's allreduce across two hosts, and the scaling model it gives (needs root: network namespaces).

Two hosts are made as the host tests make them (``tests/test_hosts.py``: network namespaces with
their own hostnames, veth links to a bridge, MPI over TCP) and one process on each runs ``Allreduce`` of
float32 arrays from 8 bytes to 16 MiB; beside it, in the same run, two processes on one host
(MPICH's shared memory). Then the step: ``train``'s rate in one process at several batch sizes
(the network of the scaling model: 64 features, 64 hidden, binary), and the model of a step on K
hosts: compute of the global batch's share plus one allreduce of the gradients (what
``ReducedStep`` sends), with the link's latency added (``--link-ms``, 20 by default: a link this
machine cannot make, ``tc netem`` being absent). It says at which global batch communication
stays under 10% of a step. Results in ``benchmarks/hosts.json``.

The veth links are the kernel's TCP stack without a wire: their latency and bandwidth are the
software's floor, not a network's; the model adds the link's latency to it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# (33,848 bytes: the 4,231 float64 a step of the 64 -> 64 -> 1 network allreduces)
STEP_BYTES = 4231 * 8
SIZES = [8, 1 << 10, 16 << 10, STEP_BYTES, 64 << 10, 1 << 20, 16 << 20]

PROBE = r"""
import json, sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
out = []
for size in SIZES:
    a = np.ones(size // 4, np.float32)
    b = np.empty_like(a)
    reps = max(5, min(2000, int(2e8 // max(size, 1)) // 100))
    for _ in range(3):
        comm.Allreduce(a, b)
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(reps):
        comm.Allreduce(a, b)
    seconds = (time.perf_counter() - t) / reps
    out.append({"bytes": size, "seconds": comm.allreduce(seconds, MPI.MAX)})
names = comm.allgather(MPI.Get_processor_name())  # (every process: a collective)
if comm.rank == 0:
    print(json.dumps({"hosts": names, "allreduce": out}))
"""


def allreduce(hosts, per_host: list[int], workdir: Path) -> dict:
    script = workdir / "probe.py"
    script.write_text(f"SIZES = {SIZES!r}\n" + PROBE)
    res = subprocess.run(hosts.command(per_host, [str(script)], program=(sys.executable,)), capture_output=True, text=True, timeout=600)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def step_rates(batches: list[int], rows: int = 200_000) -> dict[int, float]:
    """One process's samples/s training in memory (64 features, 64 hidden, binary) per batch size."""
    from streamtrain import Trainer, TrainConfig

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 64)).astype(np.float32)
    y = (X[:, :8].sum(axis=1) > 0).astype(np.int64)
    out = {}
    for b in batches:
        t = Trainer(TrainConfig(hidden=64, batch_size=b, epochs=2, seed=0, scale="none"))
        t.fit((X, y), log=None)
        out[b] = float(t.history[-1]["samples_per_s"])
    return out


def step_model(rates: dict[int, float]) -> tuple[float, float]:
    """``(fixed s, s per row)`` of one process's step, fitted to its time at each batch size."""
    b = np.array(sorted(rates), dtype=np.float64)
    t = b / np.array([rates[int(k)] for k in b])
    per_row, fixed = np.polyfit(b, t, 1)
    return max(float(fixed), 0.0), float(per_row)


def shares(fixed: float, per_row: float, comm: float, hosts: int = 2) -> dict:
    """Communication's share of a step at some global batches, and the smallest power of two under 10%."""
    share = {g: comm / (fixed + per_row * g / hosts + comm) for g in (1024, 8192, 65536, 1 << 20)}
    under = next((1 << k for k in range(8, 31) if comm / (fixed + per_row * (1 << k) / hosts + comm) < 0.1), None)
    return {"share_at_global_batch": share, "global_batch_under_10pct": under}


def share_cells(m: dict, batches=(1024, 8192, 65536)) -> str:
    """A scaling model's row cells: communication's share at ``batches``, then the smallest global
    batch under 10% (``m`` as ``shares`` returns it, keys possibly strings from JSON)."""
    sh = {int(k): v for k, v in m["share_at_global_batch"].items()}
    under = m["global_batch_under_10pct"]
    return " | ".join([*(f"{sh[b]:.1%}" for b in batches), "-" if under is None else f"{under:,}"])


def report_hosts(r: dict) -> list[str]:
    """The report's section on ``benchmarks/hosts.json``."""
    across = {a["bytes"]: a["seconds"] for a in r["across_hosts"]["allreduce"]}
    within = {a["bytes"]: a["seconds"] for a in r["one_host"]["allreduce"]}
    lossy = r.get("across_lossy")
    slow = {a["bytes"]: a["seconds"] for a in lossy["allreduce"]} if lossy else {}
    impaired = f"{lossy['rate_mbit']:g} Mbit/s, {lossy['loss_percent']:g}% loss" if lossy else ""
    lines = ["## Across two hosts (scripts/bench_hosts.py)", "",
             "Two hosts made as the host tests make them (network namespaces with their own hostnames, veth",
             "links to a bridge, MPI over TCP), one process on each, against two processes on one host (shared",
             f"memory), in the same run ({r['time']}). The veth links are the kernel's TCP stack without a wire:",
             "the software's floor."]
    if lossy:
        lines += ["", f"A slow, lossy link: the same links limited to {lossy['rate_mbit']:g} Mbit/s out of each host (an htb",
                  f"qdisc) with {lossy['loss_percent']:g}% of the packets onto them dropped at random (nftables); TCP",
                  "retransmits. (No added delay: `tc netem` is absent from this kernel.)"]
    lines += ["", "| allreduce of | across hosts us | MB/s | one host us |" + (f" {impaired} us | MB/s |" if lossy else ""),
              "|---:|---:|---:|---:|" + ("---:|---:|" if lossy else "")]
    for size in sorted(across):
        lines.append(f"| {size:,} B | {across[size] * 1e6:,.1f} | {size / across[size] / 1e6:,.1f} | "
                     f"{within[size] * 1e6:,.1f} |" +
                     (f" {slow[size] * 1e6:,.1f} | {size / slow[size] / 1e6:,.1f} |" if lossy else ""))
    fixed, per_row = r["step_fixed_s"], r["step_per_row_s"]
    lines += ["", f"Scaling model for 2 hosts: a step costs one process's work on its half of the global batch "
              f"(fitted to `train`'s in-memory rate here at batch {', '.join(map(str, sorted(map(int, r['rates']))))}: "
              f"{fixed * 1e6:.1f} us + {per_row * 1e9:.1f} ns per row) plus the allreduce of a step's "
              f"{r['gradient_bytes']:,} bytes across the link, and the link's own latency (none: the veth as "
              f"measured; {r['link_ms']:g} ms: a link with that one-way delay, which `tc netem` would make and this "
              "machine cannot).", "",
              "| link | allreduce us | share at global batch 1,024 | 8,192 | 65,536 | 1,048,576 "
              "| smallest global batch under 10% |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m in r["model"]:
        lines.append(f"| {m['link']} | {m['comm_s'] * 1e6:,.1f} | {share_cells(m, (1024, 8192, 65536, 1 << 20))} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--link-ms", type=float, default=20.0)
    ap.add_argument("--lossy-mbit", type=float, default=100.0, help="the lossy link's rate out of each host")
    ap.add_argument("--lossy-percent", type=int, default=1, help="the lossy link's packets dropped, in percent")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "hosts.json"))
    args = ap.parse_args()
    from tests.test_hosts import Hosts

    with tempfile.TemporaryDirectory(prefix="bench-hosts-") as tmp:
        hosts = Hosts(2, Path(tmp))
        try:
            across = allreduce(hosts, [1, 1], Path(tmp))
            within = allreduce(hosts, [2, 0], Path(tmp))
            lossy = None
            if shutil.which("nft"):  # (scripts/test.sh installs nftables as root)
                try:
                    hosts.impair(args.lossy_mbit, args.lossy_percent)
                    lossy = {"rate_mbit": args.lossy_mbit, "loss_percent": args.lossy_percent,
                             **allreduce(hosts, [1, 1], Path(tmp))}
                except subprocess.CalledProcessError as e:  # (a kernel without htb or nf_tables)
                    print(f"the lossy link cannot be made here ({e.stderr.strip()}): not measured", file=sys.stderr)
                finally:
                    hosts.restore()
        finally:
            hosts.remove()
    rates = step_rates([256, 1024, 4096])
    fixed, per_row = step_model(rates)
    reduce_s = next(a["seconds"] for a in across["allreduce"] if a["bytes"] == STEP_BYTES)
    rows = [{"link": "veth (as measured)", "comm_s": reduce_s, **shares(fixed, per_row, reduce_s)}]
    if lossy:
        lossy_s = next(a["seconds"] for a in lossy["allreduce"] if a["bytes"] == STEP_BYTES)
        rows.append({"link": f"{args.lossy_mbit:g} Mbit/s, {args.lossy_percent}% loss (as measured)", "comm_s": lossy_s,
                     **shares(fixed, per_row, lossy_s)})
    rows.append({"link": f"{args.link_ms:g} ms", "comm_s": reduce_s + args.link_ms / 1e3,
                 **shares(fixed, per_row, reduce_s + args.link_ms / 1e3)})
    result = {"across_hosts": across, "one_host": within, "across_lossy": lossy, "rates": rates, "step_fixed_s": fixed,
              "step_per_row_s": per_row, "gradient_bytes": STEP_BYTES, "link_ms": args.link_ms, "model": rows,
              "time": time.strftime("%Y-%m-%d")}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(report_hosts(json.loads(json.dumps(result)))))


if __name__ == "__main__":
    main()
