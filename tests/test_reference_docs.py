"""docs/reference/ is generated from the code (packaging/docs_reference.py, run by scripts/reference):
every page must be current, so the reference says what the code does."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("docs_reference", REPO / "packaging" / "docs_reference.py")
assert SPEC is not None and SPEC.loader is not None
docs_reference = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(docs_reference)


@pytest.mark.parametrize("page", sorted(docs_reference.PAGES))
def test_each_reference_page_is_current(page):
    """Rendered by a fresh interpreter, as scripts/reference does: the command list's order is the
    order in which the CLI's modules were first imported, which other tests change in this one."""
    res = subprocess.run([sys.executable, str(REPO / "packaging" / "docs_reference.py"), "--check", page],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"docs/reference/{page} is not current: run scripts/reference\n{res.stderr}"


def test_the_check_mode_names_a_stale_page(tmp_path, monkeypatch):
    """scripts/reference --check exits 1 naming a page that differs, and writes nothing."""
    for page in docs_reference.PAGES:
        (tmp_path / page).write_text((REPO / "docs" / "reference" / page).read_text())
    (tmp_path / "metrics.md").write_text("# Metrics\n\nedited by hand\n")
    monkeypatch.setattr(docs_reference, "OUT", tmp_path)
    assert docs_reference.main(["--check"]) == 1
    assert (tmp_path / "metrics.md").read_text() == "# Metrics\n\nedited by hand\n"
    assert docs_reference.main([]) == 0 and docs_reference.main(["--check"]) == 0


def test_the_commands_page_lists_every_command_the_cli_lists():
    """Nothing hidden from the reference: each command of `dispatchctl --help` has its section,
    and the flags table says which take --json as their --help does."""
    page = (REPO / "docs" / "reference" / "commands.md").read_text()
    top = subprocess.run([str(Path(sys.prefix) / "bin" / "dispatchctl"), "--help"], capture_output=True,
                         text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    listed = [line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert len(listed) > 10, top.stdout
    for name in listed:
        assert f"## `dispatchctl {name}" in page, name
    assert "| `lab inventory` |  |" in page and "| `status` | yes |" in page


def test_the_json_example_is_a_real_document_of_this_version():
    from roboshop_dispatch import __version__

    page = (REPO / "docs" / "reference" / "json.md").read_text()
    block = page.split("```console\n", 1)[1].split("```", 1)[0].splitlines()
    doc = json.loads("\n".join(block[1:-1]))
    assert doc["version"] == __version__ and doc["error"]["kind"] == "usage" and block[-1] == "exit 2"
