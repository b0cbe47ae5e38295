"""Validate, slice, filter, normalise and resample raw recordings into a Parquet dataset (Ray Data).

The same options as `rvc-ray preprocess` (run `rvc-ray preprocess --help`):

    python jobs/preprocess.py --input /data/my_voice --config rvc_v2_40k --set experiment.name=my_voice
    ray job submit --working-dir . -- python jobs/preprocess.py --input /data/my_voice --config rvc_v2_40k --set experiment.name=my_voice
"""

from __future__ import annotations

import sys

from _package_path import make_package_importable


def main(argv: list[str] | None = None) -> None:
    make_package_importable()
    from rvc_ray.cli import app

    app(args=["preprocess", *(sys.argv[1:] if argv is None else argv)], prog_name="jobs/preprocess.py")


if __name__ == "__main__":
    main()
