"""Raw recordings -> validated, sliced, resampled Parquet dataset (Ray Data). See docs/dataset.md."""

from rvc_ray.preprocess.discovery import InputDiscovery, SkippedFile, SourceFile, SpeakerSource, discover_inputs
from rvc_ray.preprocess.pipeline import BadFile, PreprocessResult, run_preprocess
from rvc_ray.preprocess.shards import SEGMENT_SCHEMA

__all__ = [
    "SEGMENT_SCHEMA",
    "BadFile",
    "InputDiscovery",
    "PreprocessResult",
    "SkippedFile",
    "SourceFile",
    "SpeakerSource",
    "discover_inputs",
    "run_preprocess",
]
