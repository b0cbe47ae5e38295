"""moto's S3 server on 127.0.0.1, the object store the tests (and benchmarks/bench_cluster.py) talk to."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def running_moto_server(**env: str) -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port (``env``: extra variables for it); yields its endpoint.

    ``INITIAL_NO_AUTH_ACTION_COUNT="0"`` makes it check credentials against its own IAM, so unknown keys
    are refused as a real store refuses them.
    """
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError as exc:
            if getattr(exc, "code", None) is not None:  # an HTTP error answer: the server is up
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.2)
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
