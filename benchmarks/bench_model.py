"""The physical limit of one training step: FLOPs, the achieved fraction of the hardware's peak, fp32 vs bf16
(time and the loss curve of a short run), the Ray overhead per step, and (optionally) Applio's step.

Usage: ``python benchmarks/bench_model.py [--preset rvc_v2_40k] [--batch 4] [--clip-s 3.0] [--threads 2]
[--device cpu|cuda] [--precisions fp32,bf16] [--warmup 1] [--steps 3] [--ray-overhead] [--applio DIR]
[--infer]``. Prints one JSON line per measurement:

* ``hardware``: CPU name, features (avx512_bf16, amx...), clock and the estimated peak (method in
  ``benchmarks/hardware_peak.py``), or the GPU and its datasheet peak;
* ``flops``: FLOPs of one training step (G forward, D step, G step, both optimizers) counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward; the
  STFTs and element-wise ops are not counted, so the achieved fraction is a slight underestimate);
* ``train_step`` per precision: median step time, samples/s, achieved GFLOP/s and fraction of peak. The
  precisions (and Applio's step) run interleaved, one step each per round, so a change of load on a shared
  machine hits all of them alike;
* ``loss_curve``: after every step of the fp32 and bf16 runs (same init, same batch, same random slices),
  the generator's ``loss/g/mel`` evaluated in fp32 on fixed slices, and the largest relative difference of
  the two curves against ``--curve-tolerance``;
* ``ray_overhead`` (``--ray-overhead``): the same step inside a one-worker Ray Train fit (data from a
  feature table, prefetching, collectives, per-epoch report) next to the bare step;
* ``applio_step`` (``--applio DIR``): Applio's v2 40k generator + discriminator step with the same shapes,
  imported from that checkout at run time (nothing is copied), and our step time relative to it;
* ``infer`` (``--infer``): a 10 s inference forward and its real-time factor.
Each timing records the CPU time other processes used meanwhile and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardware_peak import describe_cpu, describe_gpu, fraction_of_peak  # noqa: E402


def _busy_cpu_s() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_batch(cfg: Any, batch: int, frames: int) -> Any:
    """A batch shaped like the collate output: ``batch`` clips of ``frames`` frames, harmonic waveforms."""
    import torch

    from rvc_ray.audio.spectral import compute_linear_spectrogram
    from rvc_ray.data.batch import RVCBatch

    a = cfg.audio
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(frames * a.hop_length) / a.sample_rate
    f0 = 100.0 + 150.0 * torch.rand(batch, 1, generator=gen)
    wav = 0.3 * torch.sin(2 * math.pi * f0 * t) + 0.01 * torch.randn(batch, t.numel(), generator=gen)
    lengths = torch.full((batch,), frames)
    f0_hz = f0.expand(batch, frames).clone()
    mel = 1127.0 * torch.log(1 + f0_hz / 700.0)
    lo, hi = 1127.0 * math.log(1 + 50 / 700), 1127.0 * math.log(1 + 1100 / 700)
    bins = torch.round((mel - lo) * 254 / (hi - lo) + 1).clamp(1, 255).long()
    spec = compute_linear_spectrogram(wav, a.n_fft, a.hop_length, a.win_length)
    content = torch.randn(batch, frames // 2, cfg.model.content_dim, generator=gen).repeat_interleave(2, dim=1)
    return RVCBatch(
        content,
        lengths,
        bins,
        f0_hz,
        spec,
        lengths.clone(),
        wav[:, None],
        lengths * a.hop_length,
        torch.zeros(batch, dtype=torch.long),
    )


def build_trainables(cfg: Any, device: Any, precision: str, seed: int = 1234) -> tuple[Any, ...]:
    """G, D, optimizers, step settings and GradScaler for ``precision`` on ``device``, from ``seed``."""
    import dataclasses

    import torch

    from rvc_ray.model.build import build_discriminator, build_generator
    from rvc_ray.train.steps import StepSettings, build_grad_scaler, build_optimizers

    torch.manual_seed(seed)
    gen = build_generator(cfg.model, cfg.audio).to(device)
    disc = build_discriminator(cfg.model).to(device)
    opt_g, opt_d = build_optimizers(gen, disc, cfg.optim)
    settings = dataclasses.replace(StepSettings.from_config(cfg, device), precision=precision)
    return gen, disc, opt_g, opt_d, settings, build_grad_scaler(settings)


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def count_step_flops(cfg: Any, batch: Any, device: Any) -> float:
    """FLOPs of one fp32 training step (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from rvc_ray.train.steps import train_step

    gen, disc, opt_g, opt_d, settings, scaler = build_trainables(cfg, device, "fp32")
    with FlopCounterMode(display=False) as counter:
        train_step(gen, disc, opt_g, opt_d, batch, settings, scaler=scaler)
    return float(counter.get_total_flops())


class Timed:
    """Times and foreign CPU of the timed calls of one runner, plus its loss curve."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.foreign: list[float] = []
        self.mel: list[float] = []

    def measure(self, step: Any, device: Any, *, record: bool) -> None:
        busy0, own0 = _busy_cpu_s(), _own_cpu_s()
        _sync(device)
        started = time.perf_counter()
        mel = step()
        _sync(device)
        wall = time.perf_counter() - started
        busy1, own1 = _busy_cpu_s(), _own_cpu_s()
        self.mel.append(mel)
        if record:
            self.times.append(wall)
            if busy0 is not None and busy1 is not None:
                self.foreign.append(round(max(0.0, (busy1 - busy0) - (own1 - own0)), 2))


class OurStep:
    """rvc-ray's ``train_step`` at one precision, from a fixed init; its own RNG stream (the same random
    slices for every precision, even when runners are interleaved)."""

    def __init__(self, cfg: Any, batch: Any, device: Any, precision: str) -> None:
        import torch

        self.parts = build_trainables(cfg, device, precision)
        self.batch = batch
        self.cuda = torch.device(device).type == "cuda"
        self.rng = torch.Generator().manual_seed(4321).get_state()
        self.cuda_rng = torch.Generator(device=device).manual_seed(4321).get_state() if self.cuda else None

    def __call__(self) -> float:
        import torch

        from rvc_ray.train.steps import train_step

        gen, disc, opt_g, opt_d, settings, scaler = self.parts
        saved = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state() if self.cuda else None
        torch.set_rng_state(self.rng)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_rng)
        try:
            train_step(gen, disc, opt_g, opt_d, self.batch, settings, scaler=scaler)
            mel = self.evaluate_fp32()
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(saved)
            if self.cuda:
                self.cuda_rng = torch.cuda.get_rng_state()
                torch.cuda.set_rng_state(saved_cuda)
        return mel

    def evaluate_fp32(self) -> float:
        """``loss/g/mel`` of the generator as it is now, computed in fp32 on the batch with fixed slices and
        noise: the same yardstick for every precision. (A bf16 forward quantises the near-silent output of
        an untrained generator, and its log-mel loss then differs by up to ~30 % from fp32's at the same
        weights; that is a measurement effect, not a training difference.)"""
        import dataclasses

        import torch

        from rvc_ray.losses import mel_l1_loss
        from rvc_ray.train.steps import generator_forward

        gen, settings = self.parts[0], self.parts[4]
        with torch.random.fork_rng(devices=[self.batch.wav.device] if self.cuda else []), torch.no_grad():
            torch.manual_seed(999)
            gpass = generator_forward(gen, self.batch, dataclasses.replace(settings, precision="fp32"))
            return float(mel_l1_loss(gpass.mel_real, gpass.mel_fake))


def run_interleaved(runners: dict[str, Any], device: Any, warmup: int, steps: int) -> dict[str, Timed]:
    """One step of each runner per round (so load changes hit all of them alike); ``warmup`` rounds untimed."""
    timed = {name: Timed() for name in runners}
    for index in range(warmup + steps):
        for name, step in runners.items():
            timed[name].measure(step, device, record=index >= warmup)
    return timed


def time_steps(cfg: Any, batch: Any, device: Any, precision: str, warmup: int, steps: int) -> dict[str, Any]:
    """``warmup + steps`` steps of one precision alone: times of the last ``steps``, the loss curve of all,
    and the peak GPU memory on CUDA."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed = run_interleaved({precision: OurStep(cfg, batch, device, precision)}, device, warmup, steps)[precision]
    out: dict[str, Any] = {"times": timed.times, "foreign_cpu_s": timed.foreign, "mel": timed.mel}
    if torch.device(device).type == "cuda":
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def compare_curves(reference: list[float], other: list[float], tolerance: float) -> dict[str, Any]:
    """Largest relative difference of two loss curves, and whether it is within ``tolerance``."""
    diffs = [abs(b - a) / max(abs(a), 1e-12) for a, b in zip(reference, other, strict=True)]
    worst = max(diffs) if diffs else float("nan")
    return {"max_relative_difference": round(worst, 5), "tolerance": tolerance, "within": bool(worst <= tolerance)}


