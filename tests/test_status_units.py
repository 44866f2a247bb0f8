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


# -- tracing and metrics ---------------------------------------------------------------------------


def _schema_of(name: str):
    import json

    import jsonschema

    schema = json.loads((Path(__file__).resolve().parents[1] / "roboshop_dispatch/schema/dispatchctl.schema.json")
                        .read_text())
    return jsonschema.Draft202012Validator(schema["$defs"]["status"]["else"]["properties"][name])


def _installed(environment, count=1, headers=()):
    from roboshop_dispatch.facts.instances import InstanceFacts

    facts = InstanceFacts(template_file=count > 1, legacy_file=count == 1, recorded=count if count > 1 else 0)
    return inst.InstalledState(env_file=inst.FileInfo("/etc/roboshop/dispatch.env", "file", 0o600, 0, 0),
                               environment=environment, instance_facts=facts, otlp_headers=headers)


def test_status_says_what_is_on_the_endpoint_without_secrets_and_each_instances_url():
    from roboshop_dispatch.cli.output.status import telemetry_rows

    state = _installed({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://u:pw@c.example:4318/?token=t0k",
                        "DISPATCH_METRICS_LISTEN": "0.0.0.0:9100"}, count=3,
                       headers=(inst.Secret("authorization=Bearer%20t0k"),))
    doc = status.telemetry_docs(state)
    assert doc["tracing"] == {"on": True, "state": "on", "endpoint": "https://c.example:4318/", "headers": "set"}
    assert doc["metrics"] == {"on": True, "listen": "0.0.0.0:9100", "instances": [
        {"unit": f"dispatch@{i}.service", "url": f"http://127.0.0.1:{9099 + i}/metrics"} for i in (1, 2, 3)]}
    for name in ("tracing", "metrics"):
        _schema_of(name).validate(doc[name])
    rows = telemetry_rows(doc)
    assert rows[0] == ("tracing", "on: spans to https://c.example:4318/, exporter headers set", "")
    assert rows[1] == ("metrics", "on, 0.0.0.0:9100 + instance - 1:", "")
    assert rows[3] == ("  dispatch@2.service", "http://127.0.0.1:9101/metrics", "")
    assert "t0k" not in repr(doc) + repr(rows) and "pw" not in repr(doc)


def test_status_with_tracing_and_metrics_off_or_unreadable():
    from roboshop_dispatch.cli.output.status import telemetry_rows

    off = status.telemetry_docs(_installed({"AMQP_HOST": "h"}))
    assert off == {"tracing": {"on": False, "state": "off", "endpoint": None, "headers": None},
                   "metrics": {"on": False, "listen": None, "instances": []}}
    assert telemetry_rows(off) == [("tracing", "off", ""), ("metrics", "off", "")]
    one = status.telemetry_docs(_installed({"DISPATCH_METRICS_LISTEN": "[::1]:9464"}))
    assert one["metrics"]["instances"] == [{"unit": "dispatch.service", "url": "http://[::1]:9464/metrics"}]
    assert telemetry_rows(one)[1] == ("metrics", "http://[::1]:9464/metrics", "")
    bad = status.telemetry_docs(_installed({"DISPATCH_METRICS_LISTEN": "9464"}))
    _schema_of("metrics").validate(bad["metrics"])
    assert telemetry_rows(bad)[1][0:3:2] == ("metrics", "warn")
    disabled = status.telemetry_docs(_installed({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                                                 "OTEL_SDK_DISABLED": "true"}))
    assert telemetry_rows(disabled)[0] == ("tracing", "off (OTEL_SDK_DISABLED=true) (http://c:4318 set)", "")
    unreadable = inst.InstalledState(env_file=inst.FileInfo("/etc/roboshop/dispatch.env", "file"), env_error="EACCES")
    assert status.telemetry_docs(unreadable) == {"tracing": None, "metrics": None}
    assert telemetry_rows({"tracing": None, "metrics": None}) == []
