"""Entry point for ``ray job submit``: run (or resume) an LFR schedule on the cluster.

    ray job submit --working-dir . -- python jobs/pretrain.py --config demo \\
        data.output_dir=/mnt/shared/data/demo run.root_dir=/mnt/shared/runs \\
        train.num_workers=8 train.use_gpu=true train.node_resource=lfr_train

Inside a Ray job ``RAY_ADDRESS`` is set, so the driver connects to the cluster it was submitted to.
Give data and run directories as absolute paths on a filesystem every node mounts: a relative path
lands in the job's temporary copy of the working directory (docs/running.md).
"""

import sys

from lfr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
