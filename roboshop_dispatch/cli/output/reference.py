"""``docs/reference/options.md``: every setting's option, variable, default, where an installation
remembers it, the commands that take it and its Ansible option, rendered from the one declaration
(:mod:`roboshop_dispatch.knobs`). ``scripts/options-reference``
writes it; tests/test_options_reference.py fails when it is not current."""

from __future__ import annotations

from typing import List

from ... import layout
from ...knobs import COMMANDS, OPTIONS, PASS_FILE_ENV, PASSWORD_ENV, Knob

# where sources.remembered finds each installed value that is not a variable of the environment file
REMEMBERED_FROM = {
    "service_user": "the unit's `User=`",
    "app_dir": "the unit's `ExecStart=` (the directory of the binary it runs)",
    "flavour": "the binary the unit runs",
    "artifact": f"the build stamp beside the binary (`{layout.BUILD_STAMP_NAME}`)",
    "insecure": "the build stamp (an `http://` artifact was allowed)",
    "instances": f"`{layout.INSTANCES_FILE}` (none: 1)",
    "otlp_endpoint": f"`OTEL_EXPORTER_OTLP_ENDPOINT` in `{layout.ENV_FILE}` (absent: none)",
    "metrics_listen": f"`DISPATCH_METRICS_LISTEN` in `{layout.ENV_FILE}` (absent: none)",
    "otlp_headers": f"the credential `{layout.OTLP_HEADERS_FILE}`, else `OTEL_EXPORTER_OTLP_HEADERS` in "
                    f"`{layout.ENV_FILE}`; shown only as set",
}
PASSWORD_NAMES = ("amqp_pass", "amqp_pass_file")


def remembered_from(knob: Knob) -> str:
    if knob.name in PASSWORD_NAMES:
        return f"the credential `{layout.CREDENTIAL_FILE}`, else `AMQP_PASS` in `{layout.ENV_FILE}`"
    if not knob.installed:
        return "never (given each time)"
    return REMEMBERED_FROM.get(knob.name, f"`{knob.installed}` in `{layout.ENV_FILE}`")


def _taken(knob: Knob, command: str) -> str:
    if command in knob.commands:
        return "option"
    if command in knob.read_by:
        return "variable"
    return "option (plain)" if command in knob.plain else ""


def reference() -> str:
    lines: List[str] = [
        "# Options reference",
        "",
        "<!-- generated from roboshop_dispatch/knobs.py by scripts/options-reference: do not edit by hand "
        "(tests/test_options_reference.py fails when this file is not current) -->",
        "",
        "Every setting is declared once, in `roboshop_dispatch/knobs.py`. A setting a command takes is",
        "taken from its option, else its `DISPATCHCTL_*` variable, else what the installation remembers,",
        "else its default; each value is validated, whatever its source, before anything is touched (exit",
        "2 naming the source). *option*: the command takes the option (and the variable); *variable*: it",
        "reads the variable and the installed value, without an option; *option (plain)*: the option with",
        "its default only. The password: `--amqp-pass-file`, else `--amqp-pass`, else",
        f"`${PASS_FILE_ENV}`, else `${PASSWORD_ENV}`, else the installed one, else a hidden prompt on a",
        "terminal.",
        "",
        "| option | " + " | ".join(COMMANDS) + " | Ansible |",
        "|---|" + "---|" * len(COMMANDS) + "---|",
    ]
    for knob in OPTIONS:
        ansible = f"`{knob.ansible}` ({knob.ansible_type})"
        lines.append(f"| `{knob.option}` | " + " | ".join(_taken(knob, c) for c in COMMANDS) + f" | {ansible} |")
    for knob in OPTIONS:
        value = "" if knob.flag else f" {knob.metavar}"
        lines += ["", f"## `{knob.option}{value}`", "", knob.help, ""]
        form = " (in `OTEL_EXPORTER_OTLP_HEADERS`'s form: `key=value,...`, values URL-encoded)" if knob.join else ""
        lines.append(f"- variable: `{knob.envvar}`{form}")
        if knob.name not in PASSWORD_NAMES:
            default = "none (required)" if knob.default is None and not knob.optional else \
                "none" if knob.default is None else f"`{knob.default}`"
            lines.append(f"- default: {default}")
        lines.append(f"- remembered from: {remembered_from(knob)}")
        lines.append(f"- Ansible module option: `{knob.ansible}` ({knob.ansible_type}"
                     + (f": {', '.join(knob.choices)}" if knob.choices else "") + ")")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
