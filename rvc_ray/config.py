"""The one typed run configuration of rvc-ray.

Every job (preprocess, extract, index, train, tune, serve) is described by a single frozen
:class:`RunConfig`. It is parsed once, at the edge (CLI or job script), by
:func:`load_run_config` from a YAML job file plus ``--set section.key=value`` overrides, and
then passed down as an object (or, across Ray process boundaries, as ``model_dump(mode="json")``
re-validated with :meth:`RunConfig.model_validate` on the other side).

Unknown keys are rejected with their name, choices are ``Literal`` and cross-field rules are
checked at load time, so a wrong config fails before any worker starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rvc_ray.errors import InputError
from rvc_ray.features.f0_methods import F0Method
from rvc_ray.train.trackers import TrackerName

__all__ = [
    "AudioConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "FeatureConfig",
    "IndexConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PRESET_NAMES",
    "PreprocessConfig",
    "RunConfig",
    "ScalingConfig",
    "ServeConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_dotted_overrides",
    "load_run_config",
    "parse_override",
    "resolve_locations",
    "split_global_batch",
]

PRESET_NAMES = ("rvc_v2_32k", "rvc_v2_40k", "rvc_v2_48k", "tiny_cpu")


class ConfigError(InputError):
    """A job file or override that cannot be turned into a valid :class:`RunConfig`."""


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExperimentConfig(_Node):
    """Where a run lives and what the trained voice is called.

    ``work_dir`` is a location (a plain string, never a ``Path``, so ``s3://`` survives): a local path or a
    filesystem URI (``s3://``, ``gs://``, ``abfs://``, ``file://``, see ``rvc_ray.storage``). A relative
    path is made absolute once, by :func:`load_run_config` on the machine that loads the job.
    """

    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    work_dir: str = "runs"
    seed: int = 1234

    @property
    def root(self) -> str:
        """``work_dir/name`` as a location: the directory (or bucket prefix) holding every stage's output."""
        from rvc_ray.storage import join, normalize_location

        return join(normalize_location(self.work_dir), self.name)


class AudioConfig(_Node):
    """Sample rate and STFT/mel constants of the model (RVC ``data`` section)."""

    sample_rate: Literal[16000, 24000, 32000, 40000, 48000] = 40000
    n_fft: int = Field(2048, gt=0)
    hop_length: int = Field(400, gt=0)
    win_length: int = Field(2048, gt=0)
    n_mels: int = Field(125, gt=0)
    mel_fmin: float = Field(0.0, ge=0.0)
    mel_fmax: float | None = None

    @property
    def spec_channels(self) -> int:
        """Number of linear-spectrogram bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @model_validator(mode="after")
    def _check(self) -> AudioConfig:
        if self.win_length > self.n_fft:
            raise ValueError(f"audio.win_length ({self.win_length}) must be <= audio.n_fft ({self.n_fft})")
        if self.hop_length * 100 != self.sample_rate:
            raise ValueError(
                f"audio.hop_length ({self.hop_length}) must be sample_rate/100 "
                f"({self.sample_rate // 100}): every RVC stream runs at 100 frames per second"
            )
        if self.mel_fmax is not None and self.mel_fmax > self.sample_rate / 2:
            raise ValueError(f"audio.mel_fmax ({self.mel_fmax}) is above Nyquist ({self.sample_rate / 2})")
        return self


class PreprocessConfig(_Node):
    """Slicing, filtering, normalisation and readiness thresholds (docs/rvc-reference.md §1)."""

    use_highpass: bool = True
    highpass_cutoff_hz: float = Field(48.0, gt=0)
    highpass_order: int = Field(5, ge=1, le=10)
    slicer_threshold_db: float = -42.0
    slicer_min_length_ms: int = Field(1500, gt=0)
    slicer_min_interval_ms: int = Field(400, gt=0)
    slicer_hop_ms: int = Field(15, gt=0)
    slicer_max_silence_kept_ms: int = Field(500, gt=0)
    segment_s: float = Field(3.7, gt=0)
    overlap_s: float = Field(0.3, ge=0)
    min_segment_s: float = Field(0.5, gt=0)
    normalize_max: float = Field(0.9, gt=0, le=1.0)
    normalize_alpha: float = Field(0.75, ge=0, le=1.0)
    max_segment_peak: float = Field(2.5, gt=0)
    min_file_duration_s: float = Field(0.5, gt=0)
    clipping_level: float = Field(0.999, gt=0, le=1.0)
    min_usable_minutes: float = Field(10.0, ge=0)
    warn_usable_minutes: float = Field(30.0, ge=0)
    # seconds of audio read (and filtered, sliced) at a time: memory per task is about 5 MB per block second at
    # 48 kHz (60 s: +0.29 GB, 300 s: +1.3 GB, measured); the output does not depend on it (docs/dataset.md)
    block_duration_s: float = Field(60.0, gt=10.0)
    rows_per_shard: int = Field(256, gt=0)
    # "auto": Ray tasks on the cluster this process is connected to or told to join (RAY_ADDRESS), else worker
    # processes on this machine (no local Ray cluster to start); "ray": Ray tasks always (docs/dataset.md)
    engine: Literal["auto", "ray"] = "auto"
    cpus_per_task: float = Field(1.0, gt=0)
    # Ray's logical memory per preprocessing task (decode + filter + resample of one block), so a node never
    # runs more tasks than its RAM holds: Ray cannot see a task's real memory use (docs/rvc-reference.md §A.1)
    memory_gb_per_task: float = Field(1.0, gt=0)
    extensions: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")

    @model_validator(mode="after")
    def _check(self) -> PreprocessConfig:
        if self.overlap_s >= self.segment_s:
            raise ValueError(
                f"preprocess.overlap_s ({self.overlap_s}) must be smaller than preprocess.segment_s ({self.segment_s})"
            )
        if not (self.slicer_min_length_ms >= self.slicer_min_interval_ms >= self.slicer_hop_ms):
            raise ValueError("the slicer needs min_length_ms >= min_interval_ms >= hop_ms")
        if self.slicer_max_silence_kept_ms < self.slicer_hop_ms:
            raise ValueError("the slicer needs max_silence_kept_ms >= hop_ms")
        if self.warn_usable_minutes < self.min_usable_minutes:
            raise ValueError("preprocess.warn_usable_minutes must be >= preprocess.min_usable_minutes")
        return self


class FeatureConfig(_Node):
    """Pitch and content-feature extraction (docs/rvc-reference.md §2, §3)."""

    f0_method: F0Method = "rmvpe"
    rmvpe_path: Path | None = None
    f0_min_hz: float = Field(50.0, gt=0)
    f0_max_hz: float = Field(1100.0, gt=0)
    crepe_periodicity_threshold: float = Field(0.1, ge=0, le=1)
    content_encoder_path: Path | None = None
    content_encoder_format: Literal["auto", "hf", "fairseq"] = "auto"
    random_encoder_size: Literal["base", "tiny"] = "base"
    use_gpu: bool = False
    gpus_per_actor: float = Field(1.0, gt=0, le=1.0)
    # GPU share of each pitch / content actor with use_gpu (None: gpus_per_actor); fractions pack actors per GPU.
    pitch_gpus_per_actor: float | None = Field(None, gt=0, le=1.0)
    content_gpus_per_actor: float | None = Field(None, gt=0, le=1.0)
    # CPUs each actor reserves and uses. On CPU an actor runs that many batches at once, one thread each, all
    # sharing one copy of the models; with use_gpu one batch at a time on that many torch threads.
    # Unset (actor_cpus): 2 for the fused CPU pool, 1 otherwise.
    cpus_per_actor: float | None = Field(None, gt=0)
    # "fused": one actor pool whose actors compute pitch, then content, of each batch; "separate": a pitch pool
    # feeding a content pool (each with its own GPU share); "auto": fused on CPU, separate with use_gpu.
    stages: Literal["auto", "fused", "separate"] = "auto"
    # actors per pool; unset: one per pool when separate, one per CPU (of cpus_per_actor) when fused
    num_actors: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    mute_rows_per_speaker: int = Field(2, ge=0, le=10)

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        if self.f0_min_hz >= self.f0_max_hz:
            raise ValueError("features.f0_min_hz must be below features.f0_max_hz")
        return self

    @property
    def fused_stages(self) -> bool:
        """Do pitch and content run in one actor (``features.stages``; ``auto``: without ``use_gpu``)?"""
        return self.stages == "fused" or (self.stages == "auto" and not self.use_gpu)

    @property
    def actor_cpus(self) -> float:
        """The CPUs of each extraction actor: ``cpus_per_actor``, else 2 for the fused CPU pool (two batches at once
        share one copy of the models: faster than two 1-CPU actors, docs/benchmarks.md), else 1."""
        if self.cpus_per_actor is not None:
            return self.cpus_per_actor
        return 2.0 if self.fused_stages and not self.use_gpu else 1.0


class IndexConfig(_Node):
    """FAISS retrieval index, built the way RVC builds it (docs/rvc-reference.md §7)."""

    use_gpu: bool = False
    kmeans_threshold: int = Field(200_000, gt=0)
    kmeans_centroids: int = Field(10_000, gt=0)
    num_cpus: int = Field(1, ge=1)
    memory_gb: float = Field(2.0, gt=0)
    add_batch_size: int = Field(8192, gt=0)


class ModelConfig(_Node):
    """RVC synthesizer (generator) and multi-period discriminator hyperparameters (docs/rvc-reference.md §4.3, §5)."""

    version: Literal["v1", "v2"] = "v2"
    use_f0: bool = True
    content_dim: int = Field(768, gt=0)
    inter_channels: int = Field(192, gt=0)
    hidden_channels: int = Field(192, gt=0)
    filter_channels: int = Field(768, gt=0)
    n_heads: int = Field(2, gt=0)
    n_layers: int = Field(6, ge=1)
    kernel_size: int = Field(3, ge=1)
    p_dropout: float = Field(0.0, ge=0, lt=1)
    resblock: Literal["1", "2"] = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (10, 10, 2, 2)
    upsample_initial_channel: int = Field(512, gt=0)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    spk_embed_dim: int = Field(109, ge=1)
    gin_channels: int = Field(256, gt=0)
    posterior_layers: int = Field(16, ge=1)
    posterior_kernel_size: int = Field(5, ge=1)
    flow_layers: int = Field(4, ge=1)
    flow_wn_layers: int = Field(3, ge=1)
    flow_kernel_size: int = Field(5, ge=1)
    segment_frames: int = Field(32, ge=1)
    discriminator_periods: tuple[int, ...] = (2, 3, 5, 7, 11, 17, 23, 37)
    discriminator_channel_divisor: Literal[1, 2, 4, 8, 16] = 1
    use_spectral_norm: bool = False

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("model.upsample_rates and model.upsample_kernel_sizes must have the same length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("model.resblock_kernel_sizes and model.resblock_dilation_sizes must have the same length")
        if self.hidden_channels % self.n_heads:
            raise ValueError(f"model.hidden_channels ({self.hidden_channels}) must divide by n_heads ({self.n_heads})")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError("model.upsample_initial_channel must divide by 2**len(upsample_rates)")
        if self.discriminator_channel_divisor != 1 and self.content_dim in (256, 768) and self.hidden_channels == 192:
            raise ValueError(
                "model.discriminator_channel_divisor shrinks the discriminator below RVC's widths: it is for tiny "
                "test models only, and RVC-sized runs need 1 (pretrained f0D*.pth files have the full widths)"
            )
        if any(p < 2 for p in self.discriminator_periods) or len(set(self.discriminator_periods)) != len(
            self.discriminator_periods
        ):
            raise ValueError("model.discriminator_periods must be distinct integers >= 2")
        return self


class LossConfig(_Node):
    """Loss weights. ``c_adv`` = 1.0 reproduces RVC; ``c_<name>`` weighs the metric ``loss/g/<name>``
    (:mod:`rvc_ray.train.metric_names`)."""

    c_mel: float = Field(45.0, ge=0)
    c_kl: float = Field(1.0, ge=0)
    c_fm: float = Field(2.0, ge=0)
    c_adv: float = Field(1.0, ge=0)


class OptimConfig(_Node):
    """AdamW and the per-epoch exponential decay used by RVC (docs/rvc-reference.md §6.5)."""

    lr_generator: float = Field(1e-4, gt=0)
    lr_discriminator: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = Field(1e-9, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    lr_decay: float = Field(0.999875, gt=0, le=1.0)
    grad_clip_norm: float | None = Field(None, gt=0)
    min_learning_rate: float = Field(1e-8, ge=0)


class DataConfig(_Node):
    """How the feature table is turned into training batches."""

    max_frames: int = Field(900, gt=0)
    bucket_boundaries: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 900)
    min_frames: int | None = None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if list(self.bucket_boundaries) != sorted(set(self.bucket_boundaries)):
            raise ValueError("data.bucket_boundaries must be strictly increasing")
        return self


class TrainConfig(_Node):
    """The training run. ``batch_size`` is the GLOBAL batch, split exactly across workers; ``"auto"`` finds
    the largest that fits (docs/training.md, "Automatic batch size")."""

    epochs: int = Field(200, ge=1)
    batch_size: int | Literal["auto"] = Field(8)
    save_every_epochs: int = Field(10, ge=1)
    # How many checkpoint directories Ray keeps: the best ones by val/mel_l1, plus always the latest (so the
    # best epoch can never be deleted and resume always works); every exported voice is kept regardless.
    keep_last_checkpoints: int = Field(3, ge=1)
    # auto: bf16 on GPUs that support it (compute capability >= 8), fp32 elsewhere (CPU: bf16 is opt-in)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    auto_batch_size_max: int = Field(64, ge=1)  # the largest global batch batch_size=auto tries
    cache_dataset_on_gpu: bool = False  # every clip kept on the training GPU (small datasets only)
    prefetch_batches: int = Field(2, ge=1)  # batches built ahead in a background thread
    # wrap G and D in DDP even with one worker: checks the multi-GPU code path (NCCL collectives) on one GPU
    use_ddp_for_one_worker: bool = False
    pretrained_generator: Path | None = None
    pretrained_discriminator: Path | None = None
    resume_from_rvc_dir: Path | None = None
    early_stop_patience: int | None = Field(None, ge=1)
    log_every_steps: int = Field(50, ge=1)
    nonfinite_loss_policy: Literal["raise", "skip"] = "raise"
    max_skipped_steps: int = Field(10, ge=0)
    export_every_save: bool = True
    num_preview_clips: int = Field(2, ge=0)
    # where metrics go (rvc_ray.train.trackers): "mlflow" reports to the server in MLFLOW_TRACKING_URI
    trackers: tuple[TrackerName, ...] = ("tensorboard", "jsonl")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if len(set(self.trackers)) != len(self.trackers):
            raise ValueError(f"train.trackers names a tracker twice: {list(self.trackers)}")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1 or 'auto', got {self.batch_size}")
        if (self.pretrained_generator is None) != (self.pretrained_discriminator is None):
            raise ValueError("train.pretrained_generator and train.pretrained_discriminator must be given together")
        return self


class ScalingConfig(_Node):
    """Ray Train workers. NCCL is used on GPUs and gloo on CPUs unless ``backend`` says otherwise."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    max_failures: int = Field(2, ge=0)
    # Ray Train's checkpoint storage, a location like experiment.work_dir (default: <work_dir>/<name>/train)
    storage_path: str | None = None
    # where Ray places the workers: auto = SPREAD for CPU workers (each node's cores used, not two workers
    # with fractional CPUs packed on one), PACK for GPU workers (fewest nodes, fastest NCCL); see docs/cluster.md
    placement_strategy: Literal["auto", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "auto"

    @property
    def resolved_placement_strategy(self) -> Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]:
        """Ray Train's ``placement_strategy``: ``auto`` is SPREAD on CPUs and PACK on GPUs."""
        if self.placement_strategy != "auto":
            return self.placement_strategy
        return "PACK" if self.use_gpu else "SPREAD"

    @property
    def resolved_backend(self) -> Literal["nccl", "gloo"]:
        """The torch.distributed backend: ``nccl`` with GPUs, ``gloo`` without, unless forced."""
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.use_gpu else "gloo"

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        if self.backend == "nccl" and not self.use_gpu:
            raise ValueError("scaling.backend=nccl needs scaling.use_gpu=true; use gloo (or auto) on CPU workers")
        if self.use_gpu and self.num_workers > 1 and self.gpus_per_worker < 1 and self.resolved_backend == "nccl":
            raise ValueError(
                f"scaling.gpus_per_worker={self.gpus_per_worker:g} with {self.num_workers} workers on NCCL: two ranks "
                "cannot share a GPU under NCCL; use gpus_per_worker=1 (or scaling.backend=gloo)"
            )
        return self


class TuneConfig(_Node):
    """Hyperparameter search over the global batch size and the adversarial weight (and more)."""

    batch_sizes: tuple[int, ...] = (4, 8)
    c_adv_min: float = Field(0.25, ge=0)
    c_adv_max: float = Field(2.0, ge=0)
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period_epochs: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)
    time_budget_s: float | None = Field(None, gt=0)
    metric: Literal["val/mel_l1", "val/mcd"] = "val/mel_l1"

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if self.c_adv_min > self.c_adv_max:
            raise ValueError("tune.c_adv_min must be <= tune.c_adv_max")
        if not self.batch_sizes:
            raise ValueError("tune.batch_sizes must not be empty")
        return self


class ServeConfig(_Node):
    """Ray Serve application serving every voice of a directory."""

    voices_dir: str = Field("voices", min_length=1, description="Local directory or URI (s3://...) of the voices.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    num_replicas: int = Field(1, ge=1)
    autoscale_max_replicas: int | None = Field(None, ge=1)
    cpus_per_replica: float = Field(1.0, gt=0)
    gpus_per_replica: float = Field(0.0, ge=0)
    max_voices_per_replica: int = Field(4, ge=1)
    max_voice_memory_mb: float = Field(2048.0, gt=0)
    max_upload_mb: float = Field(20.0, gt=0)
    max_duration_s: float = Field(120.0, gt=0)
    api_key: str | None = None
    f0_method: F0Method = "rmvpe"
    result_cache_mb: float = Field(256.0, gt=0)
    max_voices_per_request: int = Field(16, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


def split_global_batch(global_batch_size: int, num_workers: int) -> int:
    """Items per optimizer step on each worker: the global batch (``train.batch_size``) divided across
    ``num_workers``; the one place this is computed (config, sampler, training loop).

    Raises:
        ValueError: ``num_workers < 1``, or the global batch does not divide across the workers.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if global_batch_size < 1 or global_batch_size % num_workers:
        raise ValueError(
            f"the global batch size {global_batch_size} does not divide across {num_workers} workers; "
            f"choose a multiple of {num_workers}"
        )
    return global_batch_size // num_workers


class RunConfig(_Node):
    """The whole job: one object, parsed once, passed everywhere."""

    experiment: ExperimentConfig = ExperimentConfig()
    audio: AudioConfig = AudioConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    features: FeatureConfig = FeatureConfig()
    index: IndexConfig = IndexConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()
    tune: TuneConfig = TuneConfig()
    serve: ServeConfig = ServeConfig()

    @property
    def per_worker_batch_size(self) -> int | None:
        """The global ``train.batch_size`` divided by ``scaling.num_workers`` (validated to divide); None for
        ``auto`` (the workers find it: see the run's start record and ``metrics.jsonl``)."""
        if self.train.batch_size == "auto":
            return None
        return split_global_batch(self.train.batch_size, self.scaling.num_workers)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if math.prod(self.model.upsample_rates) != self.audio.hop_length:
            raise ValueError(
                f"the product of model.upsample_rates {self.model.upsample_rates} is "
                f"{math.prod(self.model.upsample_rates)}, but audio.hop_length is {self.audio.hop_length}; "
                "the decoder must upsample one frame to exactly one hop"
            )
        if isinstance(self.train.batch_size, int) and self.train.batch_size % self.scaling.num_workers:
            lower = self.train.batch_size - self.train.batch_size % self.scaling.num_workers
            raise ValueError(
                f"train.batch_size={self.train.batch_size} (the global batch) does not divide across "
                f"scaling.num_workers={self.scaling.num_workers}; choose a multiple of "
                f"{self.scaling.num_workers}, e.g. {lower or self.scaling.num_workers} or {lower + self.scaling.num_workers}"
            )
        if self.model.segment_frames > self.data.max_frames:
            raise ValueError("model.segment_frames must be <= data.max_frames")
        segment_frames_available = int(self.preprocess.segment_s * 100)
        if self.model.segment_frames > segment_frames_available:
            raise ValueError(
                f"model.segment_frames ({self.model.segment_frames}) is longer than a preprocessed segment "
                f"({segment_frames_available} frames for preprocess.segment_s={self.preprocess.segment_s})"
            )
        if self.train.nonfinite_loss_policy == "skip" and self.scaling.num_workers > 1:
            raise ValueError(
                "train.nonfinite_loss_policy=skip needs scaling.num_workers=1: a step skipped on one DDP worker "
                "but not the others would desynchronise them; use 'raise' (the run restarts from its checkpoint)"
            )
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("train.precision=fp16 needs GPUs (a GradScaler on CUDA); use bf16 or fp32 on CPU")
        if self.train.cache_dataset_on_gpu and not self.scaling.use_gpu:
            raise ValueError("train.cache_dataset_on_gpu needs scaling.use_gpu=true (it keeps the clips in GPU memory)")
        if self.model.version == "v1" and self.model.content_dim not in (256,):
            raise ValueError("model.version=v1 uses 256-d content features (model.content_dim=256)")
        for batch in self.tune.batch_sizes:
            if batch % self.scaling.num_workers:
                raise ValueError(
                    f"tune.batch_sizes contains {batch}, which does not divide across "
                    f"scaling.num_workers={self.scaling.num_workers}"
                )
        return self


# --------------------------------------------------------------------------- loading


def _preset_text(name: str) -> str:
    if name not in PRESET_NAMES:
        raise ConfigError(f"unknown preset {name!r}; built-in presets are {', '.join(PRESET_NAMES)}")
    return resources.files("rvc_ray.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job file must be a mapping of sections, got {type(data).__name__}")
    return data


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_job_mapping(job: Path | str) -> dict[str, Any]:
    """Read a job file or preset name, resolving one level of ``extends:``."""
    job_str = str(job)
    if job_str in PRESET_NAMES:
        return _read_yaml(_preset_text(job_str), f"preset {job_str}")
    path = Path(job)
    if not path.is_file():
        raise ConfigError(f"job file {path} does not exist (built-in presets: {', '.join(PRESET_NAMES)})")
    data = _read_yaml(path.read_text(encoding="utf-8"), str(path))
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_str = str(parent)
    if parent_str in PRESET_NAMES:
        base = _read_yaml(_preset_text(parent_str), f"preset {parent_str}")
    else:
        parent_path = (path.parent / parent_str).resolve()
        if not parent_path.is_file():
            raise ConfigError(f"{path}: extends {parent_str!r}, which is neither a preset nor a file")
        base = _read_yaml(parent_path.read_text(encoding="utf-8"), str(parent_path))
        if "extends" in base:
            raise ConfigError(f"{parent_path}: only one level of 'extends' is supported")
    return _deep_merge(base, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` into (path, value); the value is read as YAML (``8``, ``true``, ``[2,3]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if len(path) < 2:
        raise ConfigError(f"override {text!r}: the key must name a section and a field, e.g. train.batch_size=8")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return path, value


def apply_dotted_overrides(data: dict[str, Any], overrides: Iterable[tuple[str | Sequence[str], Any]]) -> None:
    """Set each ``(path, value)`` of ``overrides`` in the nested config mapping ``data`` (in place, in order).

    A path is dotted text (``"train.batch_size"``) or its parts (``["train", "batch_size"]``); a missing
    section is created. The one walker behind ``--set`` (:func:`load_run_config`) and Tune's trial values.

    Raises:
        ConfigError: a path runs through a value that is not a section.
    """
    for dotted, value in overrides:
        path = dotted.split(".") if isinstance(dotted, str) else list(dotted)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{loc}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - {loc}: {msg}" if loc else f"  - {msg}")
    return "\n".join(lines)


def load_run_config(
    job: Path | str | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Build the :class:`RunConfig` of a job.

    Args:
        job: a job YAML path or a preset name (see :data:`PRESET_NAMES`); ``None`` = defaults (RVC v2 40k).
        overrides: ``section.key=value`` strings applied in order after the job file.
        base: an optional mapping merged *under* the job file (used by Tune to start from a dumped config).

    Raises:
        ConfigError: with every problem listed, unknown keys named.
    """
    data: dict[str, Any] = dict(base or {})
    source = "defaults"
    if job is not None:
        data = _deep_merge(data, _load_job_mapping(job))
        source = str(job)
    apply_dotted_overrides(data, map(parse_override, overrides))
    if overrides:
        source += " + --set " + " ".join(overrides)
    try:
        return resolve_locations(RunConfig.model_validate(data))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def resolve_locations(cfg: RunConfig, *, base: Path | None = None) -> RunConfig:
    """``cfg`` with ``experiment.work_dir`` and ``scaling.storage_path`` as absolute locations.

    Relative local paths are made absolute against ``base`` (default: this process's directory); URIs are
    kept (trailing ``/`` dropped). Called once at the edge (:func:`load_run_config`), never in a worker.
    A path inside Ray's temporary copy of a job's working directory (what a relative path becomes under
    ``ray job submit --working-dir .``) is refused: Ray deletes that copy.
    """
    from rvc_ray.cluster import refuse_ephemeral_location
    from rvc_ray.storage import normalize_location

    work_dir = normalize_location(cfg.experiment.work_dir, base=base)
    refuse_ephemeral_location(work_dir, "experiment.work_dir")  # under `ray job submit`, a relative path lands here
    storage = cfg.scaling.storage_path
    storage = normalize_location(storage, base=base) if storage is not None else None
    if storage is not None:
        refuse_ephemeral_location(storage, "scaling.storage_path")
    if work_dir == cfg.experiment.work_dir and storage == cfg.scaling.storage_path:
        return cfg
    return cfg.model_copy(
        update={
            "experiment": cfg.experiment.model_copy(update={"work_dir": work_dir}),
            "scaling": cfg.scaling.model_copy(update={"storage_path": storage}),
        }
    )
