"""The oldest pika of the pinned range, for real. The fast delivery path hooks pika's internals
(``consumer/fastpath.py``), so pika is pinned (pyproject: ``pika>=1.3.2,<1.5``) to the releases it
is tested against: the venv holds the newest (1.4.x), and here the tests that exercise those hooks
run again with the oldest, 1.3.2, installed from the configured index into a directory that goes
first on ``PYTHONPATH`` (and, through ``DISPATCH_TEST_PYTHONPATH``, on every consumer's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
OLDEST = "1.3.2"
# what depends on pika's internals, kept to about half a minute: the frame reader, its start-up
# self-test and fallback, real deliveries on both paths (test_fastpath.py); a queue that goes on
# past properties pika cannot decode; payment's orders dispatched exactly once, on either path
TESTS = ["tests/test_fastpath.py",
         "tests/test_consumer_hostile.py::test_properties_pika_cannot_decode_are_quarantined_not_a_stalled_queue",
         "tests/test_consumer.py::test_payment_orders_are_dispatched_exactly_once"]


def test_the_pinned_range_starts_at_the_release_tested_here():
    pinned = re.search(r'"pika>=([0-9.]+),<([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None and pinned.group(1) == OLDEST, pinned


@pytest.fixture(scope="module")
def oldest_pika(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("pika-oldest")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                          "--target", str(target), f"pika=={OLDEST}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"cannot install pika {OLDEST} with pip:\n{res.stderr[-2000:]}"
    return target


def test_the_fast_path_and_the_consumer_under_the_oldest_pika(oldest_pika):
    env = {**os.environ, "PYTHONPATH": str(oldest_pika), "DISPATCH_TEST_PYTHONPATH": str(oldest_pika)}
    probe = subprocess.run([sys.executable, "-c", "import pika; print(pika.__version__, pika.__file__)"],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert probe.stdout.split()[:1] == [OLDEST] and probe.stdout.split()[1].startswith(str(oldest_pika)), probe
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-rfEs",
                          *TESTS], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert f"pika {OLDEST} from {oldest_pika}" in res.stdout, res.stdout[:2000]  # the session's own header
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary
