"""The run log (issue 19): secret arguments masked as arguments, whatever they hold; a FIFO or
anything but a regular file at its path refused without hanging; a directory of root's alone;
the log of 0.4 and earlier moved in."""

from __future__ import annotations

import os
import shlex
import stat
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from roboshop_dispatch import layout
from roboshop_dispatch.knobs import OPTIONS
from roboshop_dispatch.redact import MASK, Redactor
from roboshop_dispatch.runlog import RunLog, masked_argv

SECRET_OPTIONS = [k.option for k in OPTIONS if k.secret]
# what a shell, Python or a quoting routine treats specially, and a mask's character left out
PASSWORDS = st.text(st.characters(exclude_characters="*\x00\n\r", exclude_categories=["Cs"]), min_size=1,
                    max_size=24).map(lambda p: p + "'\"")


def logged_argv(path: Path) -> list:
    line = next(ln for ln in path.read_text().splitlines() if ln.startswith("=== "))
    return shlex.split(line.split("): ", 1)[1])


@settings(max_examples=150, deadline=None)
@given(password=PASSWORDS, form=st.sampled_from(["separate", "equals"]))
def test_a_secret_option_is_masked_as_an_argument_whatever_it_holds(tmp_path_factory, password, form):
    """Before issue 19 the line was joined first (shlex quoting: 'it'"'"'s') and then searched for
    the password, which the quoting had split: a quote in the password leaked it."""
    path = tmp_path_factory.mktemp("log") / "dispatchctl.log"
    log, why = RunLog.open(Redactor([password]), path=path)
    assert log is not None, why
    given = ["--amqp-pass", password] if form == "separate" else [f"--amqp-pass={password}"]
    log.start("install", ["install", "--amqp-host", "10.0.0.5", *given, "--json"], SECRET_OPTIONS)
    log.close()
    argv = logged_argv(path)
    assert not any(password in arg for arg in argv), argv
    assert argv[-1] == "--json" and (MASK in argv or f"--amqp-pass={MASK}" in argv)
    assert password not in path.read_text()


def test_masked_argv_leaves_every_other_argument_as_it_is():
    red = Redactor(["pw"])
    assert masked_argv(["install", "--amqp-pass", "x y", "--amqp-pass-file", "/root/p", "--amqp-pass=z'"],
                       ["--amqp-pass"], red) == ["install", "--amqp-pass", MASK, "--amqp-pass-file", "/root/p",
                                                 f"--amqp-pass={MASK}"]
    assert masked_argv(["--amqp-user", "pw"], ["--amqp-pass"], red) == ["--amqp-user", MASK]
    assert SECRET_OPTIONS == ["--amqp-pass", "--otlp-header"]  # every secret option is masked in the run log


def test_a_fifo_planted_at_the_log_is_refused_without_hanging(tmp_path):
    """Before issue 19 opening it for writing waited for a reader: every run hung, holding the
    host's lock."""
    path = tmp_path / "dispatchctl.log"
    os.mkfifo(path)
    result = {}
    opener = threading.Thread(target=lambda: result.update(zip(("log", "why"), RunLog.open(Redactor([]), path))),
                              daemon=True)
    opener.start()
    opener.join(5)
    assert not opener.is_alive(), "opening the run log hangs on a FIFO"
    assert result["log"] is None and "FIFO" in result["why"]
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # with a reader the open succeeds: refused all the same
    try:
        log, why = RunLog.open(Redactor([]), path)
        assert log is None and "regular file" in why
    finally:
        os.close(reader)


def test_the_log_lives_in_a_directory_of_roots_alone(tmp_path):
    assert layout.LOG_FILE.parent == layout.LOG_DIR != Path("/var/log")
    made = tmp_path / "made" / "dispatchctl.log"
    (tmp_path / "made").parent.mkdir(exist_ok=True)
    log, why = RunLog.open(Redactor([]), made)
    assert log is not None, why
    log.close()
    assert stat.S_IMODE(os.stat(made.parent).st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    log, why = RunLog.open(Redactor([]), shared / "dispatchctl.log")
    assert log is None and "root's alone" in why and not (shared / "dispatchctl.log").exists()
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    log, why = RunLog.open(Redactor([]), other / "dispatchctl.log")
    assert log is None and "uid 65534" in why


def test_the_log_of_earlier_versions_moves_in(tmp_path):
    legacy = tmp_path / "old.log"
    legacy.write_text("=== an earlier run\n")
    path = tmp_path / "dir" / "dispatchctl.log"
    log, why = RunLog.open(Redactor([]), path, legacy=legacy)
    assert log is not None, why
    log.start("install", ["install"])
    log.close()
    assert not legacy.exists() and path.read_text().startswith("=== an earlier run\n\n=== ")
    planted = tmp_path / "planted.log"  # someone else's file there is left where it is
    planted.write_text("x")
    os.chown(planted, 65534, 65534)
    log, why = RunLog.open(Redactor([]), tmp_path / "dir2" / "dispatchctl.log", legacy=planted)
    assert log is not None and planted.exists()
    log.close()
