"""Record the installed state of a real host for tests/test_diagnostics_recorded.py.

Boots a systemd-nspawn host, installs dispatch against a throwaway RabbitMQ node, moves the
password to the systemd credential (LoadCredential= in a drop-in), and writes what
``installed.read`` sees there, plus what ``dispatchctl check --json`` reported, to
tests/data/. Run as root: ``.venv/bin/python tests/record_installed.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roboshop_dispatch.lab.broker import Broker  # noqa: E402
from roboshop_dispatch.lab.nspawn import Container, ensure_rootfs, venv_bin  # noqa: E402

OUT = ROOT / "tests" / "data" / "installed-debian12-bundled-credential.json"
READ = ("import json; from roboshop_dispatch.facts import installed; "
        "print(json.dumps(installed.read(verify_unit=True, journal_lines=10, process=True).to_json()))")


def main() -> None:
    broker = Broker()
    broker.start()
    host = Container(ensure_rootfs())
    host.boot()
    try:
        host.write("/root/amqp.pass", broker.password + "\n")
        host.dispatchctl("install", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                         "--amqp-pass-file", "/root/amqp.pass", check=True)
        host.write("/etc/roboshop/dispatch.amqp-pass", broker.password, mode=0o600)
        host.write("/etc/systemd/system/dispatch.service.d/credential.conf",
                   "[Service]\nLoadCredential=amqp-pass:/etc/roboshop/dispatch.amqp-pass\n", mode=0o644)
        host.sh("sed -i '/^AMQP_PASS=/d' /etc/roboshop/dispatch.env && systemctl daemon-reload")
        facts = json.loads(host.run([venv_bin("python"), "-c", READ]).stdout)
        check = json.loads(host.dispatchctl("check", "--json").stdout)
        record = {"facts": facts, "check": {f["name"]: f["status"] for f in check["findings"]
                                            if not f["name"].startswith("rabbitmq.")}}
        text = json.dumps(record, indent=1, sort_keys=True) + "\n"
        assert broker.password not in text
        OUT.write_text(text)
        print(f"wrote {OUT}")
    finally:
        host.poweroff()
        broker.stop()


if __name__ == "__main__":
    main()
