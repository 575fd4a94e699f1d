"""Sweeps on real cluster engines started on this machine (issue 14, item 9): a Ray cluster of a head and a worker
node, and a one-node SLURM cluster (munged, slurmctld, slurmd), each running `python -m framework -m` through its
Hydra launcher. Every daemon runs in a private network namespace that holds only the loopback interface, so no
other machine can reach it, its ports cannot collide with anyone else's, and stopping the cluster means killing
every process of that namespace (all of them ours); Ray is also checked to listen on 127.0.0.1 alone. The tests
skip, saying why, when an engine is not installed; `.ci/run` installs both."""
from __future__ import annotations

import json
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = pytest.mark.slow

# One stage of 4 one-epoch trials of the notes' search preset: the launcher is the only thing that varies.
# stop_hopeless off: a coarse trial that draws a too-high lr would end stopped_hopeless, and this test is about
# where the trials run, not what they learn
SWEEP = ["-m", "framework", "-m", "+search=coarse_to_fine", "hydra.sweeper.stages=[{n_trials:4}]", "epochs=1",
         "stop_hopeless.loss_multiple=0"]


class Namespace:
    """A network namespace with only `lo` (up), kept alive by a sleeping holder process. Commands started through
    it run inside; `close` stops them: SIGTERM to each started process group, then SIGKILL to anything left in
    the namespace."""

    def __init__(self, root: pathlib.Path, setup: str = ""):
        self.root = root
        script = f"ip link set lo up && {setup + ' && ' if setup else ''}echo ready && exec sleep infinity"
        self.holder = subprocess.Popen(["unshare", "--net", "sh", "-c", script], start_new_session=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started: list[subprocess.Popen] = []
        if self.holder.stdout.readline().strip() != "ready":  # EOF: unshare or the setup failed
            reason = self.holder.stderr.read().strip()
            self.close()
            pytest.skip(f"cannot create a private network namespace (unshare --net needs root): {reason}")

    @staticmethod
    def _ns_id(pid: int) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            return None

    def command(self, args) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", *map(str, args)]

    def run(self, args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(args), capture_output=True, text=True, timeout=timeout, **kw)

    def start(self, name: str, args, **kw) -> subprocess.Popen:
        """A daemon in the foreground, in its own process group, logging to <root>/<name>.out."""
        log = open(self.root / f"{name}.out", "w")
        proc = subprocess.Popen(self.command(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        log.close()
        self.started.append(proc)
        return proc

    def listening(self) -> list[str]:
        """host:port of every listening TCP socket in the namespace (IPv4-mapped IPv6 shown as IPv4)."""
        out = self.run(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout
        found = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A" or ":" not in fields[1]:  # 0A = LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            raw = bytes.fromhex(hexaddr)
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints 32-bit host order
            if len(words) == 16 and words[:12] == bytes(10) + b"\xff\xff":
                words = words[12:]
            host = socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)
            found.append(f"{host}:{int(hexport, 16)}")
        return found

    def close(self) -> None:
        ns = self._ns_id(self.holder.pid)
        for proc in self.started:
            if proc.poll() is None:  # not reaped yet, so its group id is still ours
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5  # `ray start --block` takes long to stop politely; the rest is SIGKILL
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if ns is not None and ns != self._ns_id(os.getpid()):  # never sweep our own namespace
            for _ in range(3):
                pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and self._ns_id(int(p)) == ns]
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)
        for proc in (*self.started, self.holder):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")


def _wait(predicate, what: str, timeout: float, logs: pathlib.Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(logs.glob("*.out")))
    raise AssertionError(f"{what} not ready after {timeout:.0f} s\n{tails}")


def _only_loopback(addresses: list[str]) -> bool:
    return bool(addresses) and all(a.rsplit(":", 1)[0] == "127.0.0.1" for a in addresses)


def _assert_trials_ok(sweep: pathlib.Path, result: subprocess.CompletedProcess) -> None:
    text = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, text
    trials = sorted(sweep.glob("*/summary.json"))
    assert len(trials) == 4, text
    for trial in trials:
        summary = json.loads(trial.read_text())
        assert summary["status"] == "ok" and summary["epochs_completed"] == 1, summary
    search = json.loads((sweep / "search_summary.json").read_text())
    assert len(search["trials"]) == 4 and all(t["status"] == "ok" for t in search["trials"])


# --- Ray: a head and a worker node on 127.0.0.1 --------------------------------------------------------------------

RAY_PORT = 6379  # inside the private namespace, so the default cannot collide


def _ray_alive_nodes(ns: Namespace) -> int:
    code = ("import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % RAY_PORT)
    result = ns.run([sys.executable, "-c", code], timeout=90)
    lines = result.stdout.split()
    return int(lines[-1]) if result.returncode == 0 and lines and lines[-1].isdigit() else 0


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher not installed "
                        "(pip install -e '.[ray]')")
    ray_cli = pathlib.Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip("the ray command is not installed next to this Python")
    _needs("unshare", "nsenter", "ip")
    # Ray's unix sockets live under --temp-dir and must stay under 107 characters: a short folder.
    root = pathlib.Path(tempfile.mkdtemp(prefix="fwray-"))
    ns = Namespace(root)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={root / 'ray'}"]
    try:
        ns.start("head", [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={RAY_PORT}",
                          "--include-dashboard=true", "--dashboard-host=127.0.0.1", *common], env=env, cwd=root)
        _wait(lambda: f"127.0.0.1:{RAY_PORT}" in ns.listening(), "Ray head", 120, root)
        # The worker node's dashboard agent needs a port of its own (the head took the default 52365).
        ns.start("worker", [ray_cli, "start", f"--address=127.0.0.1:{RAY_PORT}", "--dashboard-agent-listen-port=52366",
                            *common], env=env, cwd=root)
        _wait(lambda: _ray_alive_nodes(ns) == 2, "Ray worker node", 180, root)
        yield ns, env
    finally:
        ns.close()
        shutil.rmtree(root, ignore_errors=True)


def test_ray_cluster_runs_a_sweep_on_both_nodes(ray_cluster, tmp_path):
    ns, env = ray_cluster
    assert _only_loopback(ns.listening()), ns.listening()
    launch = tmp_path / "launch"
    launch.mkdir()
    # Ray workers run in the folder `ray start` ran in: the sweep folder must be absolute (a shared file system).
    sweep = tmp_path / "sweep"
    result = ns.run([sys.executable, *SWEEP, "hydra/launcher=ray", f"hydra.launcher.ray.init.address=127.0.0.1:{RAY_PORT}",
                     "+hydra.launcher.ray.init.object_store_memory=null", "+hydra.launcher.ray.remote.num_cpus=1",
                     f"hydra.sweep.dir={sweep}"], cwd=launch, env=env, timeout=900)
    _assert_trials_ok(sweep, result)
    assert not (launch / "outputs").exists() or not list((launch / "outputs").rglob("summary.json"))

    # One CPU per node and one per trial: the 4 trials ran on both nodes. Ray's state API names each task's node.
    code = ("import ray; from ray.util.state import list_tasks; ray.init(address='127.0.0.1:%d', logging_level="
            "'ERROR'); print(len({t.node_id for t in list_tasks(filters=[('name', '=', '_run_job')], detail=True)}))"
            % RAY_PORT)
    nodes = ns.run([sys.executable, "-c", code], env=env, timeout=120)
    assert nodes.returncode == 0 and nodes.stdout.split()[-1] == "2", nodes.stdout + nodes.stderr
    # Workers, the driver's leftovers and the daemons: still nothing but 127.0.0.1.
    assert _only_loopback(ns.listening()), ns.listening()


# --- SLURM: munged, slurmctld and slurmd on 127.0.0.1 -------------------------------------------------------------

SLURM_CONF = """\
# A one-node cluster for tests: everything under {root}, talking over 127.0.0.1.
ClusterName=fwtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=tiny Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher not installed "
                        "(pip install -e '.[launchers]')")
    _needs("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "unshare", "nsenter", "ip")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs")
    root = pathlib.Path(tempfile.mkdtemp(prefix="fwslurm-"))
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(root=root, host=host, user=pwd.getpwuid(os.geteuid()).pw_name))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # SLURM resolves its listening address with AI_ADDRCONFIG, which finds nothing on a loopback-only host: give
    # `lo` one more address (198.18.0.0/15 is reserved for network tests), still private to the namespace.
    ns = Namespace(root, setup="ip addr add 198.18.0.1/32 dev lo")
    try:
        ns.start("munged", ["munged", "--foreground", "--force", f"--socket={root}/munge.socket", f"--key-file={key}",
                            f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid",
                            f"--seed-file={root}/munged.seed"], env=env)
        _wait(lambda: (root / "munge.socket").exists(), "munged", 30, root)
        ns.start("slurmctld", ["slurmctld", "-D", "-f", conf], env=env)
        ns.start("slurmd", ["slurmd", "-D", "-f", conf, "-N", host], env=env)
        _wait(lambda: ns.run(["sinfo", "-h", "-o", "%t"], env=env, timeout=30).stdout.strip() == "idle", "SLURM node",
              120, root)
        yield ns, env
    finally:
        ns.close()
        shutil.rmtree(root, ignore_errors=True)


def test_slurm_cluster_runs_a_sweep(slurm_cluster, tmp_path):
    ns, env = slurm_cluster
    sweep = tmp_path / "sweep"
    result = ns.run([sys.executable, *SWEEP, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=tiny",
                     "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"],
                    cwd=tmp_path, env=env, timeout=900)
    _assert_trials_ok(sweep, result)
    # Each trial ran as a SLURM job: submitit kept its job folder and logs under the sweep.
    job_logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 4, sorted(p.name for p in (sweep / ".submitit").rglob("*"))
