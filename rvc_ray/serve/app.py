"""Building and running the Serve application from a :class:`RunConfig`.

``build_app(settings)`` returns the bound application (``VoiceApi`` ingress -> ``VoiceConverter``);
``run_serve(cfg, voices_dir)`` starts it on the cluster (``ensure_ray``), bound to ``serve.host:serve.port``.
This module imports neither ray nor torch at import time (the CLI imports it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvc_ray.serve.schemas import ServeSettings

if TYPE_CHECKING:
    from rvc_ray.config import RunConfig

__all__ = ["build_app", "build_settings", "run_serve"]

log = logging.getLogger(__name__)


def build_settings(cfg: RunConfig, voices_dir: Path | None = None) -> ServeSettings:
    """The app's settings: ``cfg.serve`` (voices dir overridden by ``voices_dir``) plus ``cfg.features``.

    Raises:
        FileNotFoundError: the voices directory does not exist.
    """
    serve_cfg = cfg.serve
    directory = Path(voices_dir if voices_dir is not None else serve_cfg.voices_dir).expanduser().resolve()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"voices directory {directory} does not exist (serve.voices_dir or --voices): it should hold "
            "<voice_id>.pth files (+ optional <voice_id>.index)"
        )
    return ServeSettings(
        voices_dir=directory,
        features=cfg.features.model_dump(mode="json"),
        f0_method=serve_cfg.f0_method,
        host=serve_cfg.host,
        port=serve_cfg.port,
        num_replicas=serve_cfg.num_replicas,
        autoscale_max_replicas=serve_cfg.autoscale_max_replicas,
        cpus_per_replica=serve_cfg.cpus_per_replica,
        gpus_per_replica=serve_cfg.gpus_per_replica,
        max_voices_per_replica=serve_cfg.max_voices_per_replica,
        max_voice_memory_mb=serve_cfg.max_voice_memory_mb,
        max_upload_mb=serve_cfg.max_upload_mb,
        max_duration_s=serve_cfg.max_duration_s,
        api_key=serve_cfg.api_key,
    )


def _converter_options(settings: ServeSettings) -> dict[str, Any]:
    """Replicas, resources and autoscaling of the ``VoiceConverter`` deployment."""
    actor_options: dict[str, Any] = {"num_cpus": settings.cpus_per_replica}
    if settings.gpus_per_replica > 0:
        actor_options["num_gpus"] = settings.gpus_per_replica
    options: dict[str, Any] = {
        "ray_actor_options": actor_options,
        "max_ongoing_requests": settings.max_ongoing_requests,
    }
    if settings.autoscale_max_replicas is not None and settings.autoscale_max_replicas > settings.num_replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.num_replicas,
            "initial_replicas": settings.num_replicas,
            "max_replicas": settings.autoscale_max_replicas,
            "target_ongoing_requests": max(1, settings.max_ongoing_requests // 2),
        }
    else:
        options["num_replicas"] = settings.num_replicas
    return options


def build_app(settings: ServeSettings) -> Any:
    """The Serve application (``serve.run`` it): ``VoiceApi`` bound to a ``VoiceConverter`` handle."""
    from rvc_ray.serve.deployment import VoiceApi, VoiceConverter

    raw = settings.model_dump(mode="json")
    converter = VoiceConverter.options(**_converter_options(settings)).bind(raw)
    return VoiceApi.options(ray_actor_options={"num_cpus": settings.ingress_cpus}).bind(raw, converter)


def run_serve(cfg: RunConfig, voices_dir: Path | None = None, blocking: bool = True) -> ServeSettings:
    """Deploy the voice-conversion app on the cluster (``RAY_ADDRESS`` or a local one).

    HTTP listens on ``cfg.serve.host:cfg.serve.port`` (only applied when this call starts Serve; a
    running Serve instance keeps its address). With ``blocking=True`` it serves until interrupted
    (Ctrl+C or SIGTERM, e.g. ``ray job stop``), then deletes the app; with ``blocking=False`` it returns once the app is RUNNING and
    leaves it deployed.

    Returns:
        The settings used (host, port, voices dir...).
    """
    from ray import serve

    from rvc_ray.cluster import ensure_ray

    settings = build_settings(cfg, voices_dir)
    ensure_ray()
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings), name=settings.app_name, route_prefix=settings.route_prefix, blocking=False)
    url = f"http://{settings.host}:{settings.port}"
    log.warning("rvc-ray serving voices of %s at %s (OpenAPI: %s/docs)", settings.voices_dir, url, url)
    print(f"serving {settings.voices_dir} at {url}  (API docs: {url}/docs)", flush=True)
    if blocking:
        _interrupt_on_sigterm()  # `ray job stop` sends SIGTERM: take the app down with the job
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("shutting down the app", flush=True)
            serve.delete(settings.app_name)
    return settings


def _interrupt_on_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
