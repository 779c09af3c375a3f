"""lfr-ray: Learn-Focus-Review language-model pretraining on Ray.

The Python API (used by the CLI, the jobs and notebooks)::

    from lfr_ray.config import load_config
    from lfr_ray.data import prepare
    from lfr_ray.pipeline import run
"""

__version__ = "0.1.0"
