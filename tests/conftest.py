"""Shared fixtures: one Ray instance per test session, pinned to this machine's 2 CPUs."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray instance shared by every test that needs Ray; started once, stopped at the end.

    Ray's temp dir lives under pytest's tmp dir so that only the processes started here are touched.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    num_cpus = int(os.environ.get("LFR_TEST_NUM_CPUS", "2"))
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=True,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
