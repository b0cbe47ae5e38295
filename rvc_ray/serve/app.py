"""Building and running the Serve application from a :class:`RunConfig`.

``build_app(settings)`` returns the bound application (``VoiceApi`` ingress -> ``VoiceConverter``);
``run_serve(cfg, voices)`` starts it on the cluster (``ensure_ray``), bound to ``serve.host:serve.port``.
This module imports neither ray nor torch at import time (the CLI imports it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rvc_ray.serve.schemas import ServeSettings

if TYPE_CHECKING:
    from rvc_ray.config import RunConfig

__all__ = ["build_app", "build_settings", "ingress_max_ongoing_requests", "run_serve", "storage_environment"]

log = logging.getLogger(__name__)


def build_settings(cfg: RunConfig, voices: str | Path | None = None) -> ServeSettings:
    """The app's settings: ``cfg.serve`` (voices location overridden by ``voices``) plus ``cfg.features``.

    ``voices`` (or ``serve.voices_dir``) is a local directory or a URI such as ``s3://bucket/runs/demo/voices``.

    Raises:
        FileNotFoundError: a local voices directory does not exist.
        rvc_ray.storage.StorageError: a remote location cannot be listed (no bucket, refused credentials...).
    """
    from rvc_ray import storage

    serve_cfg = cfg.serve
    location = storage.normalize_location(str(voices if voices is not None else serve_cfg.voices_dir))
    if not storage.is_remote(location) and not Path(location).is_dir():
        raise FileNotFoundError(
            f"voices directory {location} does not exist (serve.voices_dir or --voices): it should hold "
            "<voice_id>.pth files (+ optional <voice_id>.index)"
        )
    if storage.is_remote(location):
        _check_remote_voices(location)
    return ServeSettings(serve=serve_cfg.model_copy(update={"voices_dir": location}), features=cfg.features)


def _check_remote_voices(location: str) -> None:
    """Fail now, with one line, when the bucket of ``location`` is missing or cannot be read."""
    import pyarrow.fs

    from rvc_ray import storage

    fs, path = storage.filesystem_and_path(location)
    bucket = path.split("/", 1)[0]
    try:
        missing = fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound
        if not missing:
            storage.list_files(location, suffix=".pth")
    except (OSError, ValueError) as exc:
        raise storage.StorageError(
            f"cannot list voices at {location}: {' '.join(str(exc).split())[:300]}; check AWS_ENDPOINT_URL and "
            "the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        ) from exc
    if missing:
        raise storage.StorageError(f"cannot list voices at {location}: the bucket {bucket!r} does not exist")


def _converter_options(settings: ServeSettings) -> dict[str, Any]:
    """Replicas, resources and autoscaling of the ``VoiceConverter`` deployment."""
    actor_options: dict[str, Any] = {"num_cpus": settings.serve.cpus_per_replica}
    if settings.serve.gpus_per_replica > 0:
        actor_options["num_gpus"] = settings.serve.gpus_per_replica
    options: dict[str, Any] = {
        "ray_actor_options": actor_options,
        "max_ongoing_requests": settings.max_ongoing_requests,
    }
    if (
        settings.serve.autoscale_max_replicas is not None
        and settings.serve.autoscale_max_replicas > settings.serve.num_replicas
    ):
        options["autoscaling_config"] = {
            "min_replicas": settings.serve.num_replicas,
            "initial_replicas": settings.serve.num_replicas,
            "max_replicas": settings.serve.autoscale_max_replicas,
            "target_ongoing_requests": max(1, settings.max_ongoing_requests // 2),
        }
    else:
        options["num_replicas"] = settings.serve.num_replicas
    return options


def ingress_max_ongoing_requests(settings: ServeSettings) -> int:
    """Requests the single ``VoiceApi`` replica takes at once: what every converter replica can hold, and more.

    Each conversion keeps its ingress request open while a converter works on it, so the ingress must
    admit at least the converters' total capacity (``max_ongoing_requests`` x the most replicas they can
    scale to); the same again is headroom for listing, the page, cached results and queued uploads.
    Serve's default (5) would cap the whole app at 5 requests in flight whatever the replica count.
    """
    most_replicas = max(settings.serve.num_replicas, settings.serve.autoscale_max_replicas or 0)
    return max(16, 2 * most_replicas * settings.max_ongoing_requests)


def build_app(settings: ServeSettings, storage_env: dict[str, str] | None = None) -> Any:
    """The Serve application (``serve.run`` it): ``VoiceApi`` bound to a ``VoiceConverter`` handle.

    ``storage_env`` (the ``AWS_*`` variables of the deploying process, see :func:`storage_environment`)
    is given to both deployments' replicas, so they reach the same object store.
    """
    from ray.serve import Deployment

    from rvc_ray.serve import deployment

    # @serve.deployment turns the classes into Deployments; mypy still sees the classes.
    converter_deployment = cast(Deployment, deployment.VoiceConverter)
    api_deployment = cast(Deployment, deployment.VoiceApi)
    raw = settings.model_dump(mode="json")
    converter_options = _converter_options(settings)
    ingress_actor: dict[str, Any] = {"num_cpus": settings.ingress_cpus}
    if storage_env:
        runtime_env = {"env_vars": dict(storage_env)}
        converter_options["ray_actor_options"]["runtime_env"] = runtime_env
        ingress_actor["runtime_env"] = runtime_env
    converter = converter_deployment.options(**converter_options).bind(raw)
    return api_deployment.options(
        ray_actor_options=ingress_actor,
        max_ongoing_requests=ingress_max_ongoing_requests(settings),
        max_queued_requests=-1,
    ).bind(raw, converter)


def storage_environment(location: str, environ: dict[str, str]) -> dict[str, str]:
    """The standard object-store variables in ``environ`` that replicas need for a remote ``location``."""
    from rvc_ray import storage

    if not storage.is_remote(location):
        return {}
    names = (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "GOOGLE_APPLICATION_CREDENTIALS",
    )
    return {name: environ[name] for name in names if environ.get(name)}


def run_serve(
    cfg: RunConfig,
    voices_dir: str | Path | None = None,
    blocking: bool = True,
    storage_env: dict[str, str] | None = None,
) -> ServeSettings:
    """Deploy the voice-conversion app on the cluster (``RAY_ADDRESS`` or a local one).

    HTTP listens on ``cfg.serve.host:cfg.serve.port`` (only applied when this call starts Serve; a
    running Serve instance keeps its address). With ``blocking=True`` it serves until interrupted
    (Ctrl+C or SIGTERM, e.g. ``ray job stop``), then deletes the app; with ``blocking=False`` it returns once the app is RUNNING and
    leaves it deployed.

    ``voices_dir`` is a local directory or a URI (``s3://bucket/runs/demo/voices``); for a URI, the
    ``storage_env`` variables (default: the ``AWS_*`` ones of this process) are given to the replicas.

    Returns:
        The settings used (host, port, voices location...).
    """
    from ray import serve

    from rvc_ray.cluster import ensure_ray

    settings = build_settings(cfg, voices_dir)
    ensure_ray()
    serve.start(http_options={"host": settings.serve.host, "port": settings.serve.port})
    if storage_env is None:
        import os

        storage_env = storage_environment(settings.serve.voices_dir, dict(os.environ))
    serve.run(
        build_app(settings, storage_env), name=settings.app_name, route_prefix=settings.route_prefix, blocking=False
    )
    url = f"http://{settings.serve.host}:{settings.serve.port}"
    log.warning("rvc-ray serving voices of %s at %s (OpenAPI: %s/docs)", settings.serve.voices_dir, url, url)
    print(f"serving {settings.serve.voices_dir} at {url}  (listening page: {url}/ , API docs: {url}/docs)", flush=True)
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
