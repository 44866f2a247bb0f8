"""status: the delivery path from the unit's StatusText (recorded), and the configuration as the
consumer reads it (its defaults), from recorded facts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch import status
from roboshop_dispatch.facts import installed as inst


@pytest.mark.parametrize("text, path", [
    ("consuming orders on 127.0.0.1 vhost=/ (delivery path: fast)", "fast"),
    ("consuming orders on rabbit-2 vhost=shop (delivery path: pika)", "pika"),
    ("consuming orders on 127.0.0.1:35769 vhost=/", None),  # recorded from this branch's consumer
    ("connecting to 127.0.0.1:5672", None),
    ("", None),  # the go flavour: no StatusText at all
])
def test_delivery_path_from_recorded_status_texts(text, path):
    assert status.delivery_path(text) == path


@given(st.text(max_size=60))
def test_delivery_path_is_none_or_what_the_text_says(text):
    path = status.delivery_path(text)
    assert path is None or f"(delivery path: {path})" in text


def test_config_is_the_consumers_reading_with_its_defaults():
    state = inst.InstalledState(
        env_file=inst.FileInfo("/etc/roboshop/dispatch.env", "file", 0o600, 0, 0),
        environment={"AMQP_HOST": "10.0.0.5"}, password=inst.Secret("pw"), password_source="credential")
    state = replace(state, **inst.consumer_settings(state, Path(state.env_file.path)))
    config = status.config_of(state)
    assert config["user"] == "guest"  # the consumer's default, not dispatchctl's
    assert (config["hosts"], config["port"], config["vhost"]) == (["10.0.0.5"], "5672", "/")
    assert config["password"] == "********" and config["password_source"] == "credential"
    assert "error" not in config
    missing = replace(state, password=None, password_source="")
    missing = replace(missing, **inst.consumer_settings(missing, Path(state.env_file.path)))
    config = status.config_of(missing)
    assert config["password"] == "(not set)" and "AMQP_PASS" in config["error"]
    assert status.config_of(inst.InstalledState(env_error="not present"))["error"] == "not present"
