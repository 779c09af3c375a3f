"""Entry point for ``ray job submit``: run (or resume) an LFR schedule on the cluster.

    ray job submit --working-dir . -- python jobs/pretrain.py --config demo train.num_workers=2

Inside a Ray job ``RAY_ADDRESS`` is set, so the driver connects to the cluster it was submitted to.
"""

import sys

from lfr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
