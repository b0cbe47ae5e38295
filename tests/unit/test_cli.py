"""The command line parses config at the edge and reports bad config with exit code 2."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
import yaml
from typer.testing import CliRunner

from rvc_ray.cli import app
from rvc_ray.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def ray_must_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command connects to Ray before it has checked its inputs, also when this process is
    told to join a cluster (``RAY_ADDRESS``: the per-node location checks would run then)."""
    import rvc_ray.cluster

    def refuse() -> None:
        raise AssertionError("Ray must not be started before the inputs are checked")

    monkeypatch.setattr(rvc_ray.cluster, "ensure_ray", refuse)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")


def test_help_lists_every_stage() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("preprocess", "extract", "index", "train", "pipeline", "tune", "serve", "convert", "demo"):
        assert command in result.output


def test_show_config_prints_the_resolved_config_with_overrides() -> None:
    result = runner.invoke(app, ["show-config", "--config", "tiny_cpu", "--set", "train.batch_size=8"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    assert data["train"]["batch_size"] == 8 and data["audio"]["sample_rate"] == 16000


def test_bad_override_exits_2_with_the_key_named() -> None:
    result = runner.invoke(app, ["show-config", "--config", "tiny_cpu", "--set", "train.nope=1"])
    assert result.exit_code == 2
    assert "unknown key 'train.nope'" in result.output


def test_demo_corpus_command_writes_files(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    result = runner.invoke(app, ["demo-corpus", "--output", str(out), "--speakers", "1", "--seconds", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "spk0").iterdir()) == ["spk0_00.wav"]  # only audio in the corpus
    assert sorted(p.name for p in (tmp_path / "corpus_f0" / "spk0").iterdir()) == ["spk0_00.f0.npy"]


def test_importing_the_package_and_cli_imports_neither_torch_nor_ray() -> None:
    code = "import sys, rvc_ray, rvc_ray.cli, rvc_ray.config; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_train_job_rejects_bad_config_before_starting_anything() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train.py"), "--set", "train.batch_size=3"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert out.returncode == 2
    assert "does not divide across scaling.num_workers=2" in out.stderr


def test_tune_rejects_a_bad_search_path_with_exit_2_before_starting_ray(tmp_path: Path, ray_must_not_start: None) -> None:
    result = runner.invoke(
        app,
        ["tune", "--config", "tiny_cpu", "--set", f"experiment.work_dir={tmp_path}", "--features", str(tmp_path),
         "--search", "optim.nope=uniform(1,2)"],
    )
    assert result.exit_code == 2, result.output
    assert "optim.nope" in result.output


def test_every_job_script_starts_and_shows_its_help() -> None:
    flags = {
        "train": ("--input", "--stop-after", "--demo-seconds", "demo.yaml"),
        "tune": ("--search", "--search-file", "--features", "--index", "--resume", "tune_demo.yaml"),
        "serve": ("--voices", "--detach"),
        "preprocess": ("--input", "--output"),
        "extract": ("--dataset", "--output"),
        "index": ("--features", "--output"),
    }
    for script, expected in flags.items():
        out = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / f"{script}.py"), "--help"], capture_output=True, text=True, timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert out.returncode == 0, (script, out.stderr)
        assert "--config" in out.stdout
        assert [flag for flag in expected if flag not in out.stdout] == [], (script, out.stdout)


def _run_job(script: str, argv: list[str]) -> int:
    """Run ``jobs/<script>.py``'s ``main(argv)`` in this process (so monkeypatches apply); its exit status."""
    main = runpy.run_path(str(ROOT / "jobs" / f"{script}.py"), run_name="job")["main"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code or 0)


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Replace the pipeline's stage functions by recorders: (name, what it was given), in call order."""
    import rvc_ray.pipeline

    calls: list[tuple[str, object]] = []
    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    monkeypatch.setattr(rvc_ray.pipeline, "check_inputs", lambda inputs, extensions: calls.append(("check", inputs)))
    monkeypatch.setattr(rvc_ray.pipeline, "prepare_run", lambda cfg: calls.append(("prepare_run", cfg)))

    def demo_inputs(cfg: object, *, seconds_per_speaker: float) -> list[str]:
        calls.append(("demo_corpus", seconds_per_speaker))
        return ["/corpus/spk0"]

    def run(cfg: object, inputs: list[str], *, stop_after: str | None, locations_checked: bool) -> None:
        calls.append(("run", (inputs, stop_after, locations_checked)))

    monkeypatch.setattr(rvc_ray.pipeline, "prepare_demo_inputs", demo_inputs)
    monkeypatch.setattr(rvc_ray.pipeline, "run_pipeline", run)
    return calls


def test_train_job_runs_the_demo_pipeline_with_its_flags(pipeline_calls: list[tuple[str, object]]) -> None:
    status = _run_job("train", ["--stop-after", "index", "--demo-seconds", "5", "--set", "experiment.name=job"])
    assert status == 0
    assert [name for name, _ in pipeline_calls] == ["check", "prepare_run", "demo_corpus", "run"]
    cfg = pipeline_calls[1][1]
    assert isinstance(cfg, RunConfig)
    assert (cfg.experiment.name, cfg.audio.sample_rate) == ("job", 16000)  # jobs/configs/demo.yaml: the tiny preset
    assert pipeline_calls[2][1] == 5.0
    assert pipeline_calls[3][1] == (["/corpus/spk0"], "index", True)


