"""A real multi-node Ray cluster on one machine, over loopback, for tests: start it, kill one node, tear it down.

Why not ``ray.cluster_utils.Cluster``: it starts the nodes from the test process itself, so the nodes share the
test's process tree and cannot be killed the way a machine dies. Here every node is a separate ``ray start``
(the same command an operator runs), with

* its **own address**: workers at 127.0.0.2, 127.0.0.3, ... (all of 127.0.0.0/8 is loopback on Linux), the head
  at the machine's address (Ray 2.60 turns 127.0.0.1 into it). Tune's own per-result ``node_ip`` then tells
  which node a trial ran on, as on a real cluster;
* its **own --temp-dir** (a short path: Ray's unix sockets must stay under 107 characters);
* its **own ports** (free ones, chosen here), so the cluster does not clash with another Ray on the machine
  (a local ``ray.init`` of other tests, or of other people), which would otherwise share the default GCS port,
  the dashboard port 8265 and the dashboard-agent port 52365;
* the **same token-auth mode** as every driver we start: ``RAY_AUTH_MODE=token`` with a token file of this
  cluster (``RAY_AUTH_TOKEN_PATH``). Ray 2.60 turns token auth on by itself in ``ray start --head`` when
  ``~/.ray/auth_token`` exists, and a local ``ray.init`` in the test process sets ``RAY_AUTH_MODE=token`` in
  ``os.environ``; fixing the mode and the token for every process makes the cluster independent of both.

Which processes belong to which node: every ``ray start`` runs in a new session, and everything it leaves behind
(raylet, dashboard and runtime-env agents, log monitor, and the worker processes the raylet spawns, which move to
a process group of their own but keep the session) carries that session id. Killing a process group would miss
the workers, and the environment is no tag either: Ray's agents and workers overwrite their environ block with
their process title. "Killing a node" SIGKILLs every process of its session at once, as when a machine loses
power: the raylet gets no chance to tell the GCS, which must notice by its health checks. Drivers and probes
started with ``LoopbackCluster.env()`` carry an environment tag (they keep their environ), so ``shutdown()``
finds those too.

``ray stop`` is never used: it kills every Ray process of the user on the machine, other clusters' included.

Linux only (``/proc``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sweeps.compat import LOCAL_START_TIMEOUT, ray_client_missing
from sweeps.testing import HANG_GUARD_S

CLUSTER_TAG = "OUVAE_LOOPBACK_CLUSTER"
NODE_TAG = "OUVAE_LOOPBACK_NODE"
RAY_CLI = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = HANG_GUARD_S  # one `ray start`: ~6 s on an idle 2-core machine, over 90 s at load 15
# How fast the GCS declares a silent node dead: period x threshold (Ray's defaults: 3 s x 5). Shorter here so a
# killed node's trials are retried within seconds; set on every node, read by the GCS (head) and raylets.
HEALTH_CHECK_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}


class ClusterError(RuntimeError):
    """The loopback cluster could not be started or stopped; the message includes the relevant log tail."""


class NodeStartTimedOut(ClusterError):
    """`ray start` gave up on its own node: Ray's fixed 30 s for the raylet to register, missed on a loaded
    machine (sweeps/compat.py: start_local_ray). Started once more, as an operator would run `ray start` again."""


def free_port() -> int:
    """A TCP port free right now on every interface (Ray binds its servers on 0.0.0.0)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ----- finding and killing a node's processes -------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[3])  # after the command name: state, ppid, pgrp, session


def _live_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]


def session_pids(sids: set[int]) -> list[int]:
    """Live (non-zombie) processes whose session id is in `sids`."""
    out = []
    for pid in _live_pids():
        st = _stat(pid)
        if st and st[0] != "Z" and st[1] in sids:
            out.append(pid)
    return out


def tagged_pids(key: str, value: str) -> list[int]:
    """Live (non-zombie) processes of this user whose environment has key=value. Only for processes that keep
    their command line: Ray's agents and workers overwrite argv *and* the environ block with their process title
    (``ray::IDLE``), so /proc/<pid>/environ of those loses the tag -- they are found by session instead."""
    needle = f"{key}={value}".encode()
    out = []
    for pid in _live_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        st = _stat(pid)
        if needle in env.split(b"\0") and st and st[0] != "Z":
            out.append(pid)
    return out


