"""The command line parses config at the edge and reports bad config with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rvc_ray.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def ray_must_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command connects to Ray before it has checked its inputs."""
    import rvc_ray.cluster

    def refuse() -> None:
        raise AssertionError("Ray must not be started before the inputs are checked")

    monkeypatch.setattr(rvc_ray.cluster, "ensure_ray", refuse)


def test_help_lists_every_stage() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("preprocess", "extract", "index", "train", "tune", "serve", "convert", "demo"):
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
    for script in ("train", "tune", "serve", "preprocess", "extract", "index"):
        out = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / f"{script}.py"), "--help"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, (script, out.stderr)
        assert "--config" in out.stdout


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
