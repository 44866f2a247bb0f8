"""Remembered settings, pure logic: the option > DISPATCHCTL_* > what is installed > the default
(sources.resolve), every value validated under the name of its source, and the installed values
read by the one parser (sources.remembered) with the consumer's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roboshop_dispatch.cli.output.settings import settings_text
from roboshop_dispatch.facts import installed
from roboshop_dispatch.facts.installed import InstalledState
from roboshop_dispatch.facts.paths import FileInfo
from roboshop_dispatch.facts.unitfile import unit_settings
from roboshop_dispatch.knobs import COMMAND_KNOBS, KNOB, KNOBS, TELEMETRY
from roboshop_dispatch.settings import MASK, Secret, Settings, SettingsError
from roboshop_dispatch.sources import (
    DEFAULT,
    ENVIRONMENT,
    INSTALLED,
    OPTION,
    LazyPassword,
    Remembered,
    Source,
    build_settings,
    password_given,
    remembered,
    resolve,
)

ENV = "/etc/roboshop/dispatch.env"

# per row: valid texts and texts its validator refuses
VALID: Dict[str, list] = {
    "amqp_hosts": ["10.0.0.5", "rabbit-1,rabbit-2", "127.0.0.2", "mq.example"],
    "amqp_port": ["5672", "1", "65535", "5673"],
    "amqp_vhost": ["/", "shop", "a b", "ünï"],
    "amqp_user": ["roboshop", "guest", "ops user"],
    "service_user": ["roboshop", "svc_1", "dispatch"],
    "app_dir": ["/app", "/opt/dispatch", "/srv/roboshop"],
    "flavour": ["bundled", "go"],
    "artifact": ["https://example.invalid/d.zip", "/srv/d.zip", "file:///srv/d.zip"],
    "artifact_sha256": ["a" * 64, "0123456789abcdef" * 4],
    "insecure": ["1", "0", "yes", "no"],
    "error_percent": ["0", "50", "100"],
    "instances": ["1", "3", "64"],
    "queue_type": ["classic", "quorum"],
    "otlp_endpoint": ["http://127.0.0.1:4318", "https://collector.example:4318/", "none", "off"],
    "metrics_listen": ["127.0.0.1:9100", "[::1]:9464", "0.0.0.0:9100", "none"],
    "otlp_headers": ["authorization=Bearer%20abc", "x-a=1,x-b=two", "none", "Authorization=Basic abc=="],
    "ready_timeout": ["30", "1", "3600", " 45 "],
    "no_rollback": ["1", "0", "yes", "no"],
    "allow_groups": ["", "docker", "adm,systemd-journal", " wheel , kvm "],
    "max_body": ["1024", "262144", "67108864"],
}
INVALID: Dict[str, list] = {
    "amqp_hosts": ["a,,b", "10.0.0.300", "h h"],
    "amqp_port": ["x", "0", "70000", ""],
    "amqp_vhost": ["", "a\nb", "x\x1b[2J"],
    "amqp_user": ["", "u\x00"],
    "service_user": ["root", "Bad User", ""],
    "app_dir": ["/", "/etc", "relative", "/tmp/x"],
    "flavour": ["rust", ""],
    "artifact": ["ftp://x/d.zip", "d.zip"],
    "artifact_sha256": ["zz", "a" * 63],
    "insecure": ["maybe"],
    "error_percent": ["101", "-1", "x"],
    "instances": ["0", "65", "+3", "1_0", "٣", ""],
    "queue_type": ["stream", "Quorum", ""],
    "otlp_endpoint": ["ftp://x", "http://", "http://u:p@h:4318", "http://h:4318/?token=x", "http://h :1",
                      "127.0.0.1:4318"],
    "metrics_listen": ["9100", "127.0.0.1:0", "127.0.0.1:70000", "::1:9100", "h h:1", "a/b:1", "300.1.1.1:9"],
    "otlp_headers": ["noequals", "a=", "bad name=x", "a=1,a=2", "x=\x01", ",,=v", "none,a=b"],
    "ready_timeout": ["0", "3601", "1.5", "-3", "٣", ""],
    "no_rollback": ["maybe"],
    "allow_groups": ["dockr", "docker,users", "root"],
    "max_body": ["1023", "67108865", "1k", ""],
}
RANK = {OPTION: 3, ENVIRONMENT: 2, INSTALLED: 1, DEFAULT: 0}


def test_every_row_has_examples_and_an_environment_variable():
    assert set(VALID) == set(INVALID) == set(KNOB)
    assert KNOB["amqp_hosts"].envvar == "DISPATCHCTL_AMQP_HOST"
    assert KNOB["app_dir"].envvar == "DISPATCHCTL_APP_DIR"
    assert KNOB["flavour"].envvar == "DISPATCHCTL_FLAVOUR"
    assert {k.envvar for k in KNOBS}.isdisjoint({"DISPATCHCTL_AMQP_PASS", "DISPATCHCTL_AMQP_PASS_FILE"})


def test_the_highest_source_wins_in_order():
    names = ("amqp_port",)
    inst = {"AMQP_PORT": Remembered("5674", f"{ENV}: AMQP_PORT")}
    assert resolve(names, {}, {}, {}).values["amqp_port"] == 5672
    r = resolve(names, {}, {}, inst)
    assert r.values["amqp_port"] == 5674 and r.sources["amqp_port"] == Source(INSTALLED, f"{ENV}: AMQP_PORT")
    r = resolve(names, {}, {"DISPATCHCTL_AMQP_PORT": "5675"}, inst)
    assert r.values["amqp_port"] == 5675 and r.sources["amqp_port"] == Source(ENVIRONMENT, "DISPATCHCTL_AMQP_PORT")
    r = resolve(names, {"amqp_port": "5676"}, {"DISPATCHCTL_AMQP_PORT": "5675"}, inst)
    assert r.values["amqp_port"] == 5676 and r.sources["amqp_port"] == Source(OPTION, "--amqp-port")


def test_errors_name_their_source():
    with pytest.raises(SettingsError) as err:
        resolve(("amqp_port",), {}, {"DISPATCHCTL_AMQP_PORT": "x"}, {})
    assert str(err.value) == "DISPATCHCTL_AMQP_PORT: 'x' is not a whole number"
    with pytest.raises(SettingsError) as err:
        resolve(("amqp_port",), {}, {}, {"AMQP_PORT": Remembered("x", f"{ENV}: AMQP_PORT")})
    assert str(err.value) == f"{ENV}: AMQP_PORT: 'x' is not a whole number: give --amqp-port"
    with pytest.raises(SettingsError) as err:
        resolve(("amqp_hosts",), {}, {}, {}, installed_missing=f"{ENV} is not readable (run as root)")
    assert str(err.value) == ("--amqp-host: is required: give --amqp-host or set DISPATCHCTL_AMQP_HOST; "
                              f"{ENV} is not readable (run as root)")


def test_a_bad_value_in_a_source_that_does_not_win_is_not_used():
    r = resolve(("amqp_port",), {"amqp_port": "5680"}, {"DISPATCHCTL_AMQP_PORT": "x"},
                {"AMQP_PORT": Remembered("y", f"{ENV}: AMQP_PORT")})
    assert r.values["amqp_port"] == 5680


def test_plain_http_artifact_needs_insecure_from_any_source():
    names = ("artifact", "insecure")
    with pytest.raises(SettingsError, match=r"DISPATCHCTL_ARTIFACT: .*plain http"):
        resolve(names, {}, {"DISPATCHCTL_ARTIFACT": "http://example.invalid/d.zip"}, {})
    r = resolve(names, {}, {"DISPATCHCTL_ARTIFACT": "http://example.invalid/d.zip", "DISPATCHCTL_INSECURE": "1"}, {})
    assert r.values["insecure"] is True


@st.composite
def _scenario(draw):
    """Per row: which sources hold a (valid) value."""
    names = tuple(draw(st.sets(st.sampled_from(sorted(KNOB)), min_size=1)))
    given, environ, inst, present = {}, {}, {}, {}
    for name in names:
        knob = KNOB[name]
        kinds = draw(st.sets(st.sampled_from([OPTION, ENVIRONMENT] + ([INSTALLED] if knob.installed else []))))
        present[name] = kinds
        for kind in kinds:
            text = draw(st.sampled_from(VALID[name]))
            if kind == OPTION:
                given[name] = text
            elif kind == ENVIRONMENT:
                environ[knob.envvar] = text
            else:
                inst[knob.installed] = Remembered(text, f"{ENV}: {knob.installed}")
    return names, given, environ, inst, present


@settings(max_examples=300, deadline=None)
@given(_scenario())
def test_the_winner_is_always_the_highest_source_given(scenario):
    names, given_, environ, inst, present = scenario
    if "amqp_hosts" in names and not present["amqp_hosts"]:
        with pytest.raises(SettingsError, match="--amqp-host: is required"):
            resolve(names, given_, environ, inst)
        return
    def winner(name):
        knob = KNOB[name]
        expected = max(present[name], key=RANK.__getitem__) if present[name] else DEFAULT
        text = {OPTION: given_.get(name), ENVIRONMENT: environ.get(knob.envvar),
                INSTALLED: inst[knob.installed].text if knob.installed in inst else None,
                DEFAULT: knob.default}[expected]
        return expected, text

    # the rules across rows: a quorum queue, tracing and metrics need the bundled consumer
    bundled_only = [n for n in ("queue_type", *TELEMETRY) if n in names
                    and winner(n)[1] not in ("classic", "none", "off")]
    if "flavour" in names and winner("flavour")[1] == "go" and bundled_only:
        with pytest.raises(SettingsError, match="go flavour"):
            resolve(names, given_, environ, inst)
        return
    r = resolve(names, given_, environ, inst)
    for name in names:
        expected, text = winner(name)
        assert r.sources[name].kind == expected
        assert r.values[name] == (None if text is None else KNOB[name].parse("x", text))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_bad_value_that_wins_names_its_source(data):
    name = data.draw(st.sampled_from(sorted(KNOB)))
    knob = KNOB[name]
    kind = data.draw(st.sampled_from([OPTION, ENVIRONMENT] + ([INSTALLED] if knob.installed else [])))
    bad = data.draw(st.sampled_from(INVALID[name]))
    given_, environ, inst = {}, {}, {}
    # valid values in every lower source: the bad one still wins, and is refused
    for lower in [k for k in (OPTION, ENVIRONMENT, INSTALLED) if RANK[k] < RANK[kind]]:
        if lower == ENVIRONMENT:
            environ[knob.envvar] = VALID[name][0]
        elif lower == INSTALLED and knob.installed:
            inst[knob.installed] = Remembered(VALID[name][0], f"{ENV}: {knob.installed}")
    if kind == OPTION:
        given_[name] = bad
    elif kind == ENVIRONMENT:
        environ[knob.envvar] = bad
    else:
        inst[knob.installed] = Remembered(bad, f"{ENV}: {knob.installed}")
    with pytest.raises(SettingsError) as err:
        resolve((name,), given_, environ, inst)
    label = {OPTION: knob.option, ENVIRONMENT: knob.envvar, INSTALLED: f"{ENV}: {knob.installed}"}[kind]
    assert str(err.value).startswith(label + ": ")
    if kind == INSTALLED:
        assert str(err.value).endswith(f": give {knob.option}")


def test_settings_are_built_from_the_rows_and_the_password_is_masked():
    inst = {"AMQP_HOST": Remembered("10.9.9.9", f"{ENV}: AMQP_HOST"),
            "service_user": Remembered("svc", "/etc/systemd/system/dispatch.service: User=")}
    r = resolve(COMMAND_KNOBS["configure"], {"amqp_port": "5999"}, {}, inst)
    from dataclasses import replace

    r = replace(r, password=Secret("s3cret"), password_source=Source(INSTALLED, "/etc/roboshop/dispatch.amqp-pass"))
    s = build_settings(r)
    assert isinstance(s, Settings)
    assert (s.amqp.hosts, s.amqp.port, s.amqp.user, s.service_user) == (("10.9.9.9",), 5999, "roboshop", "svc")
    doc = r.document()
    assert doc["amqp_pass"] == {"value": MASK, "source": "installed", "from": "/etc/roboshop/dispatch.amqp-pass"}
    assert doc["amqp_hosts"] == {"value": ["10.9.9.9"], "source": "installed", "from": f"{ENV}: AMQP_HOST"}
    assert doc["amqp_port"]["source"] == "option" and doc["amqp_user"]["source"] == "default"
    assert "s3cret" not in repr(doc) + settings_text(r)
    assert "settings:" in settings_text(r) and "installed (/etc/roboshop/dispatch.amqp-pass)" in settings_text(r)


def test_build_and_start_need_no_amqp_settings():
    s = build_settings(resolve(COMMAND_KNOBS["build"], {"flavour": "go"}, {}, {}))
    assert s.flavour == "go" and s.amqp.hosts == ("localhost",)
    assert build_settings(resolve(COMMAND_KNOBS["start"], {}, {}, {})).app_dir == Path("/app")


def test_password_given_in_order(tmp_path):
    f = tmp_path / "p"
    f.write_text("from-file\n")
    env = {"DISPATCHCTL_AMQP_PASS": "from-env", "DISPATCHCTL_AMQP_PASS_FILE": str(f)}
    assert password_given(None, None, env)[0] == Secret("from-file")
    assert password_given(None, None, env)[1] == Source(ENVIRONMENT, "DISPATCHCTL_AMQP_PASS_FILE")
    assert password_given(None, "opt", env)[0] == Secret("opt")
    assert password_given(None, None, {"DISPATCHCTL_AMQP_PASS": "from-env"})[0] == Secret("from-env")
    assert password_given(None, None, {}) == (None, None)
    with pytest.raises(SettingsError, match=r"^DISPATCHCTL_AMQP_PASS_FILE: cannot read"):
        password_given(None, None, {"DISPATCHCTL_AMQP_PASS_FILE": str(tmp_path / "none")})


def test_lazy_password_asks_once_and_only_when_called():
    asked = []

    def ask():
        asked.append(1)
        return "typed"

    lazy = LazyPassword(None, None, ask)
    assert asked == []
    assert lazy() == Secret("typed") and lazy() == Secret("typed") and len(asked) == 1
    assert lazy.source == Source("prompt", "prompt")
    with pytest.raises(SettingsError, match="no AMQP password"):
        LazyPassword(None, None, None)()
    never = LazyPassword(None, None, lambda: None)
    with pytest.raises(SettingsError):
        never()
    with pytest.raises(SettingsError):
        never()
    assert never.asked == 1


# -- what is installed: the one parser ---------------------------------------------------------------

UNIT = """[Unit]
Description=Dispatch
[Service]
User=svc
EnvironmentFile=/etc/roboshop/dispatch.env
ExecStart=/usr/bin/python3 /opt/shop/dispatch
LoadCredential=amqp-pass:/etc/roboshop/dispatch.amqp-pass
"""


def test_unit_settings_reads_the_service_section_and_drop_ins():
    assert unit_settings([UNIT]) == {"User": "svc", "EnvironmentFile": "/etc/roboshop/dispatch.env",
                                     "ExecStart": "/usr/bin/python3 /opt/shop/dispatch"}
    assert unit_settings([UNIT, "[Service]\nUser=\n"]).get("User") is None
    assert unit_settings(["[Install]\nUser=x\n"]) == {}


def test_remembered_takes_the_consumers_default_for_what_the_file_does_not_set():
    state = InstalledState(env_file=FileInfo(ENV, kind="file", mode=0o600, uid=0, gid=0),
                           environment={"AMQP_HOST": "10.0.0.5", "DISPATCH_QUEUE_TYPE": "quorum"},
                           password=Secret("pw"), password_source="credential",
                           credential_file=FileInfo("/etc/roboshop/dispatch.amqp-pass", kind="file"),
                           unit_file=FileInfo("/etc/systemd/system/dispatch.service", kind="file"),
                           unit_values=unit_settings([UNIT]),
                           binary=FileInfo("/opt/shop/dispatch", kind="file"), flavour="bundled")
    found = remembered(state)
    assert found["AMQP_HOST"] == Remembered("10.0.0.5", f"{ENV}: AMQP_HOST")
    assert found["AMQP_USER"].text == "guest" and "the consumer's default" in found["AMQP_USER"].where
    assert found["AMQP_PORT"].text == "5672"
    assert found["DISPATCH_QUEUE_TYPE"].text == "quorum"  # every variable of the file: one row to remember more
    assert found["amqp_pass"] == Remembered("pw", "/etc/roboshop/dispatch.amqp-pass")
    assert found["service_user"].text == "svc" and found["app_dir"].text == "/opt/shop"
    assert found["flavour"].text == "bundled"
    r = resolve(COMMAND_KNOBS["configure"], {}, {}, found)
    assert r.values["amqp_user"] == "guest"  # the login the service uses, not the CLI's default
    assert state.amqp_values()["AMQP_USER"] == "guest"


def test_nothing_is_remembered_when_the_environment_file_cannot_be_read():
    state = InstalledState(env_file=FileInfo(ENV, kind="file"), env_error=installed.os.strerror(13))
    assert remembered(state) == {}
    assert InstalledState().amqp_values() == {}


def test_a_complete_installation_is_remembered_without_importing_pika(tmp_path):
    """A re-run of install on a complete installation must stay fast: the consumer's defaults (which
    import pika) are looked up only for a variable the environment file does not set."""
    import subprocess
    import sys

    env = tmp_path / "dispatch.env"
    env.write_text('AMQP_HOST="10.0.0.5"\nAMQP_PORT="5673"\nAMQP_VHOST="/"\nAMQP_USER="roboshop"\n'
                   'DISPATCH_ERROR_PERCENT="0"\nDISPATCH_QUEUE_TYPE="classic"\n')
    code = f"""
