"""Sweep results: table, plot, best-trial selection and the winning job YAML (no Ray cluster needed)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from rvc_ray.config import RunConfig, load_run_config
from rvc_ray.tune.plot import plot_results
from rvc_ray.tune.results import (
    SavedEpoch,
    TrialRecord,
    copy_best_trial,
    describe_error,
    select_best,
    write_best_config,
    write_results_table,
)
from rvc_ray.tune.space import apply_overrides

METRIC = "val/mel_l1"
PATHS = ("train.batch_size", "loss.c_adv")


def _saved(*epochs: int) -> tuple[SavedEpoch, ...]:
    return tuple(SavedEpoch(e, f"/v/demo_e{e}_s{4 * e}.pth", f"/t/epoch_{e:05d}") for e in epochs)


def _records() -> list[TrialRecord]:
    return [
        TrialRecord("t0", "completed", {"train.batch_size": 2, "loss.c_adv": 0.5}, (3.0, 2.5), 30.0,
                    saved_epochs=_saved(1, 2)),
        TrialRecord("t1", "early_stopped", {"train.batch_size": 4, "loss.c_adv": 0.5}, (3.5,), 12.0,
                    saved_epochs=_saved(1)),
        TrialRecord("t2", "completed", {"train.batch_size": 2, "loss.c_adv": 1.5}, (3.1, 2.4), 31.0,
                    saved_epochs=_saved(2)),
        TrialRecord(
            "t3", "failed", {"train.batch_size": 4, "loss.c_adv": 1e39}, (), 5.0,
            error="NonFiniteLossError: loss_g/total is inf at step 1",
        ),
    ]  # fmt: skip


def test_select_best_ignores_failed_and_uses_the_latest_saved_epoch() -> None:
    records = _records()
    assert select_best(records).trial_id == "t2"
    assert select_best([records[3]]) is None
    nan_trial = TrialRecord("t4", "completed", {}, (1.0, math.nan), saved_epochs=_saved(2))
    assert nan_trial.score is None and nan_trial.best_metric == 1.0
    assert select_best([nan_trial, records[0]]).trial_id == "t0"


def test_score_and_files_come_from_the_same_saved_epoch() -> None:
    # reported epochs 1..3, saved (voice + checkpoint) at 2 only: epoch 3's better metric is never scored
    trial = TrialRecord("t5", "early_stopped", {}, (3.0, 2.6, 0.1), saved_epochs=_saved(2))
    assert (trial.scored.epoch, trial.score, trial.last_metric) == (2, 2.6, 0.1)
    assert trial.voice_path == "/v/demo_e2_s8.pth" and trial.checkpoint_path == "/t/epoch_00002"
    other = TrialRecord("t6", "completed", {}, (2.7, 2.65, 2.62), saved_epochs=_saved(2, 3))
    assert select_best([trial, other]) is trial  # 2.6 at its saved epoch beats 2.62, not 0.1 vs 2.62
    unsaved = TrialRecord("t7", "early_stopped", {}, (0.01,))  # stopped before its first save: no score
    assert unsaved.scored is None and unsaved.score is None and unsaved.voice_path is None
    assert select_best([unsaved, other]) is other


def test_results_table_csv_and_json(tmp_path: Path) -> None:
    csv_path, json_path = tmp_path / "results.csv", tmp_path / "results.json"
    write_results_table(_records(), str(csv_path), str(json_path), metric=METRIC, paths=PATHS)
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert [r["trial_id"] for r in rows] == ["t0", "t1", "t2", "t3"]
    assert [r["status"] for r in rows] == ["completed", "early_stopped", "completed", "failed"]
    assert rows[0]["train.batch_size"] == "2" and rows[0]["loss.c_adv"] == "0.5"
    assert rows[0][f"{METRIC}@e1"] == "3" and rows[0][f"{METRIC}@e2"] == "2.5"
    assert rows[1][f"{METRIC}@e2"] == "" and rows[1]["epochs"] == "1"
    assert rows[2][f"{METRIC}@last"] == "2.4" and rows[2][f"{METRIC}@scored"] == "2.4"
    assert rows[2]["scored_epoch"] == "2" and rows[2]["voice_path"] == "/v/demo_e2_s8.pth"
    assert rows[3]["error"].startswith("NonFiniteLossError") and rows[3][f"{METRIC}@last"] == ""
    payload = json.loads(json_path.read_text(encoding="utf-8"))
    assert payload["metric"] == METRIC and payload["searched_paths"] == list(PATHS)
    assert payload["trials"][0]["metric_per_epoch"] == [3.0, 2.5]
    assert payload["trials"][3]["status"] == "failed" and payload["trials"][3]["score"] is None


def test_plot_is_a_png(tmp_path: Path) -> None:
    png = plot_results(_records(), str(tmp_path / "plot.png"), metric=METRIC)
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Also with nothing but failures (no finite score): still a plot, no exception.
    plot_results([_records()[3]], str(tmp_path / "failed.png"), metric=METRIC)


def test_best_config_yaml_reloads_with_winning_values(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    best = _records()[2]
    trial_cfg = apply_overrides(tiny_cfg, best.config)
    path = write_best_config(trial_cfg, best, str(tmp_path / "best" / "best_config.yaml"), metric=METRIC)
    text = Path(path).read_text(encoding="utf-8")
    assert text.startswith("# Best trial") and "t2" in text and "saved epoch 2" in text
    reloaded = load_run_config(path)
    assert reloaded == trial_cfg
    assert reloaded.train.batch_size == 2 and reloaded.loss.c_adv == 1.5


def test_copy_best_trial_copies_the_scored_epoch(tmp_path: Path) -> None:
    voices = tmp_path / "trial" / "voices"
    voices.mkdir(parents=True)
    (voices / "demo_e1_s4.pth").write_bytes(b"epoch 1")
    (voices / "demo_e2_s8.pth").write_bytes(b"epoch 2")
    (voices / "demo.index").write_bytes(b"index")
    checkpoints = {}
    for epoch in (1, 2):
        checkpoints[epoch] = tmp_path / "trial" / f"epoch_{epoch:05d}"
        (checkpoints[epoch] / "sub").mkdir(parents=True)
        (checkpoints[epoch] / "state.pt").write_bytes(f"state {epoch}".encode())
        (checkpoints[epoch] / "sub" / "G.pth").write_bytes(f"G {epoch}".encode())
    saved = tuple(SavedEpoch(e, str(voices / f"demo_e{e}_s{4 * e}.pth"), str(checkpoints[e])) for e in (1, 2))
    record = TrialRecord("t0", "completed", {}, (1.0, math.nan), saved_epochs=saved)  # epoch 2 has no metric
    voice, ckpt = copy_best_trial(record, str(tmp_path / "best"))
    assert Path(voice).read_bytes() == b"epoch 1" and Path(voice).name == "demo_e1_s4.pth"
    assert (tmp_path / "best" / "demo.index").read_bytes() == b"index"
    assert (Path(ckpt) / "state.pt").read_bytes() == b"state 1" and (Path(ckpt) / "sub" / "G.pth").read_bytes() == b"G 1"
    # copying again (resumed sweep) replaces the previous copy
    copy_best_trial(record, str(tmp_path / "best"))
    assert copy_best_trial(TrialRecord("t1", "completed", {}, (1.0,)), str(tmp_path / "none")) == (None, None)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (None, None),
        (RuntimeError("boom"), "RuntimeError: boom"),
        (
            "Traceback (most recent call last):\n  File x\nrvc_ray.train.NonFiniteLossError: loss is nan job_id=01 x",
            "NonFiniteLossError: loss is nan",
        ),
        (  # Ray Train's controller error: a header line, then the cause
            "Traceback (most recent call last):\n  File x\nray.train.ControllerError: Training failed due to controller "
            "error:\ntraining rank 0 ran out of memory (CUDA out of memory); the trial is failed without retries",
            "ControllerError: Training failed due to controller error: training rank 0 ran out of memory (CUDA out of "
            "memory); the trial is failed without retries",
        ),
    ],
)
def test_describe_error(error: object, reason: str | None) -> None:
    assert describe_error(error)[0] == reason


def test_collect_trial_records_from_tune_results(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import pandas as pd

    from rvc_ray.tune.results import collect_trial_records

    checkpoint = tmp_path / "trial_a" / "epoch_00002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"s")
    voices = tmp_path / "trial_a" / "voices"
    voices.mkdir()
    (voices / "demo_e2_s8.pth").write_bytes(b"v")
    # trial a: restarted by a resumed sweep -> Tune's history starts again at epoch 2 (epoch 2 twice: last
    # wins); epoch 1 only survives in the Train run's metrics.jsonl
    frame_a = pd.DataFrame(
        {
            "epoch": [2, 2, 3],
            METRIC: [2.9, 2.5, 2.0],
            "val/mcd": [9.5, 9.0, 8.0],
            "checkpoint_path": [str(checkpoint), str(checkpoint), str(tmp_path / "deleted")],
        }
    )
    (tmp_path / "trial_a" / "metrics.jsonl").write_text(
        json.dumps({"kind": "step", "step": 1, METRIC: 0.1}) + "\n"
        + json.dumps({"kind": "epoch", "epoch": 1, METRIC: 3.0}) + "\n"
        + json.dumps({"kind": "epoch", "epoch": 2, METRIC: 9.9}) + "\n"
        + '{"kind": "epo'
    )  # fmt: skip
    results = [
        SimpleNamespace(
            metrics={"trial_id": "a", "time_total_s": 12.5, "val/mcd": 9.0, "epoch": 3},
            metrics_dataframe=frame_a, error=None, config={"loss.c_adv": 0.5, "train.batch_size": 2},
            checkpoint=None, path=str(tmp_path / "sweep" / "trial_a"),
        ),
        SimpleNamespace(  # a restored sweep's failed trial: no config on the Result, only params.json
            metrics={"trial_id": "b"}, metrics_dataframe=pd.DataFrame(), error=RuntimeError("CUDA out of memory"),
            config=None, checkpoint=None, path=str(tmp_path / "trial_b"),
        ),
        SimpleNamespace(
            metrics={"trial_id": "c"}, metrics_dataframe=pd.DataFrame({"epoch": [1], METRIC: [3.2]}), error=None,
            config={"loss.c_adv": 1.0, "train.batch_size": 4}, checkpoint=None, path=str(tmp_path / "trial_c"),
        ),
    ]  # fmt: skip
    (tmp_path / "trial_b").mkdir()
    (tmp_path / "trial_b" / "params.json").write_text('{"loss.c_adv": 1.5, "train.batch_size": 32}')
    records = collect_trial_records(
        results, metric=METRIC, max_epochs=3, paths=PATHS, train_run_dir_of=lambda tid: str(tmp_path / f"trial_{tid}")
    )
    assert [r.trial_id for r in collect_trial_records(results[::-1], metric=METRIC, max_epochs=3, paths=PATHS)] == [
        "a", "b", "c"
    ]
    a, b, c = records
    assert (a.trial_id, a.status, a.metric_per_epoch) == ("a", "completed", (3.0, 2.5, 2.0))
    assert a.saved_epochs == (SavedEpoch(2, str(voices / "demo_e2_s8.pth"), str(checkpoint)),)
    assert (a.scored.epoch, a.score) == (2, 2.5)  # epoch 3 (2.0) was reported but not saved
    assert a.config == {"train.batch_size": 2, "loss.c_adv": 0.5} and a.time_total_s == 12.5
    assert a.extra_metrics == {METRIC: 2.5, "val/mcd": 9.0}  # the scored epoch's, not the last report's
    assert (b.status, b.error, b.metric_per_epoch) == ("failed", "RuntimeError: CUDA out of memory", ())
    assert b.config == {"train.batch_size": 32, "loss.c_adv": 1.5}
    assert (c.status, c.voice_path, c.checkpoint_path) == ("early_stopped", None, None)
    lost = collect_trial_records(
        [SimpleNamespace(metrics={"trial_id": "d"}, metrics_dataframe=pd.DataFrame({"epoch": [2], METRIC: [2.2]}),
                         error=None, config={}, checkpoint=None, path=str(tmp_path / "trial_d"))],
        metric=METRIC, max_epochs=3, paths=PATHS,
    )[0]  # fmt: skip
    assert math.isnan(lost.metric_per_epoch[0]) and lost.metric_per_epoch[1:] == (2.2,)
    assert (lost.epochs, lost.score, lost.last_metric, lost.best_metric) == (2, None, 2.2, 2.2)  # nothing saved
    assert select_best(records) is a
