"""Every notebook in tutorials/ runs top to bottom on tiny settings."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(notebook, tmp_path, monkeypatch):
    # Notebooks write their outputs below the working directory; run them in a scratch folder.
    monkeypatch.setenv("REWARDDANCE_TUTORIAL_DIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if notebook.name.startswith("04"):
        monkeypatch.setenv("REWARDDANCE_TUTORIAL_STEPS", "4")  # RL steps: each costs a sampling pass and references
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [
        o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
