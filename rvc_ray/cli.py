"""The ``rvc-ray`` command line: the only place (with jobs/*.py) that parses arguments.

Every command loads one :class:`~rvc_ray.config.RunConfig` from ``--config`` (a job YAML or a preset
name) plus ``--set section.key=value`` overrides, then calls the stage's entry function, which checks its
inputs and only then connects to (or starts) Ray itself. Heavy imports
(torch, ray) happen inside the commands, so ``rvc-ray --help`` is instant.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from rvc_ray.config import RunConfig, load_run_config
from rvc_ray.errors import user_errors_exit_2
from rvc_ray.features.f0_methods import F0_METHODS
from rvc_ray.layout import RunLayout
from rvc_ray.pipeline import StopAfter

app = typer.Typer(
    name="rvc-ray",
    help="Distributed training and serving of RVC voices on Ray.",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Job YAML (jobs/configs/*.yaml) or preset: rvc_v2_32k|rvc_v2_40k|rvc_v2_48k|tiny_cpu."),
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")
]


def _load(config: str | None, overrides: list[str] | None, default: str = "rvc_v2_40k") -> RunConfig:
    with user_errors_exit_2():
        return load_run_config(config or default, overrides or [])


def _run_stage(stage: Callable[..., object], *args: object, **kwargs: object) -> None:
    """Run a stage entry function and print its result; unusable user input is a one-line error (exit 2)."""
    with user_errors_exit_2():
        result = stage(*args, **kwargs)
    _print_result(result)


def _print_result(result: object) -> None:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(result) and not isinstance(result, type):
        typer.echo(json.dumps(asdict(result), indent=2, default=str))
    else:
        typer.echo(str(result))


@app.command()
def preprocess(
    input: Annotated[list[str], typer.Option("--input", "-i", help="Speaker folder(s), or one folder of speaker sub-folders (path or URI).")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Dataset location (default: <run>/dataset).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Validate, slice, filter, normalise and resample raw recordings into a Parquet dataset (Ray tasks on the cluster in use, else worker processes here)."""
    cfg = _load(config, set_)
    from rvc_ray.preprocess import run_preprocess

    _run_stage(run_preprocess, cfg, input, output or RunLayout.from_config(cfg).dataset_location)


@app.command()
def extract(
    dataset: Annotated[str | None, typer.Option(help="Preprocessed dataset location (default: <run>/dataset).")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Feature location (default: <run>/features).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Extract F0 (pitch) and content features for every segment (Ray Data actors, GPUs if configured)."""
    cfg = _load(config, set_)
    from rvc_ray.features.extract import run_extract

    layout = RunLayout.from_config(cfg)
    _run_stage(run_extract, cfg, dataset or layout.dataset_location, output or layout.features_location)


@app.command()
def index(
    features: Annotated[str | None, typer.Option(help="Feature location (default: <run>/features).")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Index location (default: <run>/index/<name>.index).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Build the voice's FAISS IVF retrieval index from the training features."""
    cfg = _load(config, set_)
    from rvc_ray.features.index import run_index

    layout = RunLayout.from_config(cfg)
    _run_stage(run_index, cfg, features or layout.features_location, output or layout.index_location)


@app.command()
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    input: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="Raw recordings (paths or URIs): run the whole pipeline first.")
    ] = None,
    features: Annotated[str | None, typer.Option(help="Train on an existing feature location.")] = None,
) -> None:
    """Train a voice with Ray Train (DDP). With --input, preprocess/extract/index first."""
    cfg = _load(config, set_)
    layout = RunLayout.from_config(cfg)
    if input:
        _run_pipeline(cfg, input)
        return
    from rvc_ray.train.launch import fit

    _run_stage(fit, cfg, features or layout.features_location, index_path=layout.index_location)


@app.command()
def pipeline(
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c",
            help="Job YAML or preset (default: tiny_cpu on the demo corpus, rvc_v2_40k with --input).",
        ),
    ] = None,
    set_: SetOption = None,
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="Speaker folder(s), or one folder of speaker sub-folders, path or URI (default: the demo corpus)."
        ),
    ] = None,
    stop_after: Annotated[StopAfter | None, typer.Option(help="Stop after this stage.")] = None,
    demo_seconds: Annotated[
        float, typer.Option(help="Seconds of generated audio per demo speaker (without --input only).")
    ] = 60.0,
) -> None:
    """The whole job: preprocess -> extract -> index -> train -> export (what jobs/train.py runs).

    Without --input it runs on the built-in demo corpus, generated into the run's corpus/ folder.
    """
    cfg = _load(config or ("rvc_v2_40k" if input else "tiny_cpu"), set_)
    _run_pipeline(cfg, input or [], stop_after=stop_after.value if stop_after else None, demo_seconds=demo_seconds)


@app.command()
def demo(set_: SetOption = None) -> None:
    """Run the whole pipeline on the built-in demo corpus with the tiny preset (same as jobs/train.py)."""
    _run_pipeline(_load("tiny_cpu", set_), [])


def _run_pipeline(cfg: RunConfig, inputs: list[str], *, stop_after: str | None = None, demo_seconds: float = 60.0) -> None:
    """Check the inputs and the run's locations, then run the pipeline (on the demo corpus when ``inputs`` is empty)."""
    from rvc_ray.pipeline import check_inputs, prepare_demo_inputs, prepare_run, run_pipeline
    from rvc_ray.storage import normalize_location

    with user_errors_exit_2():
        locations: list[Path | str] = [normalize_location(i) for i in inputs]
        check_inputs(locations, cfg.preprocess.extensions)
        prepare_run(cfg)  # refuses a work_dir some node cannot use before the demo corpus is written there
        locations = locations or prepare_demo_inputs(cfg, seconds_per_speaker=demo_seconds)
        run_pipeline(cfg, locations, stop_after=stop_after, locations_checked=True)