import sys
from pathlib import Path
from roboshop_dispatch.facts.installed import read_settings
from roboshop_dispatch.sources import remembered
from roboshop_dispatch.sources import COMMAND_KNOBS, resolve
found = remembered(read_settings(Path({str(env)!r}), interpret=False))
r = resolve(COMMAND_KNOBS["configure"], {{}}, {{}}, found)
assert r.values["amqp_port"] == 5673, r
print("pika" in sys.modules)
found = remembered(read_settings(Path({str(tmp_path / 'partial.env')!r}), interpret=False))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_installed_password_is_validated_and_named():
    from roboshop_dispatch.sources import installed_password

    where = "/etc/roboshop/dispatch.amqp-pass"
    assert installed_password({"amqp_pass": Remembered("pw", where)}) == (Secret("pw"), Source(INSTALLED, where))
    assert installed_password({}) == (None, None)
    with pytest.raises(SettingsError) as err:
        installed_password({"amqp_pass": Remembered("p\x1bw", where)})
    assert str(err.value).startswith(f"{where}: ") and str(err.value).endswith("give --amqp-pass-file")


def test_the_go_builds_artifact_is_remembered_from_its_stamp():
    state = InstalledState(unit_file=FileInfo("/etc/systemd/system/dispatch.service", kind="file"),
                           unit_values={"ExecStart": "/app/dispatch"}, binary=FileInfo("/app/dispatch", kind="file"),
                           flavour="go", build_stamp={"artifact": "http://10.0.0.9/d.zip", "artifact_sha256": "b" * 64})
    found = remembered(state)
    r = resolve(COMMAND_KNOBS["build"], {}, {}, found)
    assert (r.values["flavour"], r.values["artifact"]) == ("go", "http://10.0.0.9/d.zip")
    assert r.values["artifact_sha256"] is None  # the digest of what was fetched is no pin: new sources build
    assert r.values["insecure"] is True  # the http:// artifact was allowed when it was built
    assert r.sources["artifact"] == Source(INSTALLED, "/app/.dispatch-build.json: artifact")
    assert resolve(COMMAND_KNOBS["build"], {"artifact": "/srv/x.zip"}, {}, found).values["artifact"] == "/srv/x.zip"


