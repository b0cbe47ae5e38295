"""A recorded training-health failure stops Ray Train's restart at once, keeps its class, and is cleared per fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from rvc_ray.train.health_marker import (
    HEALTH_FAILURE_FILE,
    clear_health_failure,
    record_health_failure,
    refuse_to_replay_health_failure,
)
from rvc_ray.train.steps import LearningRateTooLowError, NonFiniteLossError, TrainingHealthError


def test_record_then_refuse_raises_the_same_class_until_cleared(tmp_path: Path) -> None:
    refuse_to_replay_health_failure(tmp_path)  # nothing recorded: no error

    record_health_failure(tmp_path, 1, NonFiniteLossError("non-finite generator loss: mel = NaN/Inf"))
    record_health_failure(tmp_path, 0, LearningRateTooLowError("later, other rank"))  # the first record stays
    with pytest.raises(NonFiniteLossError, match=r"non-finite generator loss: mel = NaN/Inf \[rank 1, in an earlier"):
        refuse_to_replay_health_failure(tmp_path)

    clear_health_failure(tmp_path)
    assert not (tmp_path / HEALTH_FAILURE_FILE).exists()
    refuse_to_replay_health_failure(tmp_path)
    clear_health_failure(tmp_path)  # clearing twice is fine


@pytest.mark.parametrize(
    "content", ['{"error": "ValueError", "message": "m", "rank": 0}', "{not json", '{"error": "os", "message": "m"}']
)
def test_a_foreign_or_broken_record_still_stops_as_a_health_error(tmp_path: Path, content: str) -> None:
    (tmp_path / HEALTH_FAILURE_FILE).write_text(content)
    with pytest.raises(TrainingHealthError) as caught:
        refuse_to_replay_health_failure(tmp_path)
    assert type(caught.value) is TrainingHealthError
