"""The installed state's readers on real files (a temp tree): the credential named by the unit,
the environment file by the one parser, the consumer's own reading of both, lstat without
following symlinks."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch import envfile
from roboshop_dispatch.facts import installed as inst
from roboshop_dispatch.facts.host import HostFacts
from roboshop_dispatch.facts.installed import InstalledState
from roboshop_dispatch.settings import Secret

UNIT = """[Unit]
Description=Dispatch Service

[Service]
User=roboshop
EnvironmentFile=/etc/roboshop/dispatch.env
# LoadCredential=commented:/nowhere
LoadCredential=amqp-pass:/etc/roboshop/dispatch.amqp-pass
ExecStart=/usr/bin/python3 -I /app/dispatch
"""


def test_load_credentials_from_the_unit_and_its_drop_ins():
    assert inst.load_credentials([UNIT]) == (("amqp-pass", "/etc/roboshop/dispatch.amqp-pass"),)
    drop_in = "[Service]\nLoadCredential=\nLoadCredential=other:/etc/x \\\n\n"
    assert inst.load_credentials([UNIT, drop_in]) == (("other", "/etc/x"),)  # the empty one resets
    assert inst.load_credentials(["[Install]\nLoadCredential=a:/b\n"]) == ()  # only [Service] counts
    assert inst.load_credentials(["[Service]\nLoadCredential=bare\n"]) == (("bare", "bare"),)


def _tree(tmp_path: Path, env: dict, password: str = "s3cret pw"):
    env_path = tmp_path / "dispatch.env"
    env_path.write_text(envfile.render(env))
    os.chmod(env_path, 0o600)
    cred = tmp_path / "dispatch.amqp-pass"
    cred.write_text(password)
    os.chmod(cred, 0o600)
    return env_path, cred


def _state(env_path: Path, credentials=()) -> inst.InstalledState:
    values = {**inst._read_env(env_path), **inst._read_credential(credentials)}
    state = inst.InstalledState(credentials=tuple(credentials), **values)
    return replace(state, **inst.consumer_settings(state, env_path))


def test_the_credential_wins_and_the_consumer_defaults_apply(tmp_path):
    env_path, cred = _tree(tmp_path, {"AMQP_HOST": "10.0.0.5", "AMQP_PASS": "old"})
    state = _state(env_path, [("amqp-pass", str(cred))])
    assert state.password.reveal() == "s3cret pw" and state.password_source == "credential"
    assert state.env_has_password and "AMQP_PASS" not in state.environment
    assert state.credential_file.root_only and state.credential_file.mode == 0o600
    assert state.consumer == inst.ConsumerSettings(("10.0.0.5",), 5672, "/", "guest")  # the consumer's default user
    amqp = state.amqp_settings()
    assert (amqp.hosts, amqp.user, amqp.password.reveal()) == (("10.0.0.5",), "guest", "s3cret pw")
    assert state.amqp_values() == {"AMQP_HOST": "10.0.0.5", "AMQP_PORT": "5672", "AMQP_VHOST": "/",
                                   "AMQP_USER": "guest"}
    assert "s3cret" not in repr(state) and "s3cret" not in str(state.to_json())


def test_without_a_credential_the_env_file_password_is_used(tmp_path):
    env_path, _ = _tree(tmp_path, {"AMQP_HOST": "h", "AMQP_USER": "roboshop", "AMQP_PASS": "envpw"})
    state = _state(env_path)
    assert state.password.reveal() == "envpw" and state.password_source == "environment file"
    assert state.consumer.user == "roboshop" and state.credential_file is None


def test_errors_are_recorded_never_raised(tmp_path):
    env_path, cred = _tree(tmp_path, {"AMQP_HOST": "h", "AMQP_PORT": "70000"})
    state = _state(env_path, [("amqp-pass", str(cred))])
    assert state.consumer is None and state.config_error.startswith("AMQP_PORT")
    missing = _state(tmp_path / "none.env")
    assert missing.env_error == "not present" and "does not exist" in missing.env_unreadable()
    no_cred = _state(env_path, [("amqp-pass", str(tmp_path / "gone"))])
    assert no_cred.password is None and no_cred.credential_error and not no_cred.credential_file.exists
    assert "cannot be read" in no_cred.config_error
    bad = tmp_path / "bad.env"
    bad.write_bytes(b"AMQP_HOST=\xff\n")
    assert "UTF-8" in _state(bad).env_error


def test_read_settings_is_the_consumers_reading_of_the_env_file(tmp_path):
    env_path, _ = _tree(tmp_path, {"AMQP_HOST": "a,b", "AMQP_PORT": "5673", "AMQP_PASS": "pw"})
    state = inst.read_settings(env_path)
    assert state.amqp_values() == {"AMQP_HOST": "a,b", "AMQP_PORT": "5673", "AMQP_VHOST": "/",
                                   "AMQP_USER": "guest"}
    assert state.password.reveal() == "pw" and state.properties == {}
    assert "does not exist" in inst.read_settings(tmp_path / "missing.env").env_unreadable()


def test_lstat_never_follows_a_symlink(tmp_path):
    target = tmp_path / "real"
    target.write_bytes(b"\x7fELF....")
    os.chmod(target, 0o755)
    link = tmp_path / "dispatch"
    link.symlink_to(target)
    info = inst.lstat(link)
    assert info.kind == "symlink" and not info.root_only
    assert inst.flavour_of(link) is None and inst.flavour_of(target) == "go"
    assert inst.lstat(tmp_path / "nothing").kind == "missing"


def test_read_on_this_machine_records_what_is_missing():
    state = inst.read(env_file=Path("/nonexistent/dispatch.env"), app_dir=Path("/nonexistent-app"))
    assert not state.installed and state.env_error == "not present" and not state.binary.exists
    assert inst.from_json(state.to_json()) == state


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.builds(inst.InstalledState, environment=st.dictionaries(_TEXT, _TEXT, max_size=3),
                 properties=st.dictionaries(_TEXT, _TEXT, max_size=3), journal=st.lists(_TEXT, max_size=3).map(tuple),
                 host=st.builds(HostFacts, systemd_version=st.none() | st.integers(0, 999),
                                os_id=st.sampled_from(["", "rocky", "debian"]))))
def test_any_state_round_trips_through_its_record(state):
    assert inst.from_json(state.to_json()) == state


def test_a_stale_environment_password_beside_the_credential_is_masked_but_never_used():
    from roboshop_dispatch.facts.installed import _passwords

    env = {"environment": {}, "password": Secret("old-in-env"), "password_source": "environment file"}
    cred = {"password": Secret("new-credential"), "password_source": "credential"}
    state = InstalledState(**_passwords(env, cred))
    assert state.password is not None and state.password.reveal() == "new-credential"
    assert state.password_source == "credential"
    assert sorted(state.secrets()) == ["new-credential", "old-in-env"]
    assert "old-in-env" not in json.dumps(state.to_json()) and "new-credential" not in json.dumps(state.to_json())
    alone = InstalledState(**_passwords(env, {}))
    assert alone.secrets() == ["old-in-env"] and alone.shadowed_password is None


def test_reading_only_the_passwords_does_not_load_pika(tmp_path):
    """`dispatchctl logs` masks the installed passwords: it reads the files, not pika's import."""
    import subprocess
    import sys

    env = tmp_path / "dispatch.env"
    env.write_text('AMQP_HOST="h"\nAMQP_PASS="s3cret pw"\n')
    code = ("import sys; from pathlib import Path; from roboshop_dispatch.facts.installed import read_settings; "
            f"state = read_settings(Path({str(env)!r}), interpret=False); "
            "assert state.secrets() == ['s3cret pw'], state.secrets(); "
            "assert 'pika' not in sys.modules, 'pika was imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
