"""The main job end to end: demo corpus -> preprocess -> extract -> index -> 2-worker DDP training -> voice,
then an offline conversion with the exported voice and its index (what `python jobs/train.py` and
`rvc-ray convert` do)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from rvc_ray.config import load_run_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def test_demo_pipeline_trains_exports_and_converts(ray_cluster: None, tmp_path: Path) -> None:
    from rvc_ray.inference.converter import convert_file
    from rvc_ray.inference.options import ConversionOptions
    from rvc_ray.pipeline import prepare_demo_inputs, run_pipeline

    cfg = load_run_config(
        Path(__file__).resolve().parents[2] / "jobs" / "configs" / "demo.yaml",
        [f"experiment.work_dir={tmp_path}", "train.epochs=2", "train.save_every_epochs=1"],
    )
    inputs = prepare_demo_inputs(cfg, seconds_per_speaker=30.0)
    assert [p.name for p in inputs] == ["spk0", "spk1"]

    result = run_pipeline(cfg, inputs)
    layout = result.layout

    # every stage left its output where the layout says
    report = json.loads(result.preprocess.report_path.read_text())
    assert {s["speaker_id"] for s in report["speakers"]} == {0, 1} and result.preprocess.num_segments > 0
    manifest = json.loads((layout.features_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["content_encoder"]["learned_content"] is False
    assert result.extract.num_mute == 2 * cfg.features.mute_rows_per_speaker and result.extract.num_val >= 1
    assert result.index.num_vectors > 0 and layout.index_path.stat().st_size > 0

    # two workers trained the global batch, one export per save, metrics and TensorBoard written
    train = result.train
    assert (train.global_batch_size, train.per_worker_batch_size, train.epochs_completed) == (4, 2, 2)
    assert [p.name for p in train.exported_voices] == sorted(p.name for p in train.exported_voices)
    assert len(train.exported_voices) == 2 and all(p.is_file() for p in train.exported_voices)
    epochs = [json.loads(line) for line in layout.metrics_path.read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["kind"] == "epoch"] == [1, 2]
    assert any(p.stat().st_size > 0 for p in layout.tensorboard_dir.glob("events.out.tfevents.*"))

    # the voice is in RVC's inference format and says its features carry no learned content
    voice = torch.load(train.exported_voices[-1], map_location="cpu", weights_only=False)
    assert {"weight", "config", "info", "sr", "f0", "version"} <= set(voice)
    assert voice["version"] == "v2" and voice["f0"] == 1 and voice["config"][-1] == cfg.audio.sample_rate
    assert not any(key.startswith("enc_q.") for key in voice["weight"])
    assert all(t.dtype == torch.float16 for t in voice["weight"].values() if t.is_floating_point())

    # and it converts audio offline, with its retrieval index, to the same duration at the voice's rate
    source = sorted(inputs[1].glob("*.wav"))[0]
    out = tmp_path / "converted.wav"
    conversion = convert_file(
        train.exported_voices[-1], layout.index_path, source, out, ConversionOptions(f0_up_key=-5), cfg.features
    )
    wav, rate = sf.read(out)
    assert rate == cfg.audio.sample_rate and conversion.used_index
    assert abs(len(wav) / rate - sf.info(source).duration) < 0.05
    assert 0 < abs(wav).max() <= 0.99
