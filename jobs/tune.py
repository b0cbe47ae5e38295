"""Search the global batch size and adversarial weight (and more) of an RVC voice with Ray Tune.

Every trial is a full distributed training run (Ray Train) on the run's prepared features
(``<run>/features``, from ``python jobs/train.py ... --stop-after index``). With no arguments it sweeps
the demo voice with jobs/configs/tune_demo.yaml. The same options as `rvc-ray tune` (run `rvc-ray tune --help`):

    python jobs/tune.py
    ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/tune_demo.yaml \
        --search "optim.lr_generator=loguniform(1e-5,3e-4)" --search "train.batch_size=grid(4,8)"
    ray job submit --working-dir . -- python jobs/tune.py --config my_voice.yaml --search-file space.yaml --resume

Results go to ``<run>/tune/``: results.csv, results.json, results.png and best/ (best_config.yaml, the
best trial's voice and checkpoint). See docs/tuning.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _package_path import make_package_importable

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "tune_demo.yaml"


def main(argv: list[str] | None = None) -> None:
    make_package_importable()
    from rvc_ray.cli import app

    args = ["tune", *(sys.argv[1:] if argv is None else argv)]
    app(args=args, prog_name="jobs/tune.py", default_map={"tune": {"config": str(DEFAULT_CONFIG)}})


if __name__ == "__main__":
    main()
