"""rvc-ray on a one-machine multi-node Ray cluster: what object storage and spreading over nodes cost.

Prints JSON lines, each a ratio measured side by side in one run:

1. ``demo_pipeline_s3_over_local``: the demo pipeline's wall time (the job's own ``done in`` figure:
   preprocess + extract + index + train, not the corpus generation or Ray start) submitted with
   ``experiment.work_dir=s3://...`` (moto's S3 server on 127.0.0.1) over the same job with a local work_dir,
   on a 0-CPU head + two 1-CPU worker raylets (target <= 1.15);
2. ``train_two_nodes_over_one_node``: training samples/s of 2 workers (1 CPU each) spread over two 1-CPU
   nodes over both on one 2-CPU node (target >= 0.95), from the ``samples_per_s`` of each run's epoch
   records (first epoch left out: it includes process start and the first all-reduce); both clusters run
   at once and the fits alternate, ``--repeats`` pairs, median of the pair ratios.

Every line carries the load average (other processes on the machine disturb timings).

    python benchmarks/bench_cluster.py [--demo-seconds 20] [--epochs 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean, median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.multinode import MultiNodeCluster  # noqa: E402  (the test suite's cluster helper)
from tests.object_store import running_moto_server  # noqa: E402  (and its S3 server)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _demo_wall(cluster: MultiNodeCluster, work_dir: str, demo_seconds: float, epochs: int) -> float:
    ray = str(Path(sys.executable).with_name("ray"))
    done = subprocess.run(
        [ray, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".", "--",
         "python", "jobs/train.py", "--set", f"experiment.work_dir={work_dir}", "--demo-seconds", str(demo_seconds),
         "--set", f"train.epochs={epochs}", "--set", f"train.save_every_epochs={epochs}"],
        cwd=REPO, capture_output=True, text=True, timeout=1800, env=cluster._environment(),
    )
    found = re.findall(r"\[rvc-ray\] done in ([0-9.]+) s", done.stdout + done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"demo job failed ({work_dir}):\n{done.stdout[-3000:]}\n{done.stderr[-1000:]}")
    return float(found[-1])


def _train_samples_per_s(cluster: MultiNodeCluster, features: str, root: str, epochs: int) -> float:
    import ray

    from rvc_ray.config import load_run_config
    from rvc_ray.train.launch import fit

    cfg = load_run_config(
        "tiny_cpu",
        [f"experiment.work_dir={root}", "experiment.name=bench", f"train.epochs={epochs}",
         f"train.save_every_epochs={epochs}", "train.num_preview_clips=0", "train.export_every_save=false",
         "scaling.num_workers=2", "scaling.cpus_per_worker=1", "train.batch_size=4"],
    )
    ray.init(address=cluster.gcs_address, logging_config=ray.LoggingConfig(log_level="ERROR"))
    try:
        fit(cfg, features)
    finally:
        ray.shutdown()
    lines = [json.loads(x) for x in Path(root, "bench", "train", "metrics.jsonl").read_text().splitlines()]
    rates = [x["samples_per_s"] for x in lines if x["kind"] == "epoch"][1:]
    return mean(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-seconds", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=2, help="demo training epochs")
    parser.add_argument("--train-epochs", type=int, default=5, help="epochs of the placement comparison")
    parser.add_argument("--repeats", type=int, default=2, help="alternating pairs of the placement comparison")
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args(argv)
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1",
                      RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0")
    s3 = contextlib.ExitStack()
    endpoint = s3.enter_context(running_moto_server())
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    import boto3

    boto3.client("s3").create_bucket(Bucket="rvc-bench")
    scratch = Path(tempfile.mkdtemp(prefix="rvc-bench-cluster-"))
    try:
        if not args.skip_demo:
            with MultiNodeCluster(worker_cpus=(1, 1)) as cluster:
                local = _demo_wall(cluster, str(scratch / "local"), args.demo_seconds, args.epochs)
                remote = _demo_wall(cluster, "s3://rvc-bench/demo", args.demo_seconds, args.epochs)
            print(json.dumps({"metric": "demo_pipeline_s3_over_local", "value": round(remote / local, 3),
                              "s3_s": round(remote, 1), "local_s": round(local, 1), "target": "<= 1.15",
                              "cluster": "0-CPU head + 2 x 1-CPU workers", "loadavg": _load()}), flush=True)

        from rvc_ray.config import load_run_config
        from rvc_ray.data.dataset import write_synthetic_feature_table

        cfg = load_run_config("tiny_cpu")
        features = scratch / "features"
        write_synthetic_feature_table(
            features, content_dim=cfg.model.content_dim, sample_rate=cfg.audio.sample_rate,
            frames=[40 + (i % 5) * 8 for i in range(64)], splits=["train"] * 56 + ["val"] * 8,
        )
        (features / "manifest.json").write_text(json.dumps({"content_encoder": {"kind": "random"}}))
        # both clusters up at once, runs alternating (spread, packed, spread, ...) so that load drift hits both
        with MultiNodeCluster(worker_cpus=(1, 1)) as spread, MultiNodeCluster(worker_cpus=(2,)) as packed:
            pairs = []
            for i in range(args.repeats):
                two = _train_samples_per_s(spread, str(features), str(scratch / f"spread{i}"), args.train_epochs)
                one = _train_samples_per_s(packed, str(features), str(scratch / f"packed{i}"), args.train_epochs)
                pairs.append((two, one))
        ratios = sorted(two / one for two, one in pairs)
        print(json.dumps({"metric": "train_two_nodes_over_one_node", "value": round(median(ratios), 3),
                          "pair_ratios": [round(r, 3) for r in ratios],
                          "two_nodes_samples_per_s": [round(t, 2) for t, _ in pairs],
                          "one_node_samples_per_s": [round(o, 2) for _, o in pairs],
                          "target": ">= 0.95", "loadavg": _load()}), flush=True)
    finally:
        s3.close()
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
