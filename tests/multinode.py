"""A real multi-node Ray cluster on one machine: a head raylet plus worker raylets, each its own ``ray start``.

Every node is a separate ``ray start --block`` process (its own raylet, object store, ports picked free
and temporary directory) in its own process group, all under one short temporary directory that no other
Ray cluster on the machine uses (so ``ray.init()`` elsewhere never finds this cluster). The dashboard of
the head serves the Jobs API (``ray job submit --address http://127.0.0.1:<port>``).

The processes inherit this process's environment, as a raylet started by ``ray start`` on a real machine
inherits its shell's: set ``AWS_ENDPOINT_URL`` and the credentials before :meth:`MultiNodeCluster.start`
and every Ray worker on every node sees them.

Used by the ``multinode_cluster`` fixture (tests/conftest.py) and ``benchmarks/bench_cluster.py``::

    with MultiNodeCluster(worker_cpus=(1, 1)) as cluster:
        subprocess.run(["ray", "job", "submit", "--address", cluster.dashboard_url, "--", "python", "x.py"])
        cluster.stop_node(cluster.workers[0])
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "MultiNodeCluster",
    "NodeProcess",
    "driver_connected_to",
    "free_port",
    "start_local_test_ray",
]

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 90.0
OBJECT_STORE_BYTES = 256 * 2**20  # per node: the tests move little data, and /dev/shm is shared by all nodes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node_ports() -> list[str]:
    """The per-node ports ``ray start`` would otherwise take from fixed defaults (clashing between nodes)."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--node-manager-port={free_port()}",
    ]


