"""MPI across hosts: each host a Linux network namespace with its own hostname (a UTS namespace: MPICH
takes each for a machine of its own) and its own disk (a mount namespace), joined by a veth link
with link-local addresses that route nowhere else; MPI's traffic between hosts goes over TCP
(``UCX_TLS=tcp``: otherwise UCX, seeing one kernel, would use shared memory across the link).
``mpiexec`` runs inside the first host and starts the others' ranks through hydra's ssh launcher,
whose command here enters a host's namespaces the way ssh enters a machine. Needs CAP_NET_ADMIN (CI runs as root); skipped, saying
so, where namespaces cannot be made. Every namespace and link is removed whatever happens."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from streamtrain import make_data
from streamtrain.io.resolve import latest_checkpoint

from .test_mpi import BIN, MPIEXEC, _assert_close, _final, _step

pytestmark = pytest.mark.slow

LAUNCHER = """#!/bin/sh
# hydra's ssh launcher runs: THIS [ssh options] HOST COMMAND...; host hN is the namespace {prefix}N
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
exec ip netns exec "{prefix}${{host#h}}" unshare --uts --mount sh -c "{enter} && exec $*"
"""
# Entering host $host: its hostname, and its own disk (disk-$host) at the path every host's disk
# has (disk), in a mount namespace of its own: what one host writes there the others never see.
ENTER = "hostname $host && mount --bind {where}/disk-$host {where}/disk"


class Hosts:
    """``n`` hosts h0, h1, ... as network namespaces, each joined by a veth link to a bridge in a
    namespace of its own (a switch: every host reaches every other, as machines on one network),
    host hi at 169.254.77.(i+1)/24 on its one device, ``link(i)``."""

    def __init__(self, n: int, where: Path):
        self.prefix = f"st{os.getpid() % 100000}h"
        self.n, self.where, self.made = n, where, []
        self.switch = f"{self.prefix}s"
        try:
            for name in [*map(self.name, range(n)), self.switch]:
                self._ip("netns", "add", name)
                self.made.append(name)
                self._ip("-n", name, "link", "set", "lo", "up")
            self._ip("-n", self.switch, "link", "add", "name", "sw", "type", "bridge")
            self._ip("-n", self.switch, "link", "set", "sw", "up")
            for i in range(n):  # hi's link to the switch
                port = f"{self.prefix}p{i}"
                self._ip("link", "add", self.link(i), "netns", self.name(i), "type", "veth", "peer", "name", port,
                         "netns", self.switch)
                self._ip("-n", self.switch, "link", "set", port, "master", "sw")
                self._ip("-n", self.switch, "link", "set", port, "up")
                self._ip("-n", self.name(i), "addr", "add", f"{self.address(i)}/24", "dev", self.link(i))
                self._ip("-n", self.name(i), "link", "set", self.link(i), "up")
            #: h0's device on the hosts' network (MPI's control connections use it: -iface)
            self.iface = self.link(0)
            self._wait_up()
        except BaseException:
            self.remove()
            raise
        #: each host's own disk, at the same path on every host (no file system they share)
        self.disk = where / "disk"
        for i in range(n):
            (where / f"disk-h{i}").mkdir()
        self.disk.mkdir()
        self.launcher = where / "launch.sh"
        self.launcher.write_text(LAUNCHER.format(prefix=self.prefix, enter=ENTER.format(where=where)))
        self.launcher.chmod(0o755)

    def _wait_up(self, timeout: float = 30.0) -> None:
        """Until every host's link has its carrier (a veth's takes a moment): an MPI library
        started before that finds no network device but the loopback (seen: UCX, which then fails)."""
        deadline = time.monotonic() + timeout
        for i in range(self.n):
            while "LOWER_UP" not in subprocess.run(["ip", "-n", self.name(i), "link", "show", self.link(i)],
                                                   capture_output=True, text=True, timeout=30).stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the link {self.link(i)} did not come up in {timeout:g} s")
                time.sleep(0.05)

    def name(self, i: int) -> str:
        return f"{self.prefix}{i}"

    @staticmethod
    def address(i: int) -> str:
        return f"169.254.77.{i + 1}"

    def link(self, i: int) -> str:
        """Host hi's device on the network."""
        return f"{self.prefix}{i}e"

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    def command(self, per_host: list[int], args: list[str], program: tuple[str, ...] = (str(BIN),)) -> list[str]:
        """``mpiexec`` inside h0, ``per_host[i]`` ranks of ``PROGRAM ARGS`` (streamtrain) on host hi."""
        hostfile = self.where / f"hosts-{'-'.join(map(str, per_host))}"
        hostfile.write_text("".join(f"h{i}:{k}\n" for i, k in enumerate(per_host) if k))
        launch = [str(MPIEXEC), "-f", str(hostfile), "-launcher", "ssh", "-launcher-exec", str(self.launcher),
                  "-iface", self.iface, "-n", str(sum(per_host)), *program, *args]
        # UCX_TLS=tcp: the hosts share one kernel, so UCX (MPICH's network layer) would reach the
        # other host's processes through shared memory, and a link cut would change nothing; over
        # TCP, as between machines, every byte between hosts crosses the link (hydra passes the
        # variable on to every host; the processes of one host still meet through MPICH's own
        # shared memory)
        inner = "env UCX_TLS=tcp " + " ".join(f"'{a}'" for a in launch)
        enter = ENTER.format(where=self.where).replace("$host", "h0")
        return ["ip", "netns", "exec", self.name(0), "unshare", "--uts", "--mount", "sh", "-c", f"{enter} && exec {inner}"]

    def impair(self, rate_mbit: float, loss_percent: int) -> None:
        """Every host's link made slow and lossy: at most ``rate_mbit`` out of each host (an htb
        qdisc) and ``loss_percent`` of each host's packets onto the link dropped at random
        (nftables). ``tc netem``, which would add delay, is absent from this kernel."""
        for i in range(self.n):
            dev = self.link(i)
            for cmd in (["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10"],
                        ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate",
                         f"{rate_mbit}mbit"],
                        ["nft", "add", "table", "inet", "lossy"],
                        ["nft", "add", "chain", "inet", "lossy", "out", "{ type filter hook output priority 0; }"],
                        ["nft", "add", "rule", "inet", "lossy", "out", "oifname", dev, "numgen", "random", "mod",
                         "100", "<", str(loss_percent), "counter", "drop"]):
                subprocess.run(["ip", "netns", "exec", self.name(i), *cmd], check=True, capture_output=True,
                               text=True, timeout=30)

    def dropped(self) -> int:
        """Packets the lossy links have dropped so far."""
        total = 0
        for i in range(self.n):
            out = subprocess.run(["ip", "netns", "exec", self.name(i), "nft", "list", "table", "inet", "lossy"],
                                 capture_output=True, text=True, timeout=30).stdout
            total += sum(int(w) for w in re.findall(r"counter packets (\d+)", out))
        return total

    def restore(self) -> None:
        """Every link as it was (the impairments removed)."""
        for i in range(self.n):
            for cmd in (["tc", "qdisc", "del", "dev", self.link(i), "root"], ["nft", "delete", "table", "inet", "lossy"]):
                subprocess.run(["ip", "netns", "exec", self.name(i), *cmd], capture_output=True, timeout=30)

    def own_disk(self, i: int) -> Path:
        """Host hi's disk as this machine sees it (each host sees its own at ``disk``)."""
        return self.where / f"disk-h{i}"

    def pids(self, i: int) -> list[int]:
        """The processes running on host hi."""
        out = subprocess.run(["ip", "netns", "pids", self.name(i)], capture_output=True, text=True, timeout=30)
        return [int(p) for p in out.stdout.split()]

    def remove(self) -> None:
        for name in self.made:  # (a namespace's links go with it)
            subprocess.run(["ip", "netns", "pids", name], capture_output=True)
            for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made = []


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    try:
        made = Hosts(3, tmp_path_factory.mktemp("hosts"))
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as e:
        said = getattr(e, "stderr", None) or e
        pytest.skip(f"three hosts cannot be made here as network namespaces (needs CAP_NET_ADMIN and iproute2): {said}")
    yield made
    made.remove()
    assert not any(n.startswith(made.prefix) for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                                       text=True).stdout.split())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("hosts-data") / "d.h5"
    make_data(path, rows=6000, features=8, chunk_rows=500, seed=3, compression="gzip")
    return path


