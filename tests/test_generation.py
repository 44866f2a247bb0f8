"""The kept generation, the health gate's timeout, the drop-ins' carrying and the unit names of
stop/restart, from files under a temporary root (``Context.root``): fast, no systemd. What they do
on a real host is tested in test_rollback_systemd.py."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Dict

import pytest

from roboshop_dispatch.facts.instances import InstanceInfo
from roboshop_dispatch.layout import GENERATIONS_DIR, KEPT_POINTER, STAGED_POINTER
from roboshop_dispatch.settings import AmqpSettings, Secret, Settings
from roboshop_dispatch.steps import dropins, gate, generation
from roboshop_dispatch.steps.base import Context, StepFailed
from roboshop_dispatch.steps.operate import unit_names
from roboshop_dispatch.validate import SettingsError
from tests.test_steps import RecordingRunner, facts

UNIT_DIR = "/etc/systemd/system"
FILES: Dict[str, tuple] = {  # path -> (bytes, mode)
    "/app/dispatch": (b"PK zipapp one", 0o755),
    "/etc/roboshop/dispatch.env": (b'AMQP_HOST="10.0.0.5"\nAMQP_VHOST="good"\n', 0o600),
    "/etc/roboshop/dispatch.amqp-pass": (b"s3cret\n", 0o600),
    "/etc/roboshop/dispatch.otlp-headers": (b"authorization=Bearer%20tok3n\n", 0o600),
    f"{UNIT_DIR}/dispatch.service": (b"[Service]\nExecStart=/usr/bin/python3 /app/dispatch\n", 0o644),
    f"{UNIT_DIR}/dispatch.service.d/10-nice.conf": (b"[Service]\nNice=5\n", 0o644),
}


def ctx_for(root: Path, **kw) -> Context:
    amqp = AmqpSettings.build(hosts="10.0.0.5", password=Secret("s3cret"))
    return Context(settings=Settings.build(amqp=amqp, **kw), facts=facts("debian12", is_root=True, systemd_pid1=True),
                   runner=RecordingRunner(), systemd=None, root=root)  # type: ignore[arg-type]


def put(root: Path, path: str, data: bytes, mode: int) -> Path:
    real = root / path.lstrip("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_bytes(data)
    os.chmod(real, mode)
    return real


def installed(root: Path) -> None:
    for path, (data, mode) in FILES.items():
        put(root, path, data, mode)


def test_a_kept_generation_puts_every_file_back_as_it_was(tmp_path):
    installed(tmp_path)
    ctx = ctx_for(tmp_path)
    gen = generation._capture(ctx, ["dispatch.service"], ["dispatch.service"])
    where = tmp_path / str(GENERATIONS_DIR).lstrip("/")
    assert stat.S_IMODE(where.stat().st_mode) == 0o700 and stat.S_IMODE(gen.directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in gen.directory.iterdir())
    assert generation.differences(ctx, gen) == []
    assert gen.instances == 1 and gen.units == ("dispatch.service",)

    # a change: other settings, the credential gone, the template and another drop-in added, a mode drifted
    put(tmp_path, "/etc/roboshop/dispatch.env", b'AMQP_HOST="10.0.0.5"\nAMQP_VHOST="nope"\n', 0o600)
    (tmp_path / "etc/roboshop/dispatch.amqp-pass").unlink()
    put(tmp_path, "/etc/roboshop/dispatch.otlp-headers", b"authorization=Bearer%20other\n", 0o600)
    put(tmp_path, f"{UNIT_DIR}/dispatch@.service", b"[Service]\n", 0o644)
    put(tmp_path, f"{UNIT_DIR}/dispatch.service.d/10-nice.conf", b"[Service]\nNice=9\n", 0o644)
    put(tmp_path, f"{UNIT_DIR}/dispatch.service.d/20-new.conf", b"[Service]\n", 0o644)
    os.chmod(tmp_path / "app/dispatch", 0o777)
    found = {(m.path, what) for m, what in generation.differences(ctx, gen)}
    assert found == {("/etc/roboshop/dispatch.env", "replace"), ("/etc/roboshop/dispatch.amqp-pass", "write"),
                     ("/etc/roboshop/dispatch.otlp-headers", "replace"),
                     (f"{UNIT_DIR}/dispatch@.service", "remove"), (f"{UNIT_DIR}/dispatch.service.d/10-nice.conf",
                                                                   "replace"),
                     (f"{UNIT_DIR}/dispatch.service.d/20-new.conf", "remove"), ("/app/dispatch", "fix")}

    marks = generation.restore(ctx, gen, generation.verify(gen))
    assert set(marks) == {"envfile", "credential", "otlp-headers", "unit", "binary"}
    assert generation.differences(ctx, gen) == []
    for path, (data, mode) in FILES.items():
        real = tmp_path / path.lstrip("/")
        assert real.read_bytes() == data and stat.S_IMODE(real.stat().st_mode) == mode, path
    assert not (tmp_path / UNIT_DIR.lstrip("/") / "dispatch@.service").exists()
    assert not (tmp_path / UNIT_DIR.lstrip("/") / "dispatch.service.d/20-new.conf").exists()


def test_a_damaged_generation_is_refused_whole(tmp_path):
    installed(tmp_path)
    ctx = ctx_for(tmp_path)
    gen = generation._capture(ctx, ["dispatch.service"], [])
    generation._write_pointer(ctx, KEPT_POINTER, gen.id)
    assert generation.kept(ctx) == gen
    blob = next(m.blob for m in gen.members if m.role == "envfile")
    (gen.directory / blob).write_bytes(b"tampered")
    with pytest.raises(generation.GenerationError, match=r"dispatch\.env .* damaged"):
        generation.verify(gen)
    manifest = json.loads((gen.directory / "manifest.json").read_text())
    manifest["members"][0]["path"] = "/etc/../root/.ssh/authorized_keys"
    (gen.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(generation.GenerationError, match="unexpected file"):
        generation.kept(ctx)
    generation._write_pointer(ctx, KEPT_POINTER, "../../etc")  # not a generation's name: none kept
    assert generation.kept(ctx) is None


def test_promote_keeps_one_generation_and_discard_drops_the_staged_one(tmp_path):
    installed(tmp_path)
    ctx = ctx_for(tmp_path)
    first = generation._capture(ctx, ["dispatch.service"], [])
    generation._write_pointer(ctx, STAGED_POINTER, first.id)
    assert generation.promote(ctx) == first.id
    assert generation.kept(ctx) == first and generation.staged(ctx) is None
    second = generation._capture(ctx, ["dispatch.service"], [])
    generation._write_pointer(ctx, STAGED_POINTER, second.id)
    generation.promote(ctx)
    assert generation.kept(ctx) == second and not first.directory.exists()  # the older one goes
    third = generation._capture(ctx, ["dispatch.service"], [])
    generation._write_pointer(ctx, STAGED_POINTER, third.id)
    generation.discard_staged(ctx)
    assert generation.staged(ctx) is None and not third.directory.exists() and generation.kept(ctx) == second


def test_only_units_that_all_run_ready_are_a_good_generation():
    up = InstanceInfo("dispatch@1.service", active_state="active", status_text="consuming orders; 5 orders handled")
    retrying = InstanceInfo("dispatch@2.service", active_state="active",
                            status_text="access to vhost 'x' refused; retrying in 2.0s")
    starting = InstanceInfo("dispatch@2.service", active_state="activating")
    assert generation.ready_now([up])
    assert not generation.ready_now([up, retrying]) and not generation.ready_now([up, starting])


def test_the_ready_timeout_grows_with_the_host_list_unless_given(tmp_path):
    ctx = ctx_for(tmp_path)
    assert gate.ready_timeout(ctx) == 30.0  # nothing installed yet
    put(tmp_path, "/etc/roboshop/dispatch.env", b'AMQP_HOST="n1,n2,n3"\n', 0o600)
    assert gate.ready_timeout(ctx) == 50.0
    assert gate.ready_timeout(ctx_for(tmp_path, ready_timeout=7)) == 7.0


@pytest.mark.parametrize("words, units", [
    (["2"], ("dispatch@2.service",)), (["dispatch@2", "dispatch@2.service", "3"], ("dispatch@2.service",
                                                                                   "dispatch@3.service")),
    (["dispatch"], ("dispatch.service",)), (["dispatch.service"], ("dispatch.service",)), ([], ()),
])
def test_stop_and_restart_name_units_by_number_or_name(words, units):
    assert unit_names(words) == units


@pytest.mark.parametrize("word", ["0", "65", "dispatch@", "sshd", "dispatch@1.socket", "-1", "1;reboot", "٣"])
def test_anything_else_is_not_a_dispatch_unit(word):
    with pytest.raises(SettingsError, match="not a dispatch unit"):
        unit_names([word])


def test_drop_ins_are_carried_both_ways_or_refused_with_the_path(tmp_path):
    ctx = ctx_for(tmp_path)
    put(tmp_path, f"{UNIT_DIR}/dispatch.service.d/50-nice.conf", b"[Service]\nNice=7\n", 0o644)
    put(tmp_path, f"{UNIT_DIR}/dispatch.service.d/README", b"not a drop-in", 0o644)
    carry = dropins.plan_carry(ctx, 2)
    assert carry.moves == ((Path(f"{UNIT_DIR}/dispatch.service.d/50-nice.conf"),
                            Path(f"{UNIT_DIR}/dispatch@.service.d/50-nice.conf")),)
    dropins.carry_over(ctx, carry)
    assert (tmp_path / UNIT_DIR.lstrip("/") / "dispatch@.service.d/50-nice.conf").read_bytes() == \
        b"[Service]\nNice=7\n"
    dropins.retire(ctx, carry)
    assert not (tmp_path / UNIT_DIR.lstrip("/") / "dispatch.service.d/50-nice.conf").exists()

    # the other side already has one of that name, with other content: which one wins is the operator's call
    put(tmp_path, f"{UNIT_DIR}/dispatch.service.d/50-nice.conf", b"[Service]\nNice=1\n", 0o644)
    with pytest.raises(StepFailed, match=r"service\.d/50-nice\.conf and .*dispatch@\.service\.d/50-nice\.conf"):
        dropins.plan_carry(ctx, 2)
    (tmp_path / UNIT_DIR.lstrip("/") / "dispatch.service.d/50-nice.conf").unlink()
    # N -> 1: one instance's own drop-in has no place in dispatch.service
    put(tmp_path, f"{UNIT_DIR}/dispatch@2.service.d/override.conf", b"[Service]\n", 0o644)
    with pytest.raises(StepFailed, match=r"dispatch@2\.service\.d/override\.conf applies to one instance only"):
        dropins.plan_carry(ctx, 1)