def test_a_bad_value_given_is_reported_before_a_missing_required_one():
    """`install --amqp-port x` names the port (what the user typed), not the host it forgot."""
    with pytest.raises(SettingsError, match="--amqp-port: 'x' is not a whole number"):
        resolve(("amqp_hosts", "amqp_port"), {"amqp_port": "x"}, {}, {})
    with pytest.raises(SettingsError, match="--amqp-host: is required"):
        resolve(("amqp_hosts", "amqp_port"), {"amqp_port": "5672"}, {}, {})


def test_tracing_and_metrics_are_remembered_and_the_headers_only_ever_as_set(tmp_path):
    creds = tmp_path / "dispatch.otlp-headers"
    creds.write_text("authorization=Bearer%20t0ken-9\n")
    env = tmp_path / "dispatch.env"
    env.write_text('AMQP_HOST="10.0.0.5"\nOTEL_EXPORTER_OTLP_ENDPOINT="http://10.0.0.9:4318"\n'
                   'DISPATCH_METRICS_LISTEN="127.0.0.1:9100"\nOTEL_EXPORTER_OTLP_HEADERS="x-old=stale-v4lue"\n')
    facts = installed._read_env(env)
    facts.update(installed._read_headers((("otlp-headers", str(creds)),), facts))
    state = InstalledState(**facts)
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in state.environment  # a secret: kept apart, never recorded
    assert [h.reveal() for h in state.otlp_headers] == ["authorization=Bearer%20t0ken-9", "x-old=stale-v4lue"]
    assert {"Bearer t0ken-9", "stale-v4lue"} <= set(state.secrets())
    found = remembered(state)
    assert found["otlp_endpoint"] == Remembered("http://10.0.0.9:4318", f"{env}: OTEL_EXPORTER_OTLP_ENDPOINT")
    assert found["metrics_listen"].text == "127.0.0.1:9100"
    assert found["otlp_headers"] == Remembered("authorization=Bearer%20t0ken-9", str(creds))  # the credential wins
    r = resolve(COMMAND_KNOBS["configure"], {}, {}, found)
    assert r.values["otlp_headers"] == Secret("authorization=Bearer%20t0ken-9")
    assert r.document()["otlp_headers"] == {"value": MASK, "source": "installed", "from": str(creds)}
    assert "t0ken" not in repr(r.document()) + settings_text(r) + repr(build_settings(r).masked())
    # given: a new one replaces it, none removes it; nothing installed: none
    assert resolve(("otlp_headers",), {"otlp_headers": "none"}, {}, found).values["otlp_headers"] is None
    assert resolve(("otlp_headers",), {}, {"DISPATCHCTL_OTLP_HEADER": "a=b"}, found).values["otlp_headers"] \
        == Secret("a=b")
    assert resolve(("otlp_headers", "otlp_endpoint"), {}, {}, {}).values == {"otlp_headers": None,
                                                                           "otlp_endpoint": None}


