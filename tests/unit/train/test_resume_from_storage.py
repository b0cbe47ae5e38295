"""A restarted worker group that Ray gave no checkpoint resumes from the newest complete one in storage."""

from __future__ import annotations

from pathlib import Path

from rvc_ray.train.checkpoint import META_FILE, STATE_FILE, newest_stored_checkpoint


def _checkpoint(run_dir: Path, name: str, files: tuple[str, ...]) -> None:
    (run_dir / name).mkdir(parents=True)
    for file in files:
        (run_dir / name / file).write_text("x")


def test_the_newest_complete_epoch_directory_is_chosen(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _checkpoint(run_dir, "epoch_00001", (META_FILE, STATE_FILE))
    _checkpoint(run_dir, "epoch_00003", (META_FILE, STATE_FILE))
    _checkpoint(run_dir, "epoch_00004", (META_FILE,))  # upload cut short: no state.pt
    _checkpoint(run_dir, "tensorboard/epoch_00009", (META_FILE, STATE_FILE))  # not a checkpoint of this run
    _checkpoint(run_dir, "epoch_7", (META_FILE, STATE_FILE))  # not a name the loop writes

    checkpoint = newest_stored_checkpoint(str(run_dir))

    assert checkpoint is not None
    assert Path(checkpoint.path) == run_dir / "epoch_00003"


def test_no_checkpoint_in_storage_is_none(tmp_path: Path) -> None:
    assert newest_stored_checkpoint(str(tmp_path / "missing")) is None
    _checkpoint(tmp_path, "epoch_00002", (META_FILE,))
    assert newest_stored_checkpoint(str(tmp_path)) is None
