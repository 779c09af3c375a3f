"""examples/lfr_walkthrough.ipynb runs top to bottom (nbclient) against the session's Ray instance."""

from __future__ import annotations

from pathlib import Path

import pytest

from lfr_ray.paths import RunPaths

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "lfr_walkthrough.ipynb"


@pytest.mark.timeout(600)
def test_walkthrough_notebook_runs(tmp_path, ray_cluster, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    address = ray_cluster.get_runtime_context().gcs_address
    params.source = (f"CONFIG = 'debug.yaml'\nWORK_DIR = {str(tmp_path)!r}\nRAY_ADDRESS = {address!r}\n"
                     "RUN_NAME = 'notebook'\n")
    # The kernel is a second client of the session's Ray instance: it needs token mode (the token
    # itself is found in ~/.ray/auth_token, which that instance's ray.init wrote).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # Any cell that raises fails the test (CellExecutionError with the cell's traceback).
    NotebookClient(nb, timeout=300, startup_timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    assert RunPaths(tmp_path / "runs" / "notebook").complete.exists()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # loss by domain, focus selection, forgetting by domain, loss per step
    tables = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "text/html" in o.get("data", {})]
    assert len(tables) >= 5  # DataFrames shown between phases
