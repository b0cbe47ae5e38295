"""Search the global batch size and adversarial weight (and more) of an RVC voice with Ray Tune.

Every trial is a full distributed training run (Ray Train) on the run's prepared features
(``<run>/features``, from ``python jobs/train.py ... --stop-after index``). With no arguments it sweeps
the demo voice with jobs/configs/tune_demo.yaml:

    python jobs/tune.py
    ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/tune_demo.yaml \
        --search "optim.lr_generator=loguniform(1e-5,3e-4)" --search "train.batch_size=grid(4,8)"
    ray job submit --working-dir . -- python jobs/tune.py --config my_voice.yaml --search-file space.yaml --resume

Results go to ``<run>/tune/``: results.csv, results.json, results.png and best/ (best_config.yaml, the
best trial's voice and checkpoint). See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from _package_path import make_package_importable

JOBS_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = JOBS_DIR / "configs" / "tune_demo.yaml"



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default=None, help="job YAML or preset (default: jobs/configs/tune_demo.yaml)")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument(
        "--search",
        action="append",
        default=[],
        help="extra dimension path=choice(a,b)|grid(a,b)|uniform(a,b)|loguniform(a,b)|randint(a,b) (repeatable)",
    )
    parser.add_argument("--search-file", type=Path, default=None, help="YAML search space {path: expression}")
    parser.add_argument("--features", type=Path, default=None, help="feature directory (default: <run>/features)")
    parser.add_argument("--index", type=Path, default=None, help="FAISS index for the voices (default: the run's)")
    parser.add_argument("--resume", action="store_true", help="resume the interrupted sweep of this run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    make_package_importable()
    from rvc_ray.config import load_run_config
    from rvc_ray.errors import exit_status_of
    from rvc_ray.layout import RunLayout
    from rvc_ray.tune.launch import run_tune

    def job() -> int:
        cfg = load_run_config(args.config or DEFAULT_CONFIG, args.overrides)
        features = args.features or RunLayout.from_config(cfg).features_dir
        result = run_tune(
            cfg, features, search=args.search, search_file=args.search_file, resume=args.resume, index_path=args.index
        )
        print(json.dumps(asdict(result), indent=2, default=str))
        return 0 if result.best_trial_id is not None else 1

    return exit_status_of(job)


if __name__ == "__main__":
    sys.exit(main())
