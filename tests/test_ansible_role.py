"""The role as written (ansible/roles/dispatchctl): what its defaults make it do, read from its
files. Its defaults install the controller's sha256-checked pyz and nothing by name from a package
index; pip appears only in the index source, behind the check that refuses an unpinned or unhashed
install. (tests/test_ansible_fleet.py runs the role for real: the defaults, a tampered pyz, the
index refused and then allowed.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, List

import yaml

ROLE = Path(__file__).resolve().parent.parent / "ansible" / "roles" / "dispatchctl"
PIP = re.compile(r"(^|[\s/'\"\[,])pip3?([\s'\",\]]|$)|pip install|ansible\.builtin\.pip|^pip$")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def tasks_run_by(path: Path, variables: dict) -> List[dict]:
    """The tasks of ``path`` and of every file it includes, the includes' names templated with
    ``variables`` (the role's defaults), as Ansible would pick them."""
    found = []
    for task in load(path):
        found.append(task)
        include = task.get("ansible.builtin.include_tasks") or task.get("ansible.builtin.import_tasks")
        if include:
            name = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(variables[m.group(1)]), include)
            found += tasks_run_by(path.parent / name, {**variables, **task.get("vars", {})})
    return found


def test_the_defaults_install_the_pyz_and_nothing_by_name_from_an_index():
    defaults = load(ROLE / "defaults" / "main.yml")
    assert defaults["dispatchctl_source"] == "pyz"
    assert defaults["dispatchctl_index_version"] == "" and defaults["dispatchctl_index_requirements"] == ""
    assert "roboshop-dispatch" not in (ROLE / "defaults" / "main.yml").read_text().split("#")[0]
    run = tasks_run_by(ROLE / "tasks" / "main.yml", defaults)
    files = {t.get("ansible.builtin.include_tasks") or t.get("ansible.builtin.import_tasks") for t in run} - {None}
    assert files == {"install-{{ dispatchctl_source }}.yml", "artifact.yml"}, files
    assert not [s for t in run for s in strings(t) if PIP.search(s)], "a task the defaults run uses pip"
    copy = next(t for t in run if "ansible.builtin.copy" in t)["ansible.builtin.copy"]
    assert copy["dest"] == "{{ dispatchctl_bin }}" and "sha256sum --check" in copy["validate"]


def test_pip_runs_only_in_the_index_source_after_the_refusal_of_an_unpinned_install():
    for path in sorted((ROLE / "tasks").glob("*.yml")):
        uses_pip = [t["name"] for t in load(path) if any(PIP.search(s) for s in strings(t))]
        if path.name != "install-index.yml":
            assert not uses_pip, f"{path.name}: {uses_pip}"
    index = load(ROLE / "tasks" / "install-index.yml")
    refusal = index[0]["ansible.builtin.assert"]
    assert any("--hash=sha256" in cond for cond in refusal["that"]) and any("==" in cond for cond in refusal["that"])
    runs = [t["ansible.builtin.command"]["argv"] for t in index if "ansible.builtin.command" in t]
    pip = [argv for argv in runs if PIP.search(argv if isinstance(argv, str) else " ".join(argv))]
    assert len(pip) == 1 and "--require-hashes" in pip[0], runs
