"""Distributed training on Ray Train with 2 CPU workers (gloo): the batch split, fault tolerance, resume.

Each Train fit costs ~20-40 s here, so the assertions are combined into few fits.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rvc_ray.config import RunConfig, load_run_config
from rvc_ray.data.dataset import write_synthetic_feature_table

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@contextlib.contextmanager
def _no_generator_noise() -> Iterator[None]:
    """Make every random draw of the generator's training forward zero (slice start 0, posterior
    z = mean, NSF phase 0 and no noise) so a step is a deterministic function of its items."""
    originals = {name: getattr(torch, name) for name in ("rand", "randn", "rand_like", "randn_like")}

    def zeros(*size: Any, dtype: Any = None, device: Any = None, **_: Any) -> torch.Tensor:
        if len(size) == 1 and isinstance(size[0], tuple | list | torch.Size):
            size = tuple(size[0])
        return torch.zeros(size, dtype=dtype or torch.get_default_dtype(), device=device)

    def zeros_like(tensor: torch.Tensor, *, dtype: Any = None, **_: Any) -> torch.Tensor:
        return torch.zeros_like(tensor, dtype=dtype)

    torch.rand, torch.randn = zeros, zeros  # type: ignore[assignment]
    torch.rand_like, torch.randn_like = zeros_like, zeros_like  # type: ignore[assignment]
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)


def _one_step_gradients(raw_cfg: dict[str, Any], features_dir: str, rank: int, world: int) -> dict[str, Any]:
    """Run the first step of epoch 1 on this rank's slice of the first global batch, with the loop's own
    sampler and DDP wrapping; return the gradients each optimizer saw (D step and G step)."""
    from rvc_ray.data.dataset import TrainingItems, load_feature_table
    from rvc_ray.data.sampler import DistributedBucketSampler
    from rvc_ray.model.build import build_discriminator, build_generator
    from rvc_ray.train import steps
    from rvc_ray.train.gan_state import wrap_models

    cfg = RunConfig.model_validate(raw_cfg)
    torch.set_num_threads(1)
    table = load_feature_table(Path(features_dir), "train", hop_length=cfg.audio.hop_length)
    items = TrainingItems(table, cfg.audio, max_frames=cfg.data.max_frames)
    sampler = DistributedBucketSampler(
        items.lengths,
        global_batch_size=cfg.train.batch_size,
        boundaries=cfg.data.bucket_boundaries,
        num_replicas=world,
        rank=rank,
        seed=cfg.experiment.seed,
    )
    sampler.set_epoch(1)
    indices = next(iter(sampler))
    torch.manual_seed(0)
    gen, disc = build_generator(cfg.model, cfg.audio), build_discriminator(cfg.model)
    opt_g, opt_d = steps.build_optimizers(gen, disc, cfg.optim)
    gen_w, disc_w = wrap_models(gen, disc) if world > 1 else (gen, disc)
    seen: dict[str, list[torch.Tensor]] = {}

    def capture(name: str):  # noqa: ANN202
        def hook(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            seen[name] = [p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]]

        return hook

    opt_d.register_step_pre_hook(capture("d"))
    opt_g.register_step_pre_hook(capture("g"))
    with _no_generator_noise():
        metrics = steps.train_step(
            gen_w, disc_w, opt_g, opt_d, items.batch(indices), steps.StepSettings.from_config(cfg)
        )
    return {"indices": list(indices), "grads": seen, "metrics": metrics}


def _gradient_worker(config: dict[str, Any]) -> None:
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    out = _one_step_gradients(config["run"], config["features_dir"], rank, world)
    torch.save(out, Path(config["out_dir"]) / f"rank{rank}.pt")


def test_two_workers_half_batch_average_to_one_worker_full_batch(ray_cluster: None, tmp_path: Path) -> None:
    """2 workers x B/2 (DDP-averaged) == 1 worker x B on the same items, for the D step and the G step.

    All items have the same length: RVC's KL term is normalised by the total valid frames of the
    (per-worker) batch, so with unequal lengths the average of per-worker KLs is a length-weighted
    variant of the full-batch KL (true of every DDP port of RVC, including RVC itself).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = load_run_config("tiny_cpu", ["train.batch_size=4", "scaling.num_workers=2"])
    features = tmp_path / "features"
    write_synthetic_feature_table(
        features, content_dim=cfg.model.content_dim, sample_rate=cfg.audio.sample_rate, frames=[32] * 8
    )
    raw = cfg.model_dump(mode="json")
    trainer = TorchTrainer(
        _gradient_worker,
        train_loop_config={"run": raw, "features_dir": str(features), "out_dir": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="grad-equivalence", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()
    reference = _one_step_gradients(raw, str(features), rank=0, world=1)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    assert ranks[0]["indices"] + ranks[1]["indices"] == reference["indices"]
    assert set(ranks[0]["indices"]).isdisjoint(ranks[1]["indices"])
    for which in ("d", "g"):
        ref = reference["grads"][which]
        for rank in ranks:
            assert len(rank["grads"][which]) == len(ref)
            for index, (got, want) in enumerate(zip(rank["grads"][which], ref, strict=True)):
                error = float((got - want).norm() / want.norm().clamp_min(1e-12))
                assert error < 1e-4, f"{which} parameter {index}: relative gradient error {error:.2e}"
    for name in ("grad_norm_d", "grad_norm_g"):
        assert ranks[0]["metrics"][name] == pytest.approx(reference["metrics"][name], rel=1e-4)
        assert ranks[1]["metrics"][name] == pytest.approx(ranks[0]["metrics"][name], rel=1e-6)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_fit_survives_a_killed_worker_then_resumes_in_a_new_job(ray_cluster: None, tmp_path: Path) -> None:
    """One fit on 2 workers where rank 1 dies in epoch 2 (restart from the epoch-1 checkpoint), then a new
    fit with the same name and more epochs continues at the next epoch with the saved state."""
    from rvc_ray.layout import RunLayout
    from rvc_ray.train.checkpoint import load_train_state, read_checkpoint_meta
    from rvc_ray.train.fault_injection import FailureInjection
    from rvc_ray.train.launch import fit
    from rvc_ray.train.loop import state_fingerprint
    from rvc_ray.train.metric_names import SCALAR_NAMES
    from rvc_ray.train.reporting import read_event_tags

    overrides = [
        f"experiment.work_dir={tmp_path}",
        "experiment.name=dist",
        "train.epochs=3",
        "train.save_every_epochs=1",
        "train.keep_last_checkpoints=2",
        "train.batch_size=4",
        "train.log_every_steps=1",
        "train.num_preview_clips=1",
        "scaling.num_workers=2",
        "scaling.max_failures=1",
    ]
    cfg = load_run_config("tiny_cpu", overrides)
    layout = RunLayout.from_config(cfg)
    write_synthetic_feature_table(
        layout.features_dir,
        content_dim=cfg.model.content_dim,
        sample_rate=cfg.audio.sample_rate,
        frames=[32, 36, 40, 34, 38, 32, 40, 36, 30, 30],
        splits=["train"] * 8 + ["val"] * 2,
    )
    (layout.features_dir / "manifest.json").write_text(
        json.dumps({"content_encoder": {"kind": "random", "path": None, "learned_content": False}})
    )
    index = tmp_path / "fake.index"
    index.write_bytes(b"index")
    marker = tmp_path / "killed.marker"

    result = fit(cfg, layout.features_dir, index, failure_injection=FailureInjection(rank=1, epoch=2, marker=marker))

    # the worker was killed once, the run restarted from the epoch-1 checkpoint and finished
    assert marker.exists()
    assert result.epochs_completed == 3
    assert (result.global_batch_size, result.per_worker_batch_size) == (4, 2)
    lines = _jsonl(layout.metrics_path)
    starts = [line for line in lines if line["kind"] == "start"]
    assert [s["start_epoch"] for s in starts] == [1, 2]
    assert starts[1]["resumed_from"] == "checkpoint"
    epochs = [line["epoch"] for line in lines if line["kind"] == "epoch"]
    assert epochs == [1, 2, 3]
    # the restarted group replays step 3 exactly: state, sampler order and noise were restored
    step3 = [line for line in lines if line["kind"] == "step" and line["step"] == 3]
    assert len(step3) == 2
    assert {k: v for k, v in step3[0].items() if k != "time"} == {k: v for k, v in step3[1].items() if k != "time"}
    run_dir = result.run_dir

    # checkpoints: batch sizes recorded, RVC G/D files, config; best + latest kept
    meta = read_checkpoint_meta(result.last_checkpoint)
    assert (meta["epoch"], meta["global_step"]) == (3, 6)
    assert (meta["global_batch_size"], meta["per_worker_batch_size"], meta["num_workers"]) == (4, 2, 2)
    assert {"G_6.pth", "D_6.pth", "config.yaml", "state.pt", "voice.pth"} <= {
        p.name for p in result.last_checkpoint.iterdir()
    }
    assert result.best_checkpoint is not None and result.best_checkpoint.parent == run_dir
    kept = sorted(p.name for p in run_dir.glob("epoch_*"))
    assert len(kept) == 2 and "epoch_00003" in kept  # keep_last_checkpoints=2 best by val/mel_l1, latest always

    # an export per save, the latest copy and the index next to it
    assert [p.name for p in result.exported_voices] == ["dist_e1_s2.pth", "dist_e2_s4.pth", "dist_e3_s6.pth"]
    assert (layout.voices_dir / "dist.pth").is_file() and (layout.voices_dir / "dist.index").read_bytes() == b"index"

    # TensorBoard has the RVC names, validation, images and audio previews
    tags = read_event_tags(result.tensorboard_dir)
    assert set(SCALAR_NAMES) | {"val/mel_l1", "val/mcd"} <= set(tags["scalars"])
    assert {"slice/mel_org", "slice/mel_gen"} <= set(tags["images"])
    assert "preview/0" in tags["audio"]

    # a new job with the same name and more epochs continues at epoch 4 from the saved state
    cfg4 = load_run_config("tiny_cpu", [*overrides, "train.epochs=4"])
    resumed = fit(cfg4, layout.features_dir, index)
    assert resumed.epochs_completed == 4
    starts = [line for line in _jsonl(layout.metrics_path) if line["kind"] == "start"]
    assert starts[-1]["start_epoch"] == 4 and starts[-1]["resumed_from"] == "checkpoint"
    assert starts[-1]["state_sha256"] == state_fingerprint(load_train_state(run_dir / "epoch_00003").generator)
    assert [line["epoch"] for line in _jsonl(layout.metrics_path) if line["kind"] == "epoch"] == [1, 2, 3, 4]


def test_a_health_failure_is_not_replayed_by_ray_trains_restart(ray_cluster: None, tmp_path: Path) -> None:
    """c_adv=1e39 overflows the generator loss at step 1 (NonFiniteLossError). With scaling.max_failures=1
    Ray Train restarts the worker group; the restart must stop at once with the recorded error instead
    of training again, and a new fit (after the cause is fixed) must not be blocked by the record."""
    from ray.train import TrainingFailedError

    from rvc_ray.layout import RunLayout
    from rvc_ray.train.health_marker import HEALTH_FAILURE_FILE
    from rvc_ray.train.launch import fit

    overrides = [
        f"experiment.work_dir={tmp_path}",
        "experiment.name=nan",
        "train.epochs=1",
        "train.batch_size=2",
        "train.num_preview_clips=0",
        "scaling.num_workers=1",
        "scaling.max_failures=1",
    ]
    cfg = load_run_config("tiny_cpu", [*overrides, "loss.c_adv=1e39"])
    layout = RunLayout.from_config(cfg)
    write_synthetic_feature_table(
        layout.features_dir,
        content_dim=cfg.model.content_dim,
        sample_rate=cfg.audio.sample_rate,
        frames=[32, 36, 34, 30],
        splits=["train"] * 3 + ["val"],
    )
    with pytest.raises(TrainingFailedError) as failure:
        fit(cfg, layout.features_dir)
    text = str(failure.value)
    assert "NonFiniteLossError" in text and "in an earlier attempt of this run" in text, text
    record = json.loads((layout.train_dir / "nan" / HEALTH_FAILURE_FILE).read_text())
    assert record["error"] == "NonFiniteLossError" and record["rank"] == 0
    starts = [line for line in _jsonl(layout.metrics_path) if line["kind"] == "start"]
    assert len(starts) == 1, "the restarted attempt must not build the models and train again"

    fixed = load_run_config("tiny_cpu", overrides)
    result = fit(fixed, layout.features_dir)
    assert result.epochs_completed == 1
    assert not (layout.train_dir / "nan" / HEALTH_FAILURE_FILE).exists()
