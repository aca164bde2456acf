"""scripts/compat-matrix: its tables are the configuration validation's verdicts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcsgd.config import SCHEMA, check_layout, resolve_checked
from hpcsgd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compat-matrix"


def run_script(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def cells():
    return json.loads(run_script("--json"))


def test_every_cell_is_what_the_validation_says(cells):
    assert len(cells) > 200
    for cell in cells:
        try:
            cfg, warnings = resolve_checked({}, cell["settings"])
            if cell["layout"] is not None:
                layout = cell["layout"]
                check_layout(cfg, layout["M"], layout["shard_sizes"], layout["dim"])
        except UserError as exc:
            assert cell["status"] == "refused" and cell["messages"] == [str(exc)], cell
            continue
        assert cell["status"] == ("warns" if warnings else "ok") and cell["messages"] == warnings, cell


def find(cells, table_starts, row, column):
    hits = [c for c in cells if c["table"].startswith(table_starts) and c["row"] == row and c["column"] == column]
    assert len(hits) == 1, (table_starts, row, column)
    return hits[0]


@pytest.mark.parametrize("table, row, column, status", [
    ("method.kind x order.kind", "sync", "cd_grab", "ok"),
    ("method.kind x order.kind", "fastest_k", "cd_grab", "refused"),
    ("method.kind x order.kind", "adaptive_kb", "grab", "refused"),
    ("method.kind x data.partition", "async_bcd", "iid", "refused"),
    ("method.kind x data.partition", "async_bcd", "replicate", "ok"),
    ("order.kind x order.batch", "pair", "3 (odd)", "refused"),
    ("order.kind x order.batch", "rr", "0 (whole shard)", "ok"),
    ("order.kind x order.batch", "grab", "0 (whole shard)", "refused"),
    ("method.kind x order.batch", "adaptive_k", "0 (whole shard)", "refused"),
    ("method.kind x method.momentum", "piag", "0.9", "refused"),
    ("method.kind x stragglers", "sync", "exp, all means 0", "refused"),
    ("method.kind x stragglers", "sync", "none, comm_mean 1 s set", "warns"),
    ("stragglers.model x delay parameters", "poisson", "comm_mean 2 ms", "warns"),
    ("stragglers.model x delay parameters", "gamma", "offset 0.5 s", "ok"),
    ("run.clock and delays x stopping", "simulated, no delays", "max_seconds only", "refused"),
    ("run.clock and delays x stopping", "simulated, no delays", "eval_seconds", "refused"),
    ("run.clock and delays x stopping", "simulated, exp delays", "max_seconds only", "ok"),
    ("run.clock and delays x stopping", "wall, no delays", "max_seconds only", "ok"),
    ("method.kind x counts beyond the layout", "piag", "absorb = 3", "refused"),
    ("method.kind x counts beyond the layout", "sync", "absorb = 3", "warns"),
    ("method.kind x counts beyond the layout", "async_bcd", "blocks = 30", "refused"),
    ("method.kind x counts beyond the layout", "sync", "batch = 48", "refused"),
])
def test_known_combinations(cells, table, row, column, status):
    assert find(cells, table, row, column)["status"] == status


def test_the_tables_cover_every_choice(cells):
    methods = set(SCHEMA["method"]["kind"].choices)
    for table, columns in (("method.kind x order.kind", SCHEMA["order"]["kind"].choices),
                           ("method.kind x run.clock", SCHEMA["run"]["clock"].choices),
                           ("method.kind x data.partition", SCHEMA["data"]["partition"].choices)):
        mine = [c for c in cells if c["table"] == table]
        assert {(c["row"], c["column"]) for c in mine} == {(m, col) for m in methods for col in columns}
    models = {c["row"] for c in cells if c["table"] == "stragglers.model x delay parameters"}
    assert models == set(SCHEMA["stragglers"]["model"].choices)


def test_markdown_shows_each_cell_and_its_message(cells, tmp_path):
    out = tmp_path / "matrix.md"
    text = run_script("--out", str(out))
    assert out.read_text() == text
    assert text.count("**refused**") == sum(c["status"] == "refused" for c in cells)
    assert text.count("ok, warns") == sum(c["status"] == "warns" for c in cells)
    for cell in cells:
        for message in cell["messages"]:
            assert f". {message}\n" in text
    for title in dict.fromkeys(c["table"] for c in cells):
        assert f"**{title}**" in text


def test_the_readme_shows_what_the_code_generates():
    """The README's key reference and compatibility matrix are copies of generated text:
    regenerate them (key_reference(), scripts/compat-matrix) when the validation changes."""
    from hpcsgd.config import key_reference
    readme = (ROOT / "README.md").read_text()

    def between(start: str, end: str) -> str:
        return readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert between("<!-- key reference: generated by hpcsgd.config.key_reference() -->",
                   "<!-- end of key reference -->") == key_reference().strip()
    out = run_script().strip()
    assert between("<!-- compatibility matrix: generated by scripts/compat-matrix -->",
                   "<!-- end of compatibility matrix -->") == out