def measure_ray_overhead(cfg: Any, args: argparse.Namespace, bare_step_s: float, use_gpu: bool) -> dict[str, Any]:
    """A one-worker Ray Train fit over a feature table of identical clips: its per-step time in the second
    epoch (``epoch_time_s`` / steps, which includes building batches, prefetching and the loop's
    collectives) against the bare step; plus the rest of the fit (start-up, the warm-up epoch, validation,
    checkpoints)."""
    import tempfile

    import ray

    from rvc_ray.cluster import ensure_ray
    from rvc_ray.config import load_run_config
    from rvc_ray.data.dataset import write_synthetic_feature_table
    from rvc_ray.train.launch import build_torch_trainer, train_result_from

    steps = max(2, args.steps)
    frames = int(round(args.clip_s * 100))
    overrides = [
        f"train.precision={args.ray_precision}",
        f"train.batch_size={args.batch}",
        "train.epochs=2",  # epoch 1 warms up (the first steps pay oneDNN/allocator set-up); epoch 2 is timed
        "train.export_every_save=false",
        "train.num_preview_clips=0",
        "train.log_every_steps=1000",
        "scaling.num_workers=1",
        f"scaling.cpus_per_worker={args.threads}",
        f"data.bucket_boundaries=[{frames + 1}]",
    ]
    if use_gpu:
        overrides += ["scaling.use_gpu=true", "scaling.gpus_per_worker=1"]
    run_cfg = load_run_config(args.preset, overrides)
    with tempfile.TemporaryDirectory(prefix="rvc-bench-ray-") as tmp:
        features = Path(tmp) / "features"
        write_synthetic_feature_table(
            features,
            content_dim=run_cfg.model.content_dim,
            sample_rate=run_cfg.audio.sample_rate,
            frames=[frames] * (steps * args.batch + 1),
            splits=["train"] * (steps * args.batch) + ["val"],
        )
        ensure_ray(num_cpus=max(4, args.threads + 2))
        try:
            started = time.perf_counter()
            trainer = build_torch_trainer(run_cfg, features, run_name="bench", storage_path=Path(tmp) / "train")
            result = train_result_from(trainer.fit(), run_cfg, run_dir=Path(tmp) / "train" / "bench")
            fit_s = time.perf_counter() - started
        finally:
            ray.shutdown()
    epoch_s = float(result.metrics["epoch_time_s"])
    ray_step_s = epoch_s / steps
    return {
        "bench": "ray_overhead",
        "preset": args.preset,
        "precision": args.ray_precision,
        "batch": args.batch,
        "steps": steps,
        "bare_step_s": round(bare_step_s, 3),
        "ray_step_s": round(ray_step_s, 3),
        "overhead_per_step": round(ray_step_s / bare_step_s - 1.0, 4) if bare_step_s == bare_step_s else None,
        "fit_rest_s": round(fit_s - epoch_s, 1),
        "note": "ray_step_s includes building each batch from the feature table (STFT per clip) in the prefetch thread",
        "load_average": os.getloadavg(),
    }


