"""The committed notebooks: no outputs, one `parameters` cell that papermill can read whole.

papermill reads a parameters cell line by line and gives up on a line with a second ``=`` (in a
comment too): that parameter is then missing from ``papermill --help-notebook`` and every ``-p`` for
it prints "Passed unknown parameter". The parameters it sees must be every name the cell assigns.
"""

from __future__ import annotations

import ast
import json

import papermill
import pytest

from bmglib import paths

NOTEBOOKS = sorted((paths.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(nb):
    return json.loads(nb.read_text())["cells"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_the_notebook_is_committed_without_outputs(nb):
    code = [c for c in _cells(nb) if c["cell_type"] == "code"]
    with_outputs = [
        i for i, c in enumerate(code) if c["outputs"] or c["execution_count"] is not None
    ]
    assert not with_outputs, (
        f"{nb.name}: code cells {with_outputs} carry outputs (clear them before committing)"
    )


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter_of_the_notebook(nb):
    cells = [c for c in _cells(nb) if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, (
        f"{nb.name}: {len(cells)} cells tagged 'parameters' (papermill needs exactly one)"
    )
    assigned = [t.id for s in ast.parse("".join(cells[0]["source"])).body for t in s.targets]
    seen = list(papermill.inspect_notebook(str(nb)))
    assert seen == assigned, f"{nb.name}: papermill reads {seen}, the cell assigns {assigned}"
