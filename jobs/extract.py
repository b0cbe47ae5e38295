"""Extract F0 and content features of a preprocessed dataset (Ray Data actors; GPUs when configured).

The same options as `rvc-ray extract` (run `rvc-ray extract --help`):

    python jobs/extract.py --config rvc_v2_40k --set experiment.name=my_voice --set features.use_gpu=true
    ray job submit --working-dir . -- python jobs/extract.py --config rvc_v2_40k --set experiment.name=my_voice --set features.use_gpu=true
"""

from __future__ import annotations

import sys

from _package_path import make_package_importable


def main(argv: list[str] | None = None) -> None:
    make_package_importable()
    from rvc_ray.cli import app

    app(args=["extract", *(sys.argv[1:] if argv is None else argv)], prog_name="jobs/extract.py")


if __name__ == "__main__":
    main()
