"""`ray job submit` on a Ray head started here, the way a user runs lfr-ray on any cluster.

``LocalRayHead`` starts ``ray start --head`` in its own session, temp dir, ports and auth token, and
stops it by ending that session's processes. Never ``ray stop``: it ends every Ray process on the
machine, other people's included. ``test_cluster.py`` reuses it for the fake autoscaling cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalRayHead:
    """A Ray head node on this machine that touches nothing outside its own temp dir and ports."""

    def __init__(self, num_cpus: int, *, extra_env: dict[str, str] | None = None):
        # Ray puts Unix sockets under the temp dir and their paths must stay under 107 bytes, so the
        # dir is short and in /tmp rather than under pytest's (long) tmp_path.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lfr-", dir="/tmp"))
        (self.gcs_port, self.dashboard_port, client, agent, agent_grpc, metrics, runtime_env, node_manager,
         object_manager) = free_ports(9)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            # Token authentication with a token of this cluster alone; every client below gets it too.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.cmd = [
            RAY, "start", "--head", f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={self.temp_dir}",
            f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}", "--min-worker-port=0", "--max-worker-port=0",
            "--disable-usage-stats",
        ]  # a caller may append flags before start(), e.g. --autoscaling-config
        self.pgid: int | None = None

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def logs(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"

    def start(self) -> "LocalRayHead":
        # A new session: every daemon `ray start` leaves behind (GCS, raylet, dashboard, autoscaler
        # and the nodes it launches) stays in this process group, which stop() ends.
        proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.pgid = proc.pid
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{out}")
        return self

    def run(self, *args: str, timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
        """A command run as a client of this cluster (its address, its token)."""
        return subprocess.run(list(args), env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def _own_pids(self) -> list[int]:
        """Live processes in this head's process group or naming its temp dir."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if state != "Z" and (int(pgrp) == self.pgid or str(self.temp_dir).encode() in cmdline):
                pids.append(int(entry.name))
        return pids

    def stop(self) -> list[int]:
        """End this head's processes (SIGTERM, then SIGKILL); return any that are still alive."""
        if self.pgid is None:
            return []
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in self._own_pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait_s
            while self._own_pids() and time.time() < deadline:
                time.sleep(0.2)
            if not self._own_pids():
                break
        leftover = self._own_pids()
        self.pgid = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return leftover


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ray_job_submit_pretrain(tmp_path):
    """`ray job submit --working-dir . -- python jobs/pretrain.py ...` runs the tiny config to SUCCEEDED;
    the run directory and the prepared data land at the paths from the config, not in the job's
    working directory."""
    data_dir, root = tmp_path / "data", tmp_path / "runs"
    head = LocalRayHead(num_cpus=2).start()
    try:
        job_id = f"lfr-test-{secrets.token_hex(4)}"
        submit = head.run(
            RAY, "job", "submit", "--address", head.dashboard_url, "--submission-id", job_id,
            "--working-dir", ".", "--",
            "python", "jobs/pretrain.py", "--config", "debug", f"data.output_dir={data_dir}",
            f"run.root_dir={root}", "run.name=job", "schedule.phases=[{kind: learn}, {kind: focus, keep_frac: 0.5}]",
            timeout=330,
        )
        assert submit.returncode == 0, submit.stdout[-5000:] + submit.stderr[-5000:]
        status = head.run(RAY, "job", "status", "--address", head.dashboard_url, job_id, timeout=60)
        assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
        # Token authentication is on: a client holding another token is turned away.
        head.env["RAY_AUTH_TOKEN"], token = secrets.token_hex(32), head.env["RAY_AUTH_TOKEN"]
        refused = head.run(RAY, "job", "status", "--address", head.dashboard_url, job_id, timeout=60)
        head.env["RAY_AUTH_TOKEN"] = token
        assert refused.returncode != 0 and "succeeded" not in refused.stdout + refused.stderr
        assert "Run 'job' finished" in submit.stdout  # the driver's summary, streamed back by the CLI

        run_dir = root / "job"
        for name in ("config.yaml", "metrics.jsonl", "summary.json", "_COMPLETE", "model/config.json",
                     "selections/phase-01.parquet", "stats/phase-01.npz"):
            assert (run_dir / name).exists(), name
        assert (data_dir / "_COMPLETE").exists()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert [p["kind"] for p in summary["phases"]] == ["learn", "focus"]
        # The job's copy of the working directory received no data and no run.
        working_dirs = [p for p in (head.temp_dir / "session_latest" / "runtime_resources").glob("working_dir_files/*")
                        if p.is_dir()]
        assert working_dirs, "the job ran without its working directory"
        for wd in working_dirs:
            assert (wd / "jobs" / "pretrain.py").exists()
            assert not (wd / "runs").exists() and not (wd / "data").exists()
    finally:
        leftover = head.stop()
    assert not leftover, f"processes of the test's Ray head outlived stop(): {leftover}"
