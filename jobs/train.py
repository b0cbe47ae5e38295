"""Train an RVC voice end to end on Ray: preprocess -> extract -> index -> train -> export.

The same options as `rvc-ray pipeline` (run `rvc-ray pipeline --help`), with jobs/configs/demo.yaml as the
default config.

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

import sys
from pathlib import Path

from _package_path import make_package_importable

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> None:
    make_package_importable()
    from rvc_ray.cli import app

    args = ["pipeline", *(sys.argv[1:] if argv is None else argv)]
    app(args=args, prog_name="jobs/train.py", default_map={"pipeline": {"config": str(DEFAULT_CONFIG)}})


if __name__ == "__main__":
    main()
