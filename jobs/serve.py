"""Serve every voice of a directory over HTTP with Ray Serve (the rvc-ray voice-conversion API).

The same options as `rvc-ray serve` (run `rvc-ray serve --help`):

    python jobs/serve.py --voices runs/demo/voices
    ray job submit --working-dir . -- python jobs/serve.py --voices /shared/voices \
        --config jobs/configs/rvc_v2_40k.yaml --set serve.host=0.0.0.0 --set serve.num_replicas=2

With ``--detach`` it deploys the app and exits, leaving it running on the cluster (delete it with
``serve delete rvc`` or ``serve shutdown``); otherwise it serves until the job is stopped.
"""

from __future__ import annotations

import sys

from _package_path import make_package_importable


def main(argv: list[str] | None = None) -> None:
    make_package_importable()
    from rvc_ray.cli import app

    app(args=["serve", *(sys.argv[1:] if argv is None else argv)], prog_name="jobs/serve.py")


if __name__ == "__main__":
    main()
