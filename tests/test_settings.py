"""Validation of every option before anything is touched (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roboshop_dispatch.settings import MASK, AmqpSettings, Secret, Settings, SettingsError
from roboshop_dispatch.sources import LazyPassword, password_given
from roboshop_dispatch.validate import read_password_file, validate_hosts


@pytest.mark.parametrize(
    "value, expected",
    [
        ("10.0.0.5", ("10.0.0.5",)),
        ("rabbitmq.roboshop.internal", ("rabbitmq.roboshop.internal",)),
        ("rabbit-1,rabbit-2, 10.0.0.7", ("rabbit-1", "rabbit-2", "10.0.0.7")),
        ("::1", ("::1",)),
        ("[fd00::5]", ("fd00::5",)),
        ("localhost.", ("localhost.",)),
    ],
)
def test_valid_hosts(value, expected):
    assert validate_hosts("--amqp-host", value) == expected


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("", "empty host"),
        ("a,,b", "empty host"),
        ("10.0.0.300", "not a valid IPv4"),
        ("-bad.example", "RFC 1123"),
        ("under_score.example", "RFC 1123"),
        ("a" * 64 + ".example", "RFC 1123"),
        ("host name", "RFC 1123"),
        ("h1,h1", "duplicate"),
    ],
)
def test_invalid_hosts_name_the_option(value, fragment):
    with pytest.raises(SettingsError) as err:
        validate_hosts("--amqp-host", value)
    assert err.value.option == "--amqp-host"
    assert fragment in str(err.value)


def _amqp(**kw):
    base = dict(hosts="10.0.0.5", password=Secret("roboshop123"))
    base.update(kw)
    return AmqpSettings.build(**base)


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(port=0), "--amqp-port"),
        (dict(port=65536), "--amqp-port"),
        (dict(vhost=""), "--amqp-vhost"),
        (dict(vhost="a\nb"), "--amqp-vhost"),
        (dict(user=""), "--amqp-user"),
        (dict(password=None), "--amqp-pass-file"),
    ],
)
def test_invalid_amqp_settings(kwargs, option):
    with pytest.raises(SettingsError) as err:
        _amqp(**kwargs)
    assert err.value.option == option


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(service_user="root"), "--user"),
        (dict(service_user="Robo Shop"), "--user"),
        (dict(app_dir="app"), "--app-dir"),
        (dict(app_dir="/app/../etc"), "--app-dir"),
        (dict(app_dir="/"), "--app-dir"),
        (dict(app_dir="/etc"), "--app-dir"),
        (dict(app_dir="/app dir"), "--app-dir"),
        (dict(flavour="rust"), "--flavour"),
        (dict(artifact="ftp://x/dispatch.zip"), "--artifact"),
        (dict(artifact="relative/dispatch.zip"), "--artifact"),
        (dict(error_percent=101), "--error-percent"),
        (dict(error_percent=-1), "--error-percent"),
    ],
)
def test_invalid_settings_name_the_option(kwargs, option):
    with pytest.raises(SettingsError) as err:
        Settings.build(amqp=_amqp(), **kwargs)
    assert err.value.option == option


def test_settings_defaults_follow_the_manual():
    s = Settings.build(amqp=_amqp())
    assert s.service_user == "roboshop"
    assert s.binary == Path("/app/dispatch")
    assert s.unit_path == Path("/etc/systemd/system/dispatch.service")
    env = s.environment()
    assert env["AMQP_HOST"] == "10.0.0.5" and env["AMQP_USER"] == "roboshop"
    assert env["AMQP_PASS"] == "roboshop123"


def test_secret_never_prints():
    s = Settings.build(amqp=_amqp(password=Secret("hunter2-s3cret")))
    for text in (str(s), repr(s), f"{s.amqp.password}", str(s.masked()), repr(s.amqp)):
        assert "hunter2-s3cret" not in text
    assert s.masked()["amqp"]["password"] == MASK
    assert s.amqp.password.reveal() == "hunter2-s3cret"


def test_password_sources_in_order(tmp_path):
    f = tmp_path / "pass"
    f.write_text("from-file\n")
    env = {"DISPATCHCTL_AMQP_PASS": "from-env"}
    assert password_given(str(f), None, env)[0].reveal() == "from-file"
    assert password_given(None, "from-flag", env)[0].reveal() == "from-flag"
    assert password_given(None, None, env)[0].reveal() == "from-env"
    assert LazyPassword(None, None, ask=lambda: "typed")().reveal() == "typed"
    assert password_given(None, None, {})[0] is None


def test_password_file_keeps_inner_whitespace(tmp_path):
    f = tmp_path / "pass"
    f.write_bytes(b" sp ace\t \r\n")
    assert read_password_file(str(f)).reveal() == " sp ace\t "


@pytest.mark.parametrize("content", ["", "\n", "two\nlines\n"])
def test_bad_password_file(tmp_path, content):
    f = tmp_path / "pass"
    f.write_text(content)
    with pytest.raises(SettingsError) as err:
        read_password_file(str(f))
    assert err.value.option == "--amqp-pass-file"


def test_missing_password_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        read_password_file(str(tmp_path / "nope"))
