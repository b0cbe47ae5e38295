"""Serve every voice of a directory over HTTP with Ray Serve (the rvc-ray voice-conversion API).

    python jobs/serve.py --voices runs/demo/voices
    ray job submit --working-dir . -- python jobs/serve.py --voices /shared/voices \
        --config jobs/configs/rvc_v2_40k.yaml --set serve.host=0.0.0.0 --set serve.num_replicas=2

With ``--detach`` it deploys the app and exits, leaving it running on the cluster (delete it with
``serve delete rvc`` or ``serve shutdown``); otherwise it serves until the job is stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _package_path import make_package_importable

JOBS_DIR = Path(__file__).resolve().parent



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--voices",
        default=None,
        help="directory or URI (s3://bucket/runs/demo/voices) of <voice_id>.pth (+ .index) files "
        "(default: serve.voices_dir of the config)",
    )
    parser.add_argument("--config", "-c", default=None, help="job YAML or preset name (default: built-in defaults)")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--detach", action="store_true", help="deploy, print the address and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    make_package_importable()
    from rvc_ray.config import load_run_config
    from rvc_ray.errors import exit_status_of
    from rvc_ray.serve.app import run_serve

    def job() -> None:
        run_serve(load_run_config(args.config, args.overrides), voices_dir=args.voices, blocking=not args.detach)

    return exit_status_of(job)


if __name__ == "__main__":
    sys.exit(main())