def _commands(pids: list[int]) -> set[str]:
    """The programs the processes run (their first argument)."""
    out = set()
    for pid in pids:
        try:
            out.add(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1 if _is_python(pid) else 0].decode())
        except (OSError, IndexError):
            continue
    return out


def _is_python(pid: int) -> bool:
    try:
        return "python" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False


def _args(data, ckpt, *extra):
    return ["train", str(data), "--hidden", "8", "--batch-size", "60", "--epochs", "2", "--dtype", "float64",
            "--val-fraction", "0.2", "--window-mb", "0.1", "--checkpoint-dir", str(ckpt), "--quiet", *extra]


@pytest.mark.parametrize("per_host,options", [([1, 1], "--shuffle window --optimizer adam --decoder process"),
                                              ([2, 1], "--shuffle global --optimizer momentum --momentum 0.8"),
                                              ([1, 1, 1], "--shuffle window --optimizer sgd --decoder process")])
def test_ranks_on_several_hosts_train_the_run_of_one_process(hosts, data, tmp_path, per_host, options):
    alone = subprocess.run([str(BIN), *_args(data, tmp_path / "one", *options.split())], capture_output=True,
                           text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    proc = subprocess.Popen(hosts.command(per_host, _args(data, tmp_path / "hosts", *options.split())),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = [set() for _ in per_host]
    while proc.poll() is None:  # the ranks run on their hosts: streamtrain processes in each one's namespace
        for i in range(1, len(per_host)):
            seen[i].update(_commands(hosts.pids(i)))
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err + out[-2000:]
    assert all(any(c.endswith("/streamtrain") for c in s) for s in seen[1:]), seen
    (got, meta), (ref, ref_meta) = _final(tmp_path / "hosts"), _final(tmp_path / "one")
    assert _step(meta) == _step(ref_meta) == 160
    _assert_close(got, ref, rtol=1e-12)


def test_hosts_without_a_shared_disk_read_their_own_data_and_decode_it_once_each(hosts, data, tmp_path):
    # The same path names each host's own copy of the data; --cache-dir is on each host's disk,
    # where the host's first process decodes the copy while its others wait; checkpoints go to
    # rank 0's disk alone (rank 0 reads them and sends them to the others on resume).
    import shutil

    for i in range(hosts.n):
        shutil.copy(data, hosts.own_disk(i) / "d.h5")
        shutil.rmtree(hosts.own_disk(i) / "cache", ignore_errors=True)
        shutil.rmtree(hosts.own_disk(i) / "run", ignore_errors=True)
    alone = subprocess.run([str(BIN), *_args(data, tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    args = _args(hosts.disk / "d.h5", hosts.disk / "run", "--cache-dir", str(hosts.disk / "cache"))
    first = subprocess.run(hosts.command([1, 2], args), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr + first.stdout[-2000:]
    for i in range(2):  # one decoded copy on each host's disk, nothing left half-written
        copies = sorted(p.name for p in (hosts.own_disk(i) / "cache").iterdir())
        assert len(copies) == 1 and copies[0].endswith(".h5"), (i, copies)
    assert not (hosts.disk / "cache").exists()  # (this machine's view: no host wrote to the shared path)
    assert (hosts.own_disk(0) / "run").is_dir() and not (hosts.own_disk(1) / "run").exists()
    got, meta = _final(hosts.own_disk(0) / "run")
    ref, ref_meta = _final(tmp_path / "one")
    assert _step(meta) == _step(ref_meta) == 160
    _assert_close(got, ref, rtol=1e-12)
    # two more epochs, resumed on the same hosts: the checkpoint is read on h0 alone
    more = subprocess.run(hosts.command([1, 2], [*args, "--epochs", "4", "--resume"]), capture_output=True,
                          text=True, timeout=300)
    assert more.returncode == 0, more.stderr
    longer = subprocess.run([str(BIN), *_args(data, tmp_path / "one", "--epochs", "4", "--resume")],
                            capture_output=True, text=True, timeout=300)  # (the schedule stretched alike)
    assert longer.returncode == 0, longer.stderr
    (got, meta), (ref, ref_meta) = _final(hosts.own_disk(0) / "run"), _final(tmp_path / "one")
    assert _step(meta) == _step(ref_meta) == 320
    _assert_close(got, ref, rtol=1e-12)


def test_a_lost_host_ends_the_job_and_the_hosts_left_resume_at_the_same_position(hosts, data, tmp_path):
    # 6 epochs of 480 steps, a checkpoint every 200: the job is still running when h1 is lost
    args = _args(data, tmp_path / "run", "--epochs", "6", "--batch-size", "10", "--optimizer", "adam",
                 "--checkpoint-every", "200", "--keep", "2", "--resume")
    alone = subprocess.run([str(BIN), *_args(data, tmp_path / "one", "--epochs", "6", "--batch-size", "10",
                                             "--optimizer", "adam")], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    proc = subprocess.Popen(hosts.command([1, 1], args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while latest_checkpoint(tmp_path / "run", warn=lambda m: None) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before h1 could be lost"
    lost = time.monotonic()
    for pid in hosts.pids(1):  # every process of h1, its MPI proxy among them, as a machine that dies
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - lost < 30
    _resumed_on_h0_as_one_process(hosts, args, tmp_path)



def test_a_host_whose_copy_of_the_data_differs_is_refused_in_one_line(hosts, tmp_path):
    # Each host reads the path on its own disk: h1's copy holds other rows (the same layout).
    for i, seed in enumerate((3, 4)):
        make_data(hosts.own_disk(i) / "other.h5", rows=6000, features=8, chunk_rows=500, seed=seed,
                  compression="gzip")
    r = subprocess.run(hosts.command([1, 1], _args(hosts.disk / "other.h5", tmp_path / "r")), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("error:") == 1, r.stderr
    assert "rank 1 (host h1) reads other data than rank 0 (host h0): its sampled chunks differ" in r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.glob("r/ckpt-*"))


def test_a_host_whose_link_is_cut_ends_the_job_naming_it_and_the_others_resume(hosts, data, tmp_path):
    # The link goes down mid-run (a machine that loses power or its network: nothing closes, so
    # MPI would wait for minutes): the watch of the process left waiting names the lost one
    args = _args(data, tmp_path / "run", "--epochs", "6", "--batch-size", "10", "--optimizer", "adam",
                 "--checkpoint-every", "200", "--keep", "2", "--peer-timeout", "4", "--resume")
    alone = subprocess.run([str(BIN), *_args(data, tmp_path / "one", "--epochs", "6", "--batch-size", "10",
                                             "--optimizer", "adam")], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    proc = subprocess.Popen(hosts.command([1, 1], args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(tmp_path / "run", warn=lambda m: None) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before the link could be cut"
        cut = time.monotonic()
        subprocess.run(["ip", "-n", hosts.name(1), "link", "set", hosts.link(1), "down"], check=True, timeout=30)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - cut
    finally:
        subprocess.run(["ip", "-n", hosts.name(1), "link", "set", hosts.link(1), "up"], timeout=30)
        hosts._wait_up()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in hosts.pids(1):  # h1's processes, still waiting on their side of the cut
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0 and took < 30, (took, err[-2000:])
    lines = [line for line in (out + err).splitlines() if "error:" in line]
    assert len(lines) == 1 and "no answer from rank 1 (host h1)" in lines[0] and "--resume" in lines[0], err[-2000:]
    _resumed_on_h0_as_one_process(hosts, args, tmp_path)


def test_one_of_three_hosts_lost_ends_the_job_and_the_two_left_resume_across_their_link(hosts, data, tmp_path):
    # Three hosts on one switch; h2 dies mid-run; h0 and h1 (one rank each: another world size)
    # continue from the last checkpoint at the same global batch, to the run of one process.
    args = _args(data, tmp_path / "run", "--epochs", "6", "--batch-size", "10", "--optimizer", "adam",
                 "--checkpoint-every", "200", "--keep", "2", "--resume")
    alone = subprocess.run([str(BIN), *_args(data, tmp_path / "one", "--epochs", "6", "--batch-size", "10",
                                             "--optimizer", "adam")], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    proc = subprocess.Popen(hosts.command([1, 1, 1], args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while latest_checkpoint(tmp_path / "run", warn=lambda m: None) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before h2 could be lost"
    lost = time.monotonic()
    for pid in hosts.pids(2):
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - lost < 30
    stopped = _step(latest_checkpoint(tmp_path / "run")[2])
    r = subprocess.run(hosts.command([1, 1], args), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got, meta = _final(tmp_path / "run")
    ref, ref_meta = _final(tmp_path / "one")
    assert 0 < stopped < _step(meta) == _step(ref_meta)
    _assert_close(got, ref, rtol=1e-10)


def _resumed_on_h0_as_one_process(hosts, args, tmp_path) -> None:
    """The same command on the host that remains (one process): from the last checkpoint in
    ``run``, at the same global batch, to the run of one process in ``one``."""
    stopped = _step(latest_checkpoint(tmp_path / "run")[2])
    r = subprocess.run(["ip", "netns", "exec", hosts.name(0), str(BIN), *args], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    got, meta = _final(tmp_path / "run")
    ref, ref_meta = _final(tmp_path / "one")
    assert 0 < stopped < _step(meta) == _step(ref_meta)
    _assert_close(got, ref, rtol=1e-10)


@pytest.fixture(scope="module")
def s3_on_h0(hosts):
    """An S3 server (moto's) on h0's address, with a bucket: ``(environment, run_on_h0)``, where
    ``run_on_h0(code)`` runs Python code on h0, whence the server is reached, and returns its stdout."""
    import sys

    port = 45000 + os.getpid() % 1000
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_ENDPOINT_URL": f"http://{hosts.address(0)}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    server = subprocess.Popen(["ip", "netns", "exec", hosts.name(0), sys.executable, "-m", "moto.server", "-H",
                               hosts.address(0), "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def in_h0(code: str) -> str:
        r = subprocess.run(["ip", "netns", "exec", hosts.name(0), sys.executable, "-c", code], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    try:
        in_h0("import time, s3fs\nfor _ in range(200):\n    try:\n        s3fs.S3FileSystem().mkdir('bucket'); break\n"
              "    except OSError:\n        time.sleep(0.1)")
        yield env, in_h0
    finally:
        server.kill()
        server.wait()


def test_hosts_read_their_data_from_object_storage_across_the_link(hosts, s3_on_h0, tmp_path):
    # Parquet in S3 on h0; every process (h1's across the link) reads it directly
    env, in_h0 = s3_on_h0
    local = tmp_path / "d.parquet"
    make_data(local, rows=6000, features=8, chunk_rows=500, seed=3)
    in_h0(f"import s3fs; s3fs.S3FileSystem().put({str(local)!r}, 'bucket/d.parquet')")
    alone = subprocess.run([str(BIN), *_args(local, tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    r = subprocess.run(hosts.command([1, 1], _args("s3://bucket/d.parquet", tmp_path / "hosts")), capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    (got, meta), (ref, ref_meta) = _final(tmp_path / "hosts"), _final(tmp_path / "one")
    assert _step(meta) == _step(ref_meta) == 160
    _assert_close(got, ref, rtol=1e-12)


def test_hosts_without_a_shared_disk_keep_checkpoints_in_object_storage_and_resume_from_it(hosts, data, s3_on_h0,
                                                                                            tmp_path):
    # S3 (moto's server) on h0's end of the link; each host reads its own copy of the data; rank 0
    # uploads each checkpoint, then its manifest. h1 is lost mid-run; h0 alone resumes from S3.
    import threading

    import numpy as np

    env, in_h0 = s3_on_h0
    for i in range(hosts.n):
        shutil.copy(data, hosts.own_disk(i) / "d.h5")
    newest = ("import sys, numpy as np; from streamtrain.io.resolve import resolve_checkpoint;"
              "from streamtrain.train.schema import TRAINER;"
              "_, a, m = resolve_checkpoint('s3://bucket/run', TRAINER); np.savez(sys.argv[1], **a);"
              "print(m['state']['global_step'])")
    args = [a for a in _args(hosts.disk / "d.h5", "s3://bucket/run", "--epochs", "6", "--batch-size", "10",
                             "--optimizer", "adam", "--checkpoint-every", "200", "--keep", "2", "--resume")
            if a != "--quiet"]
    alone = subprocess.run([str(BIN), *_args(data, tmp_path / "one", "--epochs", "6", "--batch-size", "10",
                                             "--optimizer", "adam")], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    proc = subprocess.Popen(hosts.command([1, 1], args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(line.startswith("epoch 1/") for line in said) and time.monotonic() < deadline:
        time.sleep(0.05)  # rank 0 says an epoch once its checkpoints (every 200 steps, 480 an epoch) are on the way
    assert proc.poll() is None, "the job ended before h1 could be lost"
    for pid in hosts.pids(1):
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=30)
    assert proc.returncode != 0
    stopped = int(in_h0(newest.replace("sys.argv[1]", repr(str(tmp_path / "stopped.npz")))))
    ref, ref_meta = _final(tmp_path / "one")
    # At least the first checkpoint (step 200) is in S3 when h1 is lost: the upload of the one at
    # step 400 may still be on its way when rank 0 says its epoch (seen on a loaded machine).
    assert 200 <= stopped < _step(ref_meta), "".join(said)[-2000:]
    r = subprocess.run(["ip", "netns", "exec", hosts.name(0), "unshare", "--mount", "sh", "-c",
                        f"mount --bind {hosts.own_disk(0)} {hosts.disk} && exec {BIN} " + " ".join(args)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from s3://bucket/run/ckpt-{stopped:012d}.npz" in r.stderr
    assert int(in_h0(newest.replace("sys.argv[1]", repr(str(tmp_path / "final.npz"))))) == _step(ref_meta)
    got = dict(np.load(tmp_path / "final.npz"))
    _assert_close(got, ref, rtol=1e-10)
    assert not list(hosts.own_disk(0).rglob("manifest-*")) and not (hosts.own_disk(0) / "s3:").exists()


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables' nft is not installed (scripts/test.sh installs "
                    "it as root): the lossy link cannot be made")
def test_a_slow_lossy_link_changes_nothing_but_the_time(hosts, data, tmp_path):
    # 1% of the packets onto every link dropped at random, 50 Mbit/s out of each host: TCP
    # retransmits, and the run across the hosts is still the run of one process
    args = ["--shuffle", "global", "--optimizer", "adam"]
    alone = subprocess.run([str(BIN), *_args(data, tmp_path / "one", *args)], capture_output=True, text=True,
                           timeout=300)
    assert alone.returncode == 0, alone.stderr
    try:
        hosts.impair(rate_mbit=50, loss_percent=1)
    except subprocess.CalledProcessError as e:  # (a kernel without htb or nf_tables)
        hosts.restore()
        pytest.skip(f"the links cannot be made slow and lossy here: {' '.join(e.cmd[3:6])}: {e.stderr.strip()}")
    try:
        r = subprocess.run(hosts.command([1, 2], _args(data, tmp_path / "hosts", *args)), capture_output=True,
                           text=True, timeout=600)
        dropped = hosts.dropped()
    finally:
        hosts.restore()
    assert r.returncode == 0, r.stderr[-2000:]
    assert dropped > 0  # (the links did lose packets)
    (got, meta), (ref, ref_meta) = _final(tmp_path / "hosts"), _final(tmp_path / "one")
    assert _step(meta) == _step(ref_meta) == 160
    _assert_close(got, ref, rtol=1e-12)