def test_tracing_and_metrics_need_the_bundled_flavour_and_room_for_every_instance():
    names = ("flavour", "instances", "metrics_listen", "otlp_endpoint", "otlp_headers")
    for option, text in (("metrics_listen", "127.0.0.1:9100"), ("otlp_endpoint", "http://h:4318"),
                         ("otlp_headers", "a=b")):
        with pytest.raises(SettingsError) as err:
            resolve(names, {"flavour": "go", option: text}, {}, {})
        assert str(err.value).startswith(KNOB[option].option + ": the go flavour has no ")
        assert f"give {KNOB[option].option} none" in str(err.value)
    assert resolve(names, {"flavour": "go", "metrics_listen": "none"}, {}, {}).values["metrics_listen"] is None
    with pytest.raises(SettingsError, match=r"^--metrics-listen: port 65530 leaves no room for 8 instances"):
        resolve(names, {"instances": "8", "metrics_listen": "127.0.0.1:65530"}, {}, {})
    assert resolve(names, {"instances": "6", "metrics_listen": "127.0.0.1:65530"}, {}, {}).values["instances"] == 6
    # installed metrics and a switch to go: the installed value is named, with what to give
    with pytest.raises(SettingsError, match=r"^/etc/roboshop/dispatch.env: DISPATCH_METRICS_LISTEN: the go flavour"):
        resolve(names, {"flavour": "go"}, {}, {"metrics_listen": Remembered(
            "127.0.0.1:9100", "/etc/roboshop/dispatch.env: DISPATCH_METRICS_LISTEN")})


