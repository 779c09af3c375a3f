"""The shipped cluster files, and the placement they rely on.

* Every ``cluster*.yaml`` passes Ray's own autoscaler checks (``prepare_config`` then
  ``validate_config``), so a typo fails here rather than half-way through ``ray up``.
* The layout keeps its promises: a head with CPU 0, worker types that start at 0, the custom
  resources lfr-ray's placement options name, and Ray pinned to the version lfr-ray is built for.
* On Ray's fake multi-node provider (every "node" a raylet on this machine, GPUs logical), the same
  node types scale up for an lfr-ray run and are removed when idle.
"""

from __future__ import annotations

import copy
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from lfr_ray.config import NODE_RESOURCE_PER_WORKER, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted(REPO.glob("cluster*.yaml"))
TRAIN_RESOURCE, SCORE_RESOURCE = "lfr_train", "lfr_score"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _worker_types(cfg: dict) -> dict[str, dict]:
    return {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def _ray_checks(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_cluster_files_are_shipped():
    assert REPO / "cluster.yaml" in CLUSTER_FILES


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_passes_ray_schema(path):
    prepared = _ray_checks(_load(path))
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize("typo", ["top-level", "node-type", "node-type value"])
def test_schema_check_catches_typos(typo):
    import jsonschema

    cfg = _load(REPO / "cluster.yaml")
    if typo == "top-level":
        cfg["idle_timeout_minute"] = cfg.pop("idle_timeout_minutes")
    elif typo == "node-type":
        cfg["available_node_types"]["gpu_train"]["min_worker"] = 0
    else:
        cfg["available_node_types"]["gpu_train"]["resources"][TRAIN_RESOURCE] = 0.5  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        _ray_checks(cfg)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_layout(path):
    import ray

    cfg = _load(path)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "nothing that asks for a CPU may run on the head"
    workers = _worker_types(cfg)
    for name, node_type in workers.items():
        assert node_type.get("min_workers", 0) == 0, f"{name} should start only on demand"
        assert node_type.get("max_workers", 0) >= 1, f"{name} needs a maximum"
    assert sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"]
    # Each placement resource is declared by exactly one node type, and not by the head.
    for resource in (TRAIN_RESOURCE, SCORE_RESOURCE):
        assert [n for n, t in workers.items() if resource in t["resources"]] != []
        assert len([n for n, t in workers.items() if resource in t["resources"]]) == 1
        assert resource not in head["resources"]
    # Setup installs the Ray version lfr-ray pins (pyproject) and that this test runs with.
    commands = " ".join(cfg["setup_commands"] + cfg["head_setup_commands"] + cfg["worker_setup_commands"])
    pins = re.findall(r"ray\[[a-z,]+\]==([0-9.]+)", commands)
    assert pins and set(pins) == {ray.__version__}, pins
    assert "lfr-ray" in commands


def test_worker_resources_follow_the_config():
    assert load_config(None, []).train.worker_resources() == {"CPU": 1.0}
    train = load_config(None, ["train.use_gpu=true", "train.cpus_per_worker=4",
                               f"train.node_resource={TRAIN_RESOURCE}"]).train
    assert train.worker_resources() == {"CPU": 4.0, "GPU": 1.0, TRAIN_RESOURCE: NODE_RESOURCE_PER_WORKER}
    for bad in ("GPU", "node:10.0.0.1", "two words", ""):
        with pytest.raises(ConfigError, match="train.node_resource"):
            load_config(None, [f"train.node_resource={bad}"])


def test_storage_path_must_be_absolute_or_a_uri():
    assert load_config(None, ["run.storage_path=s3://bucket/lfr"]).run.storage_path == "s3://bucket/lfr"
    assert load_config(None, ["run.storage_path=/mnt/shared/ckpt"]).run.storage_path == "/mnt/shared/ckpt"
    with pytest.raises(ConfigError, match="run.storage_path"):
        load_config(None, ["run.storage_path=relative/ckpt"])


# --------------------------------------------------------------------------------------------
# Ray's fake multi-node autoscaler
# --------------------------------------------------------------------------------------------

# Resources the cloud would detect from each instance type; the fake provider needs them spelled
# out. GPUs are logical: nothing here asks for CUDA.
FAKE_DETECTED = {"cpu_worker": {"CPU": 2}, "gpu_score": {"CPU": 1, "GPU": 1}, "gpu_train": {"CPU": 1, "GPU": 1}}


def fake_cluster_config(gcs_address: str) -> dict:
    """cluster.yaml's node types (names, custom resources, head with CPU 0) on the fake provider.

    One node per type at most (each is a raylet on this 2-core machine) and a 6-second idle timeout.
    """
    shipped = _load(REPO / "cluster.yaml")
    workers = _worker_types(shipped)
    assert set(workers) == set(FAKE_DETECTED), "update FAKE_DETECTED to cluster.yaml's node types"
    node_types = {
        # The fake provider names its head node type ray.head.default.
        "ray.head.default": {"resources": shipped["available_node_types"][shipped["head_node_type"]]["resources"],
                             "node_config": {}, "max_workers": 0},
    }
    for name, node_type in workers.items():
        node_types[name] = {"resources": {**FAKE_DETECTED[name], **node_type["resources"]}, "node_config": {},
                            "min_workers": 0, "max_workers": 1}
    return {
        "cluster_name": "lfr-fake",
        "max_workers": len(workers),
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": node_types,
        "head_node_type": "ray.head.default",
        "auth": {}, "docker": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def _events(head) -> str:
    """The autoscaler's event lines (":event_summary:Adding 1 node(s) of type gpu_train.")."""
    log = head.logs / "monitor.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return "\n".join(line.split(":event_summary:", 1)[1] for line in lines if ":event_summary:" in line)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fake_autoscaler_adds_and_removes_nodes_for_a_run(tmp_path):
    """An lfr-ray run on an autoscaling cluster shaped like cluster.yaml, started from a head with no CPUs.

    Training workers ask for ``train.node_resource=lfr_train`` rather than ``train.use_gpu=true``: on
    the fake cluster GPUs are logical, and a worker with use_gpu would try to use CUDA. The custom
    resource is the same request that routes GPU training to gpu_train on AWS, so this shows the
    part the autoscaler decides: preparing the data (CPU tasks) starts a cpu_worker, training starts
    a gpu_train node (never a gpu_score one), the run completes, and both nodes go once idle. The
    run also sets ``run.storage_path``, so checkpoints are written outside the run directory.
    """
    from test_jobs import LocalRayHead

    head = LocalRayHead(num_cpus=0, extra_env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    config_path = head.temp_dir / "fake-cluster.yaml"
    config_path.write_text(yaml.safe_dump(fake_cluster_config(head.gcs_address)))
    head.cmd.append(f"--autoscaling-config={config_path}")
    head.start()
    try:
        run = head.run(
            sys.executable, "-m", "lfr_ray.cli", "run", "--config", "debug", "--address", head.gcs_address,
            f"data.output_dir={tmp_path / 'data'}", f"run.root_dir={tmp_path / 'runs'}", "run.name=fake",
            f"train.node_resource={TRAIN_RESOURCE}", "schedule.phases=[{kind: learn}]",
            f"run.storage_path={tmp_path / 'checkpoints'}",
            timeout=300,
        )
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:] + _events(head)
        assert (tmp_path / "runs" / "fake" / "_COMPLETE").exists()
        # run.storage_path moved the checkpoints out of the run directory (to <storage_path>/<run.name>).
        assert list((tmp_path / "checkpoints" / "fake").glob("checkpoint_*"))
        assert not (tmp_path / "runs" / "fake" / "train").exists()

        deadline = time.time() + 90
        while time.time() < deadline and not all(
            f"Removing 1 nodes of type {t} (idle)" in _events(head) for t in ("gpu_train", "cpu_worker")
        ):
            time.sleep(1)
        events = _events(head)
        assert "Adding 1 node(s) of type cpu_worker." in events, events
        assert "Adding 1 node(s) of type gpu_train." in events, events
        assert "gpu_score" not in events, events
        assert "Removing 1 nodes of type gpu_train (idle)." in events, events
        assert "Removing 1 nodes of type cpu_worker (idle)." in events, events
        status = head.run(str(Path(sys.executable).with_name("ray")), "status", "--address", head.gcs_address,
                          timeout=60)
        active = status.stdout.split("Active:")[1].split("Pending:")[0]
        assert "ray.head.default" in active and "gpu_train" not in active and "cpu_worker" not in active, status.stdout
    finally:
        leftover = head.stop()
    assert not leftover, f"processes of the test's Ray head outlived stop(): {leftover}"
