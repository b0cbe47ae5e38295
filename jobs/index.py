"""Build the voice's FAISS IVF retrieval index as its own Ray task.

The same options as `rvc-ray index` (run `rvc-ray index --help`):

    python jobs/index.py --config rvc_v2_40k --set experiment.name=my_voice --set index.num_cpus=8
    ray job submit --working-dir . -- python jobs/index.py --config rvc_v2_40k --set experiment.name=my_voice --set index.num_cpus=8
"""

from __future__ import annotations

import sys

from _package_path import make_package_importable


def main(argv: list[str] | None = None) -> None:
    make_package_importable()
    from rvc_ray.cli import app

    app(args=["index", *(sys.argv[1:] if argv is None else argv)], prog_name="jobs/index.py")


if __name__ == "__main__":
    main()
