"""The output layer's pure parts: the wrap of cause/fix text, the collapse of identical skips, the
JSON envelope, and how main() reads --json and the command from a command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch import __version__
from roboshop_dispatch.cli import command_of, wants_json
from roboshop_dispatch.cli.output import envelope, error_document
from roboshop_dispatch.cli.output.findings import finding_lines, wrap

WORDS = st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
                         min_size=1, max_size=30), min_size=0, max_size=40)


@given(words=WORDS, width=st.integers(min_value=0, max_value=120))
def test_wrap_keeps_every_word_and_the_width(words, width):
    text = " ".join(words)
    first, rest = "  cause: ", " " * 9
    out = wrap(text, first, rest, width)
    assert out.startswith(first)
    assert out[len(first):].split() == words or " ".join(out[len(first):].split()) == " ".join(words)
    if width > len(first) + 20:
        for line in out.splitlines():
            assert len(line) <= width or len(line.split()) == 1 or len(line.split()[-1]) > width - len(rest)
            assert line.startswith((first, rest))
    else:
        assert "\n" not in out


@dataclass
class F:
    status: str
    title: str
    summary: str


def test_a_run_of_identical_skips_is_one_line_and_other_lines_stay():
    findings = [F("ok", "A", "fine"), F("fail", "B", "broken"),
                *(F("skip", f"S{i}", "not checked: B") for i in range(3)),
                F("skip", "T", "other reason"), F("ok", "C", "fine")]
    lines = finding_lines(findings, str)
    assert lines == [("ok", "A", "fine"), ("fail", "B", "broken"), ("skip", "3 checks", "not checked: B: S0, S1, S2"),
                     ("skip", "T", "other reason"), ("ok", "C", "fine")]


@given(st.lists(st.sampled_from(["ok", "skip", "fail"]), max_size=12))
def test_collapsing_never_loses_a_check(statuses):
    findings = [F(s, f"t{i}", "same") for i, s in enumerate(statuses)]
    lines = finding_lines(findings, str)
    named = []
    for _status, title, summary in lines:
        named += summary.split(": ", 1)[1].split(", ") if title.endswith(" checks") else [title]
    assert named == [f.title for f in findings]


def test_envelope_puts_command_ok_version_first_and_keeps_the_rest():
    doc = envelope({"x": 1, "ok": True, "command": "status"})
    assert list(doc) == ["command", "ok", "version", "x"] and doc["version"] == __version__
    err = error_document("install", "usage", "bad")
    assert err["ok"] is False and err["error"] == {"kind": "usage", "message": "bad"}


def test_json_and_the_command_are_read_before_a_double_dash():
    names = {"status", "install"}
    assert wants_json(["status", "--json"]) and not wants_json(["status", "--", "--json"])
    assert command_of(["-v", "status", "--json"], names) == "status"
    assert command_of(["--", "status"], names) == "dispatchctl"
    assert command_of(["instal"], names) == "dispatchctl"


# -- the run log: an attacker's link at its path is refused, the file is root 0600, masked ------------


def test_the_run_log_refuses_a_symlink_or_a_hard_link_and_masks(tmp_path):
    import os
    import stat

    from roboshop_dispatch.redact import Redactor
    from roboshop_dispatch.runlog import RunLog

    victim = tmp_path / "shadow"
    victim.write_text("root:x:0\n")
    os.chmod(victim, 0o640)
    link = tmp_path / "symlinked.log"
    link.symlink_to(victim)
    log, reason = RunLog.open(Redactor(["pw"]), path=link)
    assert log is None and "cannot write" in reason
    hard = tmp_path / "hardlinked.log"
    os.link(victim, hard)
    log, reason = RunLog.open(Redactor(["pw"]), path=hard)
    assert log is None and "regular file of its own" in reason
    assert victim.read_text() == "root:x:0\n" and stat.S_IMODE(victim.stat().st_mode) == 0o640

    path = tmp_path / "dispatchctl.log"
    path.write_text("earlier run\n")
    os.chmod(path, 0o644)
    log, reason = RunLog.open(Redactor(["s3cret-pw"]), path=path)
    assert log is not None, reason
    log.start("install", ["install", "--amqp-pass", "s3cret-pw"])
    log.finish("ok")
    log.close()
    text = path.read_text()
    assert text.startswith("earlier run\n") and "s3cret-pw" not in text and "********" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_error_kinds_are_the_schemas_and_each_has_its_exit_status():
    """One ErrorKind: the JSON schema's list of error kinds is exactly it, and each maps to the
    exit status the schema's description gives it."""
    import json

    from roboshop_dispatch.errors import ErrorKind, ExitStatus

    schema = json.loads((Path(__file__).resolve().parents[1] / "roboshop_dispatch/schema/dispatchctl.schema.json")
                        .read_text())
    assert sorted(schema["$defs"]["error"]["properties"]["kind"]["enum"]) == sorted(ErrorKind.ALL)
    assert ErrorKind.exit_status(ErrorKind.USAGE) == ExitStatus.USAGE == 2
    assert ErrorKind.exit_status(ErrorKind.ABORTED) == ExitStatus.ABORTED == 130
    assert {ErrorKind.exit_status(k) for k in (ErrorKind.STEP, ErrorKind.PREFLIGHT, ErrorKind.INTERNAL)} == {1}


def test_every_dispatchctl_error_has_a_kind_of_the_schema():
    """Every error class of the package derives from DispatchctlError (the consumer's excepted:
    it is bundled alone) and carries a kind the JSON envelope knows."""
    import importlib
    import inspect
    import pkgutil

    import roboshop_dispatch
    from roboshop_dispatch.errors import DispatchctlError, ErrorKind

    found = []
    for info in pkgutil.walk_packages(roboshop_dispatch.__path__, "roboshop_dispatch."):
        if ".consumer" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, BaseException) and obj.__module__ == info.name]
    assert len(found) >= 15, found
    assert all(issubclass(cls, DispatchctlError) and cls.kind in ErrorKind.ALL for cls in found), \
        [cls for cls in found if not issubclass(cls, DispatchctlError)]
