"""Entry point for ``ray job submit``: run (or reuse) a comparison of LFR against baselines, then report.

    ray job submit --working-dir . -- python jobs/compare.py --config demo compare.seeds=[0,1,2]

Inside a Ray job ``RAY_ADDRESS`` is set, so the driver connects to the cluster it was submitted to.
"""

import sys

from lfr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