def applio_step(applio_dir: Path, batch: Any) -> Any:
    """Applio's v2 40k G + D training step (the body of Applio ``rvc/train/train.py`` ``train_and_evaluate``,
    fp32, the same batch and AdamW settings), imported from ``applio_dir``: a callable returning the
    (weighted, as Applio logs it) mel loss."""
    import types

    import torch

    sys.path.insert(0, str(applio_dir))
    try:
        import torchaudio  # noqa: F401  # Applio's RefineGAN module imports it; the HiFi-GAN path never uses it
    except Exception:  # noqa: BLE001 - a CPU torch cannot load the PyPI torchaudio: a stand-in suffices
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    from rvc.lib.algorithm import commons
    from rvc.lib.algorithm.discriminators import MultiPeriodDiscriminator
    from rvc.lib.algorithm.synthesizers import Synthesizer
    from rvc.train.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
    from rvc.train.mel_processing import mel_spectrogram_torch

    from rvc_ray.train.steps import generator_inputs

    config = json.loads((applio_dir / "rvc" / "configs" / "40000.json").read_text())
    data, model, train = config["data"], config["model"], config["train"]
    hop = data["hop_length"]
    torch.manual_seed(1234)
    with contextlib.redirect_stdout(sys.stderr):  # Applio prints "Using HiFi-GAN vocoder": keep stdout JSON
        net_g = Synthesizer(
            data["filter_length"] // 2 + 1,
            train["segment_size"] // hop,
            **model,
            use_f0=True,
            sr=data["sample_rate"],
            vocoder="HiFi-GAN",
            checkpointing=False,
            randomized=True,
        )
    net_d = MultiPeriodDiscriminator(use_spectral_norm=False, checkpointing=False, version="v2")
    adamw = {"lr": train["learning_rate"], "betas": tuple(train["betas"]), "eps": train["eps"]}
    optim_g, optim_d = torch.optim.AdamW(net_g.parameters(), **adamw), torch.optim.AdamW(net_d.parameters(), **adamw)

    def mel(wave: torch.Tensor) -> torch.Tensor:
        return mel_spectrogram_torch(
            wave.float().squeeze(1),
            data["filter_length"],
            data["n_mel_channels"],
            data["sample_rate"],
            hop,
            data["win_length"],
            data["mel_fmin"],
            data["mel_fmax"],
        )

    rng = torch.Generator().manual_seed(4321).get_state()

    def step() -> float:
        nonlocal rng
        saved = torch.get_rng_state()
        torch.set_rng_state(rng)
        try:
            return one_step()
        finally:
            rng = torch.get_rng_state()
            torch.set_rng_state(saved)

    def one_step() -> float:
        y_hat, ids_slice, _, z_mask, (_, z_p, m_p, logs_p, _, logs_q) = net_g(*generator_inputs(batch))
        wave = commons.slice_segments(batch.wav, ids_slice * hop, train["segment_size"], dim=3)
        y_d_hat_r, y_d_hat_g, _, _ = net_d(wave, y_hat.detach())
        loss_disc, _, _ = discriminator_loss(y_d_hat_r, y_d_hat_g)
        optim_d.zero_grad()
        loss_disc.backward()
        commons.grad_norm(net_d.parameters())
        optim_d.step()
        _, y_d_hat_g, fmap_r, fmap_g = net_d(wave, y_hat)
        loss_mel = torch.nn.functional.l1_loss(mel(wave), mel(y_hat)) * train["c_mel"]
        loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * train["c_kl"]
        loss_gen, _ = generator_loss(y_d_hat_g)
        loss_gen_all = loss_gen + feature_loss(fmap_r, fmap_g) + loss_mel + loss_kl
        optim_g.zero_grad()
        loss_gen_all.backward()
        commons.grad_norm(net_g.parameters())
        optim_g.step()
        return float(loss_mel.detach()) / train["c_mel"]

    return step


