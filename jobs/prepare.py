"""Entry point for ``ray job submit``: tokenize raw text into blocks on the cluster (Ray Data).

    ray job submit --working-dir . -- python jobs/prepare.py \\
        data.inputs=[s3://bucket/corpus/] data.output_dir=/mnt/shared/data/corpus

``data.output_dir`` must be an absolute path on a filesystem every node mounts (docs/running.md).
"""

import sys

from lfr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
