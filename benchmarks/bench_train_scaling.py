"""Training throughput on Ray Train: 1 vs 2 CPU workers on the same data, and Ray's per-step overhead.

    .venv/bin/python benchmarks/bench_train_scaling.py [--epochs 3] [--items 16] [--frames 64] [--batch 4]
    .venv/bin/python benchmarks/bench_train_scaling.py --set model.discriminator_channel_divisor=1   # heavier step

Same synthetic feature table, same global batch, same tiny model (``tiny_cpu`` preset) for every run:

1. a plain single-process loop of ``train_step`` (1 torch thread, no Ray, no DDP): the reference step time;
2. ``fit`` on Ray Train with 1 worker (1 CPU, 1 thread);
3. ``fit`` on Ray Train with 2 workers (1 CPU, 1 thread each; gloo all-reduce).

Throughput = global samples per second of the training part of each epoch (validation, checkpoint and export
excluded), averaged over the epochs after the first (warm-up). Scaling efficiency = sps(2) / (2 * sps(1)).
Ray overhead per step = step time with 1 Ray worker - plain step time (the plain loop runs before and after the
Ray runs; the faster one counts). Prints one JSON line, with the 1-minute load average before and after: on a
shared machine, numbers taken under load are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _plain_loop(cfg: Any, features_dir: Path, steps_to_run: int) -> float:
    """Seconds per step of a bare train_step loop in this process (1 thread)."""
    import torch

    from rvc_ray.data.dataset import TrainingItems, load_feature_table
    from rvc_ray.data.sampler import DistributedBucketSampler
    from rvc_ray.model.build import build_discriminator, build_generator
    from rvc_ray.train import steps

    torch.set_num_threads(1)
    items = TrainingItems(
        load_feature_table(features_dir, "train", hop_length=cfg.audio.hop_length), cfg.audio, max_frames=900
    )
    sampler = DistributedBucketSampler(
        items.lengths, global_batch_size=cfg.train.batch_size, boundaries=cfg.data.bucket_boundaries
    )
    torch.manual_seed(0)
    gen, disc = build_generator(cfg.model, cfg.audio), build_discriminator(cfg.model)
    opt_g, opt_d = steps.build_optimizers(gen, disc, cfg.optim)
    settings = steps.StepSettings.from_config(cfg)
    batches = [items.batch(indices) for indices in sampler]
    steps.train_step(gen, disc, opt_g, opt_d, batches[0], settings)  # warm-up
    times = []
    for i in range(steps_to_run):
        started = time.perf_counter()
        steps.train_step(gen, disc, opt_g, opt_d, items.batch(sampler.global_batches()[i % len(batches)]), settings)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _ray_fit(cfg: Any, features_dir: Path, workers: int, root: Path) -> dict[str, Any]:
    from rvc_ray.config import RunConfig
    from rvc_ray.train.launch import build_torch_trainer

    run_cfg = RunConfig.model_validate(
        {
            **cfg.model_dump(mode="json"),
            "scaling": {**cfg.scaling.model_dump(mode="json"), "num_workers": workers, "cpus_per_worker": 1.0},
        }
    )
    name = f"bench_w{workers}"
    started = time.perf_counter()
    trainer = build_torch_trainer(run_cfg, features_dir, run_name=name, storage_path=root)
    trainer.fit()
    wall = time.perf_counter() - started
    lines = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["kind"] == "epoch"]
    measured = epochs[1:] or epochs
    sps = statistics.mean(x["samples_per_s"] for x in measured)
    steps_per_epoch = next(x for x in lines if x["kind"] == "start")["steps_per_epoch"]
    step_s = statistics.mean(x["epoch_time_s"] for x in measured) / steps_per_epoch
    return {"workers": workers, "samples_per_s": sps, "step_s": step_s, "fit_wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--plain-steps", type=int, default=8)
    parser.add_argument("--preset", default="tiny_cpu", help="config preset (the model whose step is timed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra section.key=value")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

    import ray

    from rvc_ray.config import load_run_config
    from rvc_ray.data.dataset import write_synthetic_feature_table

    cfg = load_run_config(
        args.preset,
        [
            *args.overrides,
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch}",
            f"train.save_every_epochs={args.epochs}",
            "train.log_every_steps=1000",
            "train.num_preview_clips=0",
            "scaling.max_failures=0",
        ],
    )
    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    features = root / "features"
    write_synthetic_feature_table(
        features,
        content_dim=cfg.model.content_dim,
        sample_rate=cfg.audio.sample_rate,
        frames=[args.frames] * (args.items + 2),
        splits=["train"] * args.items + ["val"] * 2,
    )
    load_before = os.getloadavg()
    plain_runs = [_plain_loop(cfg, features, steps_to_run=args.plain_steps)]
    ray.init(num_cpus=4, include_dashboard=True, logging_config=ray.LoggingConfig(log_level="WARNING"))
    try:
        one = _ray_fit(cfg, features, 1, root / "ray")
        two = _ray_fit(cfg, features, 2, root / "ray")
    finally:
        ray.shutdown()
    plain_runs.append(_plain_loop(cfg, features, steps_to_run=args.plain_steps))
    plain_step_s = min(plain_runs)  # before and after the Ray runs; the min is the least disturbed
    result = {
        "benchmark": "train_scaling",
        "preset": args.preset,
        "overrides": args.overrides,
        "global_batch": args.batch,
        "items": args.items,
        "frames_per_item": args.frames,
        "epochs": args.epochs,
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "plain_step_s": round(plain_step_s, 4),
        "plain_step_s_runs": [round(x, 4) for x in plain_runs],
        "plain_samples_per_s": round(args.batch / plain_step_s, 3),
        "ray_1_worker": {k: round(v, 4) if isinstance(v, float) else v for k, v in one.items()},
        "ray_2_workers": {k: round(v, 4) if isinstance(v, float) else v for k, v in two.items()},
        "scaling_efficiency": round(two["samples_per_s"] / (2 * one["samples_per_s"]), 3),
        "speedup_2_vs_1": round(two["samples_per_s"] / one["samples_per_s"], 3),
        "ray_overhead_per_step_s": round(one["step_s"] - plain_step_s, 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