def kill_all(find, what: str, timeout_s: float = 20.0) -> list[int]:
    """SIGKILL every process `find()` returns, repeatedly (a raylet may spawn a worker while we kill), until it
    returns none. Returns the pids killed; raises ClusterError if some survive `timeout_s`."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        pids = find()
        if not pids:
            return killed
        if time.monotonic() > deadline:
            raise ClusterError(f"processes of {what} survived SIGKILL for {timeout_s} s: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


# ----- the cluster ----------------------------------------------------------------------------------------------
@dataclass
class Node:
    name: str
    ip: str
    temp_dir: Path
    num_cpus: int
    head: bool = False
    alive: bool = True
    sid: int = 0  # session id of every process of this node (see LoopbackCluster._launch)

    def tail(self, n: int = 30) -> str:
        log = self.temp_dir.parent / f"{self.name}.start.log"  # LoopbackCluster._log
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return "\n".join(lines[-n:])


@dataclass
class LoopbackCluster:
    """Head (``head_cpus`` CPUs, default 0: it runs no trials, like the AWS layout) plus worker nodes of
    ``worker_cpus`` CPUs each, all on this machine. Use as a context manager or call ``shutdown()``."""

    head_cpus: int = 0
    worker_cpus: int = 1
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ouvae-mn-", dir="/tmp")))
    nodes: list[Node] = field(default_factory=list)
    port: int = 0
    client_port: int = 0  # Ray Client's server on the head (0: ray[client] is not installed)
    _next_ip: int = 2

    def __post_init__(self) -> None:
        self.token_path = self.base / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.tag = str(self.base)

    # ----- environment --------------------------------------------------------------------------------------
    def env(self, node: str = "driver", **extra: str) -> dict[str, str]:
        """Environment for any process that talks to this cluster: the cluster's auth token and mode, no
        inherited RAY_ADDRESS (the test process may hold a local Ray), and the tags used to find and kill it."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0",
                   PYTHONUNBUFFERED="1", **HEALTH_CHECK_ENV)
        env[CLUSTER_TAG] = self.tag
        env[NODE_TAG] = node
        env.update(extra)
        return env

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ----- start ----------------------------------------------------------------------------------------------
    def _launch(self, node: Node, args: list[str]) -> subprocess.Popen:
        node.temp_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [RAY_CLI, "start", f"--num-cpus={node.num_cpus}", "--num-gpus=0", f"--temp-dir={node.temp_dir}",
               f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", "--log-style=record", *args]
        if node.ip:
            cmd.append(f"--node-ip-address={node.ip}")
        with open(self._log(node), "w") as out:
            # A new session per node: `ray start` becomes a session leader, and every process it leaves behind
            # (raylet, agents, log monitor, and the workers the raylet spawns, which change only their process
            # group) keeps that session id. That is how kill_node() finds all of them and nothing else. It also
            # keeps the test's terminal signals (Ctrl-C in pytest) away from the nodes.
            proc = subprocess.Popen(cmd, env=self.env(node.name), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node.sid, node.alive = proc.pid, True
        self.nodes.append(node)  # registered now, so shutdown() finds its processes even if the start fails
        return proc

    def _log(self, node: Node) -> Path:
        return node.temp_dir.parent / f"{node.name}.start.log"

    def _finish(self, node: Node, proc: subprocess.Popen, deadline: float) -> None:
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._kill_node_processes(node)  # `ray start` waits forever on an unreachable GCS
            raise ClusterError(f"`ray start` of {node.name} took more than {START_TIMEOUT_S} s:\n"
                               f"{node.tail()}") from None
        if code != 0:
            self._kill_node_processes(node)
            error = NodeStartTimedOut if LOCAL_START_TIMEOUT in node.tail() else ClusterError
            raise error(f"`ray start` of {node.name} failed (exit {code}):\n{node.tail()}")

    def start_head(self, attempts: int = 2) -> Node:
        """The head: GCS, its raylet (``head_cpus`` CPUs), no dashboard. Its node address is the machine's own
        (Ray 2.60 replaces 127.0.0.1 by it), so workers at 127.0.0.x are told apart from it. A start that timed
        out inside Ray is made again on fresh ports (`attempts` in all)."""
        self.port = free_port()
        head = Node("head", "", self.base / "head", self.head_cpus, head=True)
        proc = self._launch(head, ["--head", f"--port={self.port}", "--include-dashboard=false",
                                   f"--dashboard-port={free_port()}", *self._client_server_args()])
        try:
            self._finish(head, proc, time.monotonic() + START_TIMEOUT_S)
        except NodeStartTimedOut:
            if attempts <= 1:
                raise
            self.nodes.remove(head)
            return self.start_head(attempts - 1)
        return head

    def _client_server_args(self) -> list[str]:
        """With ray[client] installed, `ray start --head` binds Ray Client's server on 10001 unless told
        otherwise; a free port avoids clashing with another head on the machine."""
        if ray_client_missing():
            return []
        self.client_port = free_port()
        return [f"--ray-client-server-port={self.client_port}"]

    @property
    def client_address(self) -> str:
        """The ray:// address of the head's Ray Client server."""
        if not self.client_port:
            raise ClusterError("Ray Client is not installed here (pip install 'ray[client]')")
        return f"ray://127.0.0.1:{self.client_port}"

    def add_workers(self, n: int = 1) -> list[Node]:
        """`n` more worker nodes, started in parallel, each at the next loopback address (a restarted node gets a
        new one, so its rows are never confused with those of the node it replaces)."""
        if not self.port:
            raise ClusterError("start_head() first")
        new = []
        for _ in range(n):
            last = self._next_ip
            self._next_ip += 1
            new.append(Node(f"worker-{last}", f"127.0.0.{last}", self.base / f"w{last}", self.worker_cpus))
        procs = [self._launch(node, [f"--address={self.address}"]) for node in new]
        deadline = time.monotonic() + START_TIMEOUT_S
        for node, proc in zip(new, procs):
            try:
                self._finish(node, proc, deadline)
            except NodeStartTimedOut:  # once more (the head's docstring)
                self.nodes.remove(node)
                self._finish(node, self._launch(node, [f"--address={self.address}"]),
                             time.monotonic() + START_TIMEOUT_S)
        return new

    def start(self, n_workers: int = 2) -> "LoopbackCluster":
        self.start_head()
        self.add_workers(n_workers)
        self.wait_for_cpus(self.head_cpus + n_workers * self.worker_cpus)
        return self

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.head and n.alive]

    def ensure_workers(self, n: int) -> None:
        """Start workers until `n` are alive (e.g. after a test killed one)."""
        if len(self.workers) < n:
            self.add_workers(n - len(self.workers))
        self.wait_for_cpus(self.head_cpus + len(self.workers) * self.worker_cpus)

    def wait_for_cpus(self, cpus: float, timeout_s: float = 60.0) -> dict:
        """Block until the GCS reports exactly `cpus` CPUs on alive nodes (all workers registered, killed ones
        declared dead). Runs a tiny driver in a subprocess: the test process keeps no Ray state."""
        code = (
            "import json, sys, time, ray\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
            f"deadline = time.monotonic() + {timeout_s}\n"
            "while True:\n"
            "    nodes = [n for n in ray.nodes() if n['Alive']]\n"
            "    cpus = sum(n['Resources'].get('CPU', 0) for n in nodes)\n"
            f"    if cpus == {cpus} or time.monotonic() > deadline:\n"
            "        print(json.dumps({'cpus': cpus, 'ips': sorted(n['NodeManagerAddress'] for n in nodes)}))\n"
            f"        sys.exit(0 if cpus == {cpus} else 1)\n"
            "    time.sleep(0.5)\n")
        try:
            proc = subprocess.run([sys.executable, "-c", code], env=self.env("probe"), capture_output=True, text=True,
                                  timeout=timeout_s + 30, start_new_session=True)
        except subprocess.TimeoutExpired:
            kill_all(lambda: tagged_pids(NODE_TAG, "probe"), "the cluster probe")
            raise ClusterError(f"could not query the cluster at {self.address} within {timeout_s + 30} s") from None
        if proc.returncode != 0:
            raise ClusterError(f"the cluster did not reach {cpus} CPUs in {timeout_s} s: {proc.stdout.strip()} "
                               f"{proc.stderr[-2000:]}")
        import json

        return json.loads(proc.stdout.strip().splitlines()[-1])

    # ----- failure and teardown -------------------------------------------------------------------------------
    def _kill_node_processes(self, node: Node) -> list[int]:
        pids = kill_all(lambda: session_pids({node.sid}), f"node {node.name}")
        node.alive = False
        return pids

    def kill_node(self, node: Node) -> list[int]:
        """The node's machine dies: SIGKILL its raylet, agents, log monitor and worker processes at once (the
        raylet gets no chance to tell the GCS, which must notice by its health checks)."""
        if node.head:
            raise ClusterError("kill_node() is for workers; the head takes the cluster with it (use shutdown())")
        return self._kill_node_processes(node)

    def pids(self) -> list[int]:
        """Every live process of this cluster: its nodes' sessions, plus anything started with env() (drivers,
        the probe) that is still running."""
        return sorted(set(session_pids({n.sid for n in self.nodes})) | set(tagged_pids(CLUSTER_TAG, self.tag)))

    def shutdown(self) -> None:
        """Kill every process of this cluster (and only of this cluster), check that none is left, delete the
        temp dirs. Safe to call twice."""
        kill_all(self.pids, f"the loopback cluster {self.base}")
        for n in self.nodes:
            n.alive = False
        left = subprocess.run(["pgrep", "-f", str(self.base)], capture_output=True, text=True).stdout.split()
        left = [p for p in left if (_stat(int(p)) or ("Z",))[0] != "Z"]
        if left:
            raise ClusterError(f"processes of the loopback cluster {self.base} are still running: {left}")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "LoopbackCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
