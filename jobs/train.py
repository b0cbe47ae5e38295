"""Train an RVC voice end to end on Ray: preprocess -> extract -> index -> train -> export.

With no arguments it runs the whole pipeline on the built-in demo corpus with the tiny CPU preset:

    python jobs/train.py                       (runs/demo/ under the current directory)
    ray job submit --working-dir . -- python jobs/train.py --set experiment.work_dir=s3://my-bucket/runs

Under ``ray job submit`` the work_dir must be a URI or an absolute path every node shares: a relative one
would resolve inside Ray's temporary copy of the working directory, and is refused (docs/cluster.md).
With a real dataset and job config:

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/rvc_v2_40k.yaml \
        --input s3://my-bucket/data/my_voice --set experiment.name=my_voice --set experiment.work_dir=s3://my-bucket/runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _package_path import make_package_importable

JOBS_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = JOBS_DIR / "configs" / "demo.yaml"



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default=None, help="job YAML or preset name (default: jobs/configs/demo.yaml)")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--input", "-i", dest="inputs", action="append", default=[],
                        help="speaker folder(s) or one folder of speaker sub-folders, local or a URI such as "
                             "s3://bucket/recordings (default: the demo corpus)")
    parser.add_argument("--stop-after", choices=["preprocess", "extract", "index"], default=None,
                        help="stop after this stage")
    parser.add_argument("--demo-seconds", type=float, default=60.0,
                        help="seconds of generated audio per demo speaker (demo only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    make_package_importable()
    from rvc_ray.config import load_run_config
    from rvc_ray.errors import exit_status_of
    from rvc_ray.pipeline import check_inputs, prepare_demo_inputs, prepare_run, run_pipeline
    from rvc_ray.storage import normalize_location

    def job() -> None:
        cfg = load_run_config(args.config or DEFAULT_CONFIG, args.overrides)
        inputs = [normalize_location(i) for i in args.inputs]
        check_inputs(inputs, cfg.preprocess.extensions)
        prepare_run(cfg)  # refuses a work_dir some node cannot use before the demo corpus is written there
        inputs = inputs or prepare_demo_inputs(cfg, seconds_per_speaker=args.demo_seconds)
        run_pipeline(cfg, inputs, stop_after=args.stop_after, locations_checked=True)

    return exit_status_of(job)


if __name__ == "__main__":
    sys.exit(main())