@app.command()
def tune(
    config: ConfigOption = None,
    set_: SetOption = None,
    features: Annotated[str | None, typer.Option(help="Feature location, path or URI (default: <run>/features).")] = None,
    search: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra search dimension: path=choice(a,b)|grid(a,b)|uniform(a,b)|loguniform(a,b)|randint(a,b) (repeatable)."
        ),
    ] = None,
    search_file: Annotated[Path | None, typer.Option(help="YAML search space {path: expression}.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume an interrupted sweep of the same name.")] = False,
    index_path: Annotated[
        str | None, typer.Option("--index", help="Index (path or URI) copied beside the trial voices (default: the run's).")
    ] = None,
) -> None:
    """Search the global batch size and adversarial weight (and more) with Ray Tune + ASHA.

    Prints the sweep's result as JSON; exits 1 when no trial was scored (no best trial).
    """
    cfg = _load(config, set_)
    from rvc_ray.tune.launch import run_tune

    # run_tune validates the whole search space before it connects to Ray
    with user_errors_exit_2():
        result = run_tune(
            cfg,
            features or RunLayout.from_config(cfg).features_location,
            search=search or [],
            search_file=search_file,
            resume=resume,
            index_path=index_path,
        )
    _print_result(result)
    if result.best_trial_id is None:
        raise typer.Exit(1)


@app.command()
def serve(
    voices: Annotated[
        str | None, typer.Option(help="Directory or URI (s3://...) of <voice_id>.pth (+ .index) files.")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", help="Deploy, print the address and exit; the app keeps running (remove it: serve delete rvc)."
        ),
    ] = False,
) -> None:
    """Serve every voice of a directory over HTTP with Ray Serve (blocks until interrupted, unless --detach)."""
    cfg = _load(config, set_)
    from rvc_ray.serve.app import run_serve

    with user_errors_exit_2():
        run_serve(cfg, voices_dir=voices, blocking=not detach)


@app.command()
def convert(
    input_path: Annotated[Path, typer.Argument(help="Audio to convert (any common format and rate).")],
    output_path: Annotated[Path, typer.Argument(help="Where to write the converted WAV.")],
    voice: Annotated[Path, typer.Option(help="Voice .pth (rvc-ray, RVC-WebUI or Applio export).")],
    index_path: Annotated[Path | None, typer.Option("--index", help="The voice's .index file.")] = None,
    f0_up_key: Annotated[float, typer.Option(help="Transpose in semitones.")] = 0.0,
    index_rate: Annotated[float, typer.Option(help="Retrieval mix 0..1.")] = 0.75,
    protect: Annotated[float, typer.Option(help="Protect unvoiced consonants 0..0.5 (0.5 = off).")] = 0.33,
    rms_mix_rate: Annotated[float, typer.Option(help="1 = output envelope, 0 = input envelope.")] = 0.25,
    filter_radius: Annotated[int, typer.Option(help="Median filter radius for F0 (>= 3 applies it).")] = 3,
    speaker_id: Annotated[int, typer.Option(help="Speaker id for multi-speaker voices.")] = 0,
    output_sample_rate: Annotated[int, typer.Option(help="Resample the output to this rate (0 = voice rate).")] = 0,
    f0_method: Annotated[str | None, typer.Option(help=f"{'|'.join(F0_METHODS)} (default from config).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Convert one audio file offline with a trained voice."""
    cfg = _load(config, set_)
    from rvc_ray.inference.converter import convert_file
    from rvc_ray.inference.options import ConversionOptions

    try:
        options = ConversionOptions(
            f0_up_key=f0_up_key,
            index_rate=index_rate,
            protect=protect,
            rms_mix_rate=rms_mix_rate,
            filter_radius=filter_radius,
            speaker_id=speaker_id,
            output_sample_rate=output_sample_rate or None,
            f0_method=f0_method,  # None: the configured one if it can run here, else the voice's, else fcpe
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if index_path is None:
        index_path = _index_beside(voice)
        typer.echo(f"index: {index_path}" if index_path else "index: none found beside the voice, retrieval off", err=True)
    _run_stage(convert_file, voice, index_path, input_path, output_path, options, cfg.features, cfg.serve.precision)


def _index_beside(voice: Path) -> Path | None:
    """``<stem>.index`` beside a voice, or ``<name>.index`` for a training export ``<name>_e<E>_s<S>.pth``."""
    from rvc_ray.serve.voices import InvalidVoiceIdError, VoiceNotFoundError, VoiceRegistry

    try:
        index = VoiceRegistry(voice.parent).resolve(voice.stem).index
        return Path(index) if index else None
    except (InvalidVoiceIdError, VoiceNotFoundError):
        return None


@app.command("demo-corpus")
def demo_corpus(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write spk<i>/ sub-folders into.")],
    speakers: Annotated[int, typer.Option(help="Number of speakers.")] = 2,
    seconds: Annotated[float, typer.Option(help="Seconds of audio per speaker.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed = identical files).")] = 0,
) -> None:
    """Write the built-in synthetic demo corpus (its ground-truth F0 goes to <output>_f0/)."""
    from rvc_ray.demo_corpus import generate_demo_corpus

    files = generate_demo_corpus(output, num_speakers=speakers, seconds_per_speaker=seconds, seed=seed)
    typer.echo(f"wrote {len(files)} files, {sum(f.duration_s for f in files):.1f} s, to {output}")


@app.command("show-config")
def show_config(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the fully resolved configuration as YAML (what a run would use)."""
    import yaml

    cfg = _load(config, set_)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def main() -> None:  # pragma: no cover - console entry
    """Console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
