"""The documentation holds together: every relative link in README.md, bench/README.md and
docs/**/*.md resolves to a file (and a #fragment to a heading of it), the README stays short and
keeps the commands CI relies on, and no doc names a package registry's host."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", REPO / "CHANGELOG.md", REPO / "bench" / "README.md",
               *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")


def links(text: str) -> Iterator[str]:
    """The targets of the Markdown links outside code blocks and code spans."""
    yield from LINK.findall(CODE.sub("", FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", CODE.sub(lambda m: m.group(0).strip("`"), heading).strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def broken(path: Path) -> List[Tuple[str, str]]:
    bad = []
    for target in links(path.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not a file of this tree
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append((target, "no such file"))
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append((target, f"no heading #{fragment} in {dest.name}"))
    return bad


def test_the_link_checker_sees_links_and_finds_broken_ones(tmp_path):
    page = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Title\n\n## The `x` part: here\n")
    page.write_text("[ok](b.md) [anchor](b.md#the-x-part-here) [gone](c.md) [bad](b.md#nope) "
                    "[web](https://example.org) `[code](d.md)`\n```\n[fenced](e.md)\n```\n")
    assert [target for target, _ in broken(page)] == ["c.md", "b.md#nope"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(path):
    assert broken(path) == []


def test_the_docs_are_there():
    names = {str(p.relative_to(REPO)) for p in DOCS}
    assert {"docs/tutorial.md", "docs/reference/commands.md", "bench/README.md"} <= names
    assert any(n.startswith("docs/howto/") for n in names) and any(n.startswith("docs/design/") for n in names)


def test_the_readme_is_short_and_keeps_the_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    ci = (REPO / ".ci" / "run").read_text()
    test_command = ".venv/bin/python -m pytest"
    assert test_command in ci.split("# the README's test command:")[1]
    assert f"scripts/setup-dev && {test_command}" in readme
    assert "dispatchctl install --amqp-host 127.0.0.1 --dry-run" in readme and "dispatchctl lab up" in readme


REGISTRIES = ("pypi.org", "pythonhosted.org", "deb.debian.org", "security.debian.org", "archive.ubuntu.com",
              "dl.fedoraproject.org", "mirrors.rockylinux.org", "registry.npmjs.org", "proxy.golang.org")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_doc_names_a_package_registry(path):
    text = path.read_text().lower()
    assert [host for host in REGISTRIES if host in text] == []


MENTION = re.compile(r"dispatchctl ([a-z][a-z-]*)( [a-z]+)?([^`|;&#)<>\n]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z]{1,3})(?![\w-])")


def mentions(text: str) -> Iterator[Tuple[str, List[str]]]:
    """(command, the flags written after it) for each `dispatchctl COMMAND ...` in ``text``."""
    for match in MENTION.finditer(text):
        command, sub, rest = match.group(1), match.group(2) or "", match.group(3)
        if command == "lab" and sub:
            command = f"lab {sub.strip()}"
        else:
            rest = sub + rest
        yield command, FLAG.findall(rest.split(" -- ")[0])


def test_every_documented_command_and_flag_exists():
    """Each `dispatchctl COMMAND --flag` the hand-written docs show is in that command's --help."""
    import subprocess
    import sys

    exe = Path(sys.prefix) / "bin" / "dispatchctl"
    top = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"}).stdout
    commands = {line.split()[0] for line in top.split("Commands:")[1].splitlines() if line.strip()}
    helps = {}
    bad, seen = [], 0
    for path in DOCS:
        if "reference" in path.parts and path.name not in ("steps.md", "platforms.md"):
            continue  # generated from --help itself
        for command, flags in mentions(path.read_text()):
            if command.split()[0] not in commands:
                continue  # prose: "dispatchctl itself", "dispatchctl turns ..."
            seen += 1
            if command not in helps:
                res = subprocess.run([str(exe), *command.split(), "--help"], capture_output=True, text=True,
                                     timeout=60, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
                helps[command] = res.stdout if res.returncode == 0 else ""
            if not helps[command]:
                bad.append(f"{path.relative_to(REPO)}: dispatchctl {command}: no such command")
            for flag in flags:
                if not re.search(r"(^|[ ,])" + re.escape(flag) + r"($|[ ,=\[])", helps[command], re.M):
                    bad.append(f"{path.relative_to(REPO)}: dispatchctl {command} {flag}: not in its --help")
    assert seen > 50, seen  # the docs' commands were really read
    assert bad == []