@pytest.mark.parametrize("items, text", [
    (["authorization=Bearer abc"], "authorization=Bearer%20abc"),
    (["X-Team = ops,dev", "k=a=b"], "x-team=ops%2Cdev,k=a%3Db"),
    (["none"], "none"),
])
def test_repeated_headers_become_opentelemetrys_text(items, text):
    from roboshop_dispatch.validate import join_headers, validate_otlp_headers

    assert join_headers(items) == text
    value = validate_otlp_headers("--otlp-header", join_headers(items))
    assert value == (None if text == "none" else Secret(text))


@pytest.mark.parametrize("items, words", [
    (["Bearer s3cret-value"], "header 1 is not KEY=VALUE"),
    (["a=1", "s3cret-value"], "header 2 is not KEY=VALUE"),
    (["authorization:Bearer s3cret-value=x"], "header 1: its name is not an HTTP header name"),
    (["a=s3cret-value", "A=s3cret-value"], "header 'a' is given twice"),
    (["a=s3cret-value\x07"], "header 'a': must not contain the control character U+0007"),
    (["a="], "header 'a' has an empty value"),
    (["none", "a=s3cret-value"], "header 1 is not KEY=VALUE"),
])
def test_a_bad_header_is_refused_without_showing_its_value(items, words):
    from roboshop_dispatch.validate import join_headers, validate_otlp_headers

    with pytest.raises(SettingsError) as err:
        validate_otlp_headers("--otlp-header", join_headers(items))
    assert words in str(err.value) and "s3cret" not in str(err.value)