def test_pipeline_with_input_skips_the_demo_corpus(tmp_path: Path, pipeline_calls: list[tuple[str, object]]) -> None:
    result = runner.invoke(app, ["pipeline", "-i", "s3://bucket/voice/", "-i", "recordings", "--stop-after", "extract"])
    assert result.exit_code == 0, result.output
    inputs = ["s3://bucket/voice", str(Path.cwd() / "recordings")]  # locations, as every stage takes them
    assert pipeline_calls[0] == ("check", inputs)
    assert [name for name, _ in pipeline_calls] == ["check", "prepare_run", "run"]
    assert pipeline_calls[2][1] == (inputs, "extract", True)
    assert cast(RunConfig, pipeline_calls[1][1]).audio.sample_rate == 40000  # rvc_v2_40k for a real dataset


def test_stop_after_refuses_an_unknown_stage_before_starting_ray(ray_must_not_start: None) -> None:
    result = runner.invoke(app, ["pipeline", "--stop-after", "train"])
    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())  # typer draws the error in a wrapped box
    assert "Invalid value for '--stop-after'" in message and "'train' is not one of 'preprocess', 'extract', 'index'" in message
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train.py"), "--stop-after", "bogus"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "--stop-after" in out.stderr


def test_job_scripts_default_to_their_job_yaml() -> None:
    for script, job in (("train", "demo.yaml"), ("tune", "tune_demo.yaml")):
        out = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / f"{script}.py"), "--set", "train.nope=1"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 2, (script, out.stderr)
        assert out.stderr.startswith(f"error: invalid configuration ({ROOT / 'jobs' / 'configs' / job} + --set")


@dataclass
class _FakeTuneResult:
    best_trial_id: str | None
    sweep_dir: str = "/runs/demo/tune"


def test_tune_takes_locations_prints_the_result_and_exits_1_without_a_best_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rvc_ray.tune.launch

    given: list[tuple[object, object]] = []
    best: list[str | None] = [None, "trial_1"]

    def fake_run_tune(cfg: RunConfig, features: object, **kwargs: object) -> _FakeTuneResult:
        given.append((features, kwargs["index_path"]))
        return _FakeTuneResult(best.pop(0))

    monkeypatch.setattr(rvc_ray.tune.launch, "run_tune", fake_run_tune)
    args = ["tune", "-c", "tiny_cpu", "--features", "s3://bucket/feats", "--index", "gs://bucket/voice.index"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert json.loads(result.output) == {"best_trial_id": None, "sweep_dir": "/runs/demo/tune"}
    assert given == [("s3://bucket/feats", "gs://bucket/voice.index")]  # locations, not Path("s3:/bucket/feats")
    result = runner.invoke(app, ["tune", "-c", "tiny_cpu", "--set", "experiment.work_dir=s3://bucket/runs"])
    assert result.exit_code == 0, result.output
    assert given[1] == ("s3://bucket/runs/demo/features", None)  # the run's features, on the bucket too


def test_serve_detach_deploys_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    import rvc_ray.serve.app

    given: list[tuple[object, bool]] = []
    monkeypatch.setattr(
        rvc_ray.serve.app, "run_serve", lambda cfg, voices_dir, blocking: given.append((voices_dir, blocking))
    )
    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    assert _run_job("serve", ["--voices", "s3://bucket/voices", "--detach"]) == 0
    assert runner.invoke(app, ["serve", "--voices", "/voices"]).exit_code == 0
    assert given == [("s3://bucket/voices", False), ("/voices", True)]


def test_stage_commands_name_a_missing_input_before_starting_ray(tmp_path: Path, ray_must_not_start: None) -> None:
    missing = tmp_path / "no_such_folder"
    result = runner.invoke(app, ["preprocess", "--input", str(missing), "--config", "tiny_cpu",
                                 "--set", f"experiment.work_dir={tmp_path}"])
    assert result.exit_code == 2, result.output
    assert f"input folder {missing} does not exist" in result.output


def test_unusable_input_is_one_line_and_exit_2_everywhere(tmp_path: Path, ray_must_not_start: None) -> None:
    from rvc_ray.errors import InputError

    speaker = tmp_path / "spk"
    speaker.mkdir()
    work = f"experiment.work_dir={tmp_path / 'work'}"
    result = runner.invoke(app, ["preprocess", "-i", str(speaker), "-i", str(speaker), "-c", "tiny_cpu", "-s", work])
    assert result.exit_code == 2, result.output
    assert "the same input folder was given twice" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

    # a corrupt voice file in `convert` is the user's input too, not a crash
    voice = tmp_path / "voice.pth"
    voice.write_bytes(b"not a checkpoint")
    audio = tmp_path / "in.wav"
    audio.write_bytes(b"RIFF")
    result = runner.invoke(app, ["convert", str(audio), str(tmp_path / "out.wav"), "--voice", str(voice), "-c", "tiny_cpu"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("index: none found")
    assert "error: voice 'voice' could not be loaded" in result.output and "Traceback" not in result.output

    # the job script that users submit: same rule, and nothing else ran
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train.py"), "--input", str(tmp_path / "missing"), "--set", work],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"error: input folder {tmp_path / 'missing'} does not exist"
    assert not (tmp_path / "work").exists()

    from rvc_ray.config import ConfigError
    from rvc_ray.inference.options import VoiceLoadError
    from rvc_ray.train.launch import TrainingSetupError

    assert all(issubclass(e, InputError) for e in (ConfigError, VoiceLoadError, TrainingSetupError))
