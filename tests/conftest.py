"""Shared fixtures: the tiny config, deterministic seeding, one Ray cluster per test session."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from rvc_ray.config import RunConfig, load_run_config
from tests.object_store import running_moto_server

if TYPE_CHECKING:
    from tests.multinode import MultiNodeCluster

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed python, numpy and torch before every test (torch only if already imported)."""
    random.seed(1234)
    np.random.seed(1234)
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(1234)


@pytest.fixture
def tiny_cfg() -> RunConfig:
    """The tiny CPU preset used by tests and the demo."""
    return load_run_config("tiny_cpu")


@pytest.fixture(scope="session")
def demo_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo corpus (2 speakers x 20 s), generated once per session."""
    from rvc_ray.demo_corpus import generate_demo_corpus

    out = tmp_path_factory.mktemp("demo_corpus")
    generate_demo_corpus(out, num_speakers=2, seconds_per_speaker=20.0, seed=0)
    return out


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the whole session: 4 logical CPUs, a tune_driver resource, dashboard on.

    Logical CPUs exceed the 2 cores on purpose (Ray Data + 2 Train workers must fit at once); the
    dashboard stays on because Train V2 needs the State API to clean up placement groups.
    """
    import ray

    from tests.multinode import start_local_test_ray

    if ray.is_initialized():
        yield
        return
    start_local_test_ray()
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 for the session; yields its endpoint.

    The standard AWS variables are set for this process (and so for Ray workers it starts), the way a
    user points rvc-ray at a store: ``AWS_ENDPOINT_URL`` plus credentials, no config key.
    """
    with running_moto_server() as endpoint:
        saved = {k: os.environ.get(k) for k in _AWS_VARS}
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        try:
            yield endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A new empty bucket on the session's S3 server; yields ``s3://<bucket>``."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite store, local artefact store) on 127.0.0.1; yields its URI."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, 9)
                raise RuntimeError(
                    f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                ) from None
            time.sleep(0.5)
    try:
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def multinode_cluster(s3_server: str) -> Iterator[MultiNodeCluster]:
    """A real multi-node Ray cluster on this machine for the session: a 0-CPU head and two 1-CPU worker nodes.

    Each node is its own ``ray start`` raylet (tests/multinode.py); they inherit the S3 server's ``AWS_*``
    variables. Connect with ``ray.init(address=cluster.gcs_address)`` or submit jobs to
    ``cluster.dashboard_url``. A test may add nodes (``add_worker``) or stop them (``stop_node``); it must
    leave exactly two alive 1-CPU workers behind (e.g. add a spare before stopping one).
    """
    from tests.multinode import MultiNodeCluster

    cluster = MultiNodeCluster(worker_cpus=(1, 1)).start()
    try:
        yield cluster
    finally:
        cluster.shutdown()
