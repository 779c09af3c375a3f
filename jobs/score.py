"""Entry point for ``ray job submit``: score every training block with a run's latest checkpoint.

    ray job submit --working-dir . -- python jobs/score.py --config demo scoring.max_actors=4

Inside a Ray job ``RAY_ADDRESS`` is set, so the driver connects to the cluster it was submitted to.
"""

import sys

from lfr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