def bench_inference(cfg: Any, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch

    from rvc_ray.model.build import build_generator

    torch.manual_seed(1234)
    gen = build_generator(cfg.model, cfg.audio, with_posterior_encoder=False).eval().to(device)
    frames = int(round(args.infer_s * 100))
    batch = make_batch(cfg, 1, frames).to(device)
    noise = torch.Generator(device=device).manual_seed(0)
    times = []
    with torch.inference_mode():
        for i in range(args.infer_runs + 1):
            _sync(device)
            started = time.perf_counter()
            gen.infer(
                batch.content, batch.content_lengths, batch.pitch_bins, batch.f0_hz, batch.speaker_id, generator=noise
            )
            _sync(device)
            if i:  # the first run is a warm-up
                times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "bench": "infer",
        "preset": args.preset,
        "device": str(device),
        "audio_s": args.infer_s,
        "median_s": round(median, 3),
        "real_time_factor": round(median / args.infer_s, 4),
        "load_average": os.getloadavg(),
    }


_STDOUT = sys.stdout  # JSON lines only: main() sends everything else printed (libraries' notes) to stderr


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), file=_STDOUT, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="rvc_v2_40k")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--clip-s", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--curve-tolerance", type=float, default=0.05)
    parser.add_argument("--skip-flops", action="store_true")
    parser.add_argument("--ray-overhead", action="store_true")
    parser.add_argument("--ray-precision", default="fp32")
    parser.add_argument("--applio", type=Path, default=None, help="an Applio checkout to time its step from")
    parser.add_argument("--infer", action="store_true")
    parser.add_argument("--infer-s", type=float, default=10.0)
    parser.add_argument("--infer-runs", type=int, default=3)
    args = parser.parse_args()
    if args.applio is not None and args.preset != "rvc_v2_40k":
        parser.error("--applio times Applio's 40 kHz v2 model: use it with --preset rvc_v2_40k")

    import torch

    from rvc_ray.config import load_run_config

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hardware = describe_gpu() if device.type == "cuda" else describe_cpu(args.threads)
    _emit({"bench": "hardware", **hardware})
    cfg = load_run_config(args.preset)
    # The Ray fit first, while this process holds no model: its worker needs the memory (24 GiB machines).
    ray_record = measure_ray_overhead(cfg, args, float("nan"), device.type == "cuda") if args.ray_overhead else None
    batch = make_batch(cfg, args.batch, int(round(args.clip_s * 100))).to(device)
    flops = None
    if not args.skip_flops:
        flops = count_step_flops(cfg, batch, device)
        _emit(
            {
                "bench": "flops",
                "preset": args.preset,
                "batch": args.batch,
                "clip_s": args.clip_s,
                "gflop_per_step": round(flops / 1e9, 1),
            }
        )
    runners: dict[str, Any] = {p: OurStep(cfg, batch, device, p) for p in args.precisions.split(",")}
    if args.applio is not None:
        runners["applio"] = applio_step(args.applio.resolve(), batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = run_interleaved(runners, device, args.warmup, args.steps)
    medians = {name: statistics.median(run.times) for name, run in runs.items()}
    for name, run in runs.items():
        if name == "applio":
            continue
        peak = hardware["peak_gflops"].get(name) or hardware["peak_gflops"].get("fp32")
        record = {
            "bench": "train_step",
            "device": str(device),
            "preset": args.preset,
            "precision": name,
            "batch": args.batch,
            "clip_s": args.clip_s,
            "threads": torch.get_num_threads(),
            "interleaved_with": [n for n in runners if n != name],
            "median_s": round(medians[name], 3),
            "times_s": [round(t, 3) for t in run.times],
            "samples_per_s": round(args.batch / medians[name], 3),
            "foreign_cpu_s_per_step": run.foreign,
            "achieved_gflops": round(flops / medians[name] / 1e9, 1) if flops else None,
            "fraction_of_peak": fraction_of_peak(flops, medians[name], peak) if flops else None,
            "load_average": os.getloadavg(),
        }
        _emit(record)
    if "fp32" in runs:
        for name, run in runs.items():
            if name in ("fp32", "applio"):
                continue
            _emit(
                {
                    "bench": "loss_curve",
                    "compare": f"{name} vs fp32",
                    "steps": len(run.mel),
                    "loss_g_mel_fp32": [round(v, 4) for v in runs["fp32"].mel],
                    f"loss_g_mel_{name}": [round(v, 4) for v in run.mel],
                    **compare_curves(runs["fp32"].mel, run.mel, args.curve_tolerance),
                    "step_time_ratio": round(medians[name] / medians["fp32"], 3),
                }
            )
    if "applio" in runs:
        _emit(
            {
                "bench": "applio_step",
                "applio_dir": str(args.applio),
                "batch": args.batch,
                "median_s": round(medians["applio"], 3),
                "times_s": [round(t, 3) for t in runs["applio"].times],
                "foreign_cpu_s_per_step": runs["applio"].foreign,
                "loss_g_mel_applio": [round(v, 4) for v in runs["applio"].mel],
                "ours_over_applio": {n: round(m / medians["applio"], 3) for n, m in medians.items() if n != "applio"},
                "load_average": os.getloadavg(),
            }
        )
    del runners
    gc.collect()
    if ray_record is not None:
        bare = medians.get(args.ray_precision) or next(iter(medians.values()))
        ray_record.update(bare_step_s=round(bare, 3), overhead_per_step=round(ray_record["ray_step_s"] / bare - 1.0, 4))
        _emit(ray_record)
    if args.infer:
        _emit(bench_inference(cfg, args, device))


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):
        main()