@dataclass
class NodeProcess:
    """One ``ray start --block`` process (a node); ``label`` is the custom resource naming it."""

    label: str
    num_cpus: float
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class MultiNodeCluster:
    """A 0-CPU head plus one worker node per entry of ``worker_cpus`` (CPUs of each), on 127.0.0.1.

    Each worker node carries a custom resource ``node:<label>`` -style marker ``{label: 1}`` (``w0``,
    ``w1``, ...), so tests can tell the nodes apart in ``ray.nodes()``.
    """

    worker_cpus: tuple[float, ...] = (1, 1)
    head_cpus: float = 0
    env: dict[str, str] = field(default_factory=dict)
    workers: list[NodeProcess] = field(default_factory=list)
    head: NodeProcess | None = None
    gcs_address: str = ""
    dashboard_url: str = ""
    temp_dir: Path | None = None
    autoscaling_config: dict[str, object] | None = None  # the head runs an autoscaler: tests/fake_autoscaler.py

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **self.env)
        # Ray's own actors that look the cluster up without an address (Train's PlacementGroupCleaner, via the
        # State API) refuse to guess when other Ray clusters run on this machine ("Found multiple active Ray
        # instances"); without the cleaner, a Train run killed by Tune (ASHA) leaks its placement group.
        env["RAY_ADDRESS"] = self.gcs_address
        # `python` in a job's entrypoint is this interpreter, as on a node whose venv is on PATH
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _spawn(self, label: str, num_cpus: float, args: list[str]) -> NodeProcess:
        assert self.temp_dir is not None
        log_path = self.temp_dir / f"{label}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    "--disable-usage-stats",
                    f"--num-cpus={int(num_cpus)}",
                    f"--object-store-memory={OBJECT_STORE_BYTES}",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,  # its own process group: stop_node() ends exactly this node
            )
        return NodeProcess(label, num_cpus, proc, log_path)

    def start(self) -> MultiNodeCluster:
        """Start the head and the worker nodes; returns once every node is alive in the GCS."""
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rvcmn-", dir="/tmp"))
        gcs_port, dashboard_port = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        autoscaling: list[str] = []
        if self.autoscaling_config is not None:
            config_path = self.temp_dir / "autoscaling.json"
            provider = {**self.autoscaling_config["provider"], "gcs_address": self.gcs_address}  # type: ignore[dict-item]
            config_path.write_text(json.dumps({**self.autoscaling_config, "provider": provider}))
            autoscaling = [f"--autoscaling-config={config_path}"]
            # the head's monitor imports the provider from tests/fake_autoscaler.py: the repository must be on
            # its path, whether or not this process got it from PYTHONPATH (`python -m pytest` puts it on
            # sys.path only)
            repo = str(Path(__file__).resolve().parents[1])
            python_path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
            self.env = {
                **self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PYTHONPATH": python_path
            }
        self.head = self._spawn(
            "head",
            self.head_cpus,
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.temp_dir}",
                # tune_driver slots as the shipped cluster.yaml's head has: Tune trial drivers hold no worker CPU
                "--resources=" + json.dumps({"head": 1, "tune_driver": 8}),
                *_node_ports(),
                *autoscaling,
            ],
        )
        self._wait_for_dashboard()
        self.wait_for_nodes(1)
        for index, cpus in enumerate(self.worker_cpus):  # one at a time: raylets starting together time out
            self.add_worker(cpus, label=f"w{index}")
        return self

    def add_worker(self, num_cpus: float, *, label: str, wait: bool = True) -> NodeProcess:
        """Start one more worker node with ``num_cpus`` CPUs and the custom resource ``{label: 1}``."""
        node = self._spawn(
            label,
            num_cpus,
            [
                f"--address={self.gcs_address}",
                "--node-ip-address=127.0.0.1",
                # its own temporary directory, as a separate machine has: nodes sharing one would share (and
                # delete under each other) the unpacked job working directories
                f"--temp-dir={self.temp_dir / label}",
                "--resources=" + json.dumps({label: 1}),
                *_node_ports(),
            ],
        )
        self.workers.append(node)
        if wait:
            self.wait_for_nodes(1 + sum(1 for w in self.workers if w.alive))
        return node

    def _wait_for_dashboard(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2).close()
                return
            except OSError:
                assert self.head is not None
                if not self.head.alive or time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head did not start; see {self.head.log_path}") from None
                time.sleep(0.5)

    def alive_nodes(self) -> list[dict[str, object]]:
        """The alive nodes as the GCS lists them (``ray list nodes`` JSON rows)."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/nodes?limit=100", timeout=10) as reply:
            rows = json.loads(reply.read())["data"]["result"]["result"]
        return [r for r in rows if r.get("state") == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until exactly ``count`` nodes are alive."""
        deadline = time.monotonic() + timeout_s
        alive: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            try:
                alive = self.alive_nodes()
            except OSError:
                alive = []
            if len(alive) == count:
                return
            failed = [
                n for n in [self.head, *self.workers] if n is not None and n.proc.returncode not in (None, -9, -15)
            ]
            if failed:
                raise RuntimeError(
                    f"a Ray node exited with status {failed[0].proc.returncode}; see {failed[0].log_path}"
                )
            time.sleep(0.5)
        raise RuntimeError(f"{len(alive)} Ray nodes alive after {timeout_s:.0f} s, expected {count}")

    def stop_node(self, node: NodeProcess, *, graceful: bool = False) -> None:
        """End one node's processes (its process group), as a machine going away would."""
        if node.alive:
            os.killpg(node.proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            node.proc.wait(timeout=30)

    def shutdown(self) -> None:
        """Stop every node (workers first) and remove the temporary directory."""
        for node in [*self.workers, self.head]:
            if node is not None and node.alive:
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for node in [*self.workers, self.head]:
            if node is None:
                continue
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=10)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> MultiNodeCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


def start_local_test_ray() -> None:
    """The suite's one-node local Ray (the ``ray_cluster`` fixture): 4 logical CPUs, ``tune_driver`` slots,
    dashboard on (Train V2 needs the State API to clean up placement groups)."""
    import ray

    ray.init(
        num_cpus=4,
        resources={"tune_driver": 4},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        object_store_memory=512 * 1024**2,
        logging_config=ray.LoggingConfig(log_level="WARNING"),
    )


@contextlib.contextmanager
def driver_connected_to(cluster: MultiNodeCluster) -> Iterator[None]:
    """This test process as a driver of ``cluster``; the suite's local Ray, if it was running, is stopped
    for the duration and started again afterwards (a process is the driver of one cluster at a time)."""
    import ray

    had_local = ray.is_initialized()
    if had_local:
        ray.shutdown()
    ray.init(address=cluster.gcs_address, logging_config=ray.LoggingConfig(log_level="WARNING"))
    try:
        yield
    finally:
        ray.shutdown()
        if had_local:
            start_local_test_ray()
