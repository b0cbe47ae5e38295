"""The ``VoiceConverter`` deployment: loaded voices (multiplexed per replica) and the conversion itself.

The ingress calls it through a handle with ``multiplexed_model_id=<voice_id>@<fingerprint>``
(:attr:`rvc_ray.serve.voices.VoiceFiles.cache_key`), so Serve routes a voice to a replica that already
holds it, and a voice file replaced under the same name is a new model id: it is loaded fresh on the
next request while the old copy ages out of the LRU. A replica keeps at most ``max_voices_per_replica``
voices and at most ``max_voice_memory_mb`` of them (least recently used evicted first), and shares one
content encoder and F0 extractor across its voices. Remote voices are downloaded into a local cache
once per fingerprint (:meth:`rvc_ray.serve.voices.VoiceRegistry.fetch`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

import numpy as np
from ray import serve

from rvc_ray.inference.options import ConversionOptions
from rvc_ray.serve.schemas import ServeSettings
from rvc_ray.serve.voices import VoiceRegistry

__all__ = ["VoiceConverter", "VoiceTooLargeError"]

logger = logging.getLogger("ray.serve")
_MB = 1024 * 1024


class VoiceTooLargeError(RuntimeError):
    """A voice alone is larger than ``max_voice_memory_mb``."""


def _voice_id_of(model_id: str) -> str:
    return model_id.split("@", 1)[0]


@serve.deployment(name="VoiceConverter", health_check_period_s=10, health_check_timeout_s=30)
class VoiceConverter:
    """Holds loaded voices (multiplexed) and converts 16 kHz audio with them."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import torch

        from rvc_ray.inference.analysis import AnalysisModels

        self.settings = ServeSettings.model_validate(settings)
        self.registry = VoiceRegistry(self.settings.serve.voices_dir, self.settings.voice_cache_dir)
        self.device = "cuda" if self.settings.serve.gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"
        torch.set_num_threads(max(1, int(self.settings.serve.cpus_per_replica)))
        self.analysis = AnalysisModels(self.settings.features, self.device)
        self._voice_bytes: dict[str, int] = {}
        self._load_counts: dict[str, int] = {}

        async def load_voice(model_id: str) -> Any:
            return await self._load_voice(model_id)

        # Created per instance so that the count cap comes from the config (Serve supports this form).
        self._load_fn = load_voice
        self._get_voice = serve.multiplexed(max_num_models_per_replica=self.settings.serve.max_voices_per_replica)(
            load_voice
        )

    def _loaded_ids(self) -> list[str]:
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        return list(wrapper.models) if wrapper is not None else []

    async def _make_room(self, needed: int) -> None:
        """Evict least recently used voices until ``needed`` more bytes fit under the memory cap.

        Uses the multiplex wrapper's own LRU eviction (it runs under the wrapper's load lock, where
        this is called from), so Serve's routing table stays right.
        """
        cap = int(self.settings.serve.max_voice_memory_mb * _MB)
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        if wrapper is None:
            return
        while wrapper.models and sum(self._voice_bytes.get(v, 0) for v in wrapper.models) + needed > cap:
            evicted = next(iter(wrapper.models))
            await wrapper.unload_model_lru()
            self._voice_bytes.pop(evicted, None)
            logger.info("evicted voice %r to stay under max_voice_memory_mb", evicted)

    async def _load_voice(self, model_id: str) -> Any:
        from rvc_ray.inference.converter import VoiceConverterPipeline

        voice_id = _voice_id_of(model_id)
        loop = asyncio.get_running_loop()
        files = await loop.run_in_executor(None, self.registry.resolve, voice_id)
        estimate = 2 * files.size_bytes  # fp16 exports become fp32 in memory; FAISS + a vector copy for the index
        cap = int(self.settings.serve.max_voice_memory_mb * _MB)
        if estimate > cap:
            raise VoiceTooLargeError(
                f"voice {voice_id!r} needs about {estimate / _MB:.0f} MB, more than max_voice_memory_mb="
                f"{self.settings.serve.max_voice_memory_mb:g}"
            )
        await self._make_room(estimate)
        local = await loop.run_in_executor(None, self.registry.fetch, files)
        pipeline = await loop.run_in_executor(
            None,
            lambda: VoiceConverterPipeline.from_files(
                local.model_path,
                local.index_path,
                self.analysis,
                configured_f0_method=self.settings.serve.f0_method,
                name=voice_id,
                device=self.device,
                precision=self.settings.serve.precision,
            ),
        )
        self._voice_bytes[model_id] = pipeline.memory_bytes()
        self._load_counts[voice_id] = self._load_counts.get(voice_id, 0) + 1
        logger.info("loaded voice %r (%s, %.1f MB)", voice_id, model_id, self._voice_bytes[model_id] / _MB)
        return pipeline

    async def convert(self, model_id: str, wav_16k: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """Convert ``wav_16k [N]`` with the voice ``model_id`` (``<voice_id>@<fingerprint>``).

        Returns ``{"wav", "sample_rate", "report"}``.
        """
        pipeline = await self._get_voice(model_id)
        parsed = ConversionOptions.model_validate(options)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, pipeline.convert, wav_16k, parsed)
        return {"wav": result.wav, "sample_rate": result.sample_rate, "report": asdict(result.report)}

    async def replica_stats(self) -> dict[str, Any]:
        """This replica's voices: ``loaded`` (voice id -> measured bytes, LRU order) and ``loads`` (id -> count)."""
        return {
            "loaded": {_voice_id_of(m): self._voice_bytes.get(m, 0) for m in self._loaded_ids()},
            "loads": dict(self._load_counts),
        }

    def check_health(self) -> None:
        if not self.registry.remote and not self.registry.is_readable():
            raise RuntimeError("the voices directory is gone")
