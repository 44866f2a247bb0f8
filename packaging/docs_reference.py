"""Writes docs/reference/ from the code: ``python packaging/docs_reference.py [--check]``.

Each page is rendered from the one place its facts live, so it cannot drift from what runs:

- ``commands.md``: every command, its arguments and options, from the typer app (as ``--help``);
- ``options.md``: every setting (roboshop_dispatch/cli/output/reference.py, from knobs.py);
- ``exit-codes.md``: ``errors.ExitStatus`` and ``errors.ErrorKind``, with their comments;
- ``json.md``: the JSON Schema every ``--json`` document is held to, and a real usage-error document;
- ``metrics.md``: the consumer's metric declarations (``consumer/metrics.py``, instantiated);
- ``consumer-environment.md``: the consumer's variables (``consumer/config.VARIABLES``).

``--check`` writes nothing and exits 1 naming the stale pages; page names limit either to those
pages. scripts/reference runs it; tests/test_reference_docs.py runs ``--check PAGE`` in a fresh
interpreter (the command list's order is the order the CLI's modules are first imported in).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "docs" / "reference"
NOTE = ("<!-- generated from {source} by scripts/reference: do not edit by hand "
        "(tests/test_reference_docs.py fails when this file is not current) -->")
WIDTH = 100


def header(title: str, source: str, *intro: str) -> List[str]:
    """The page's title, the generated-file note, then ``intro``'s lines as they are."""
    return [f"# {title}", "", NOTE.format(source=source), "", *intro]


def cell(text: str) -> str:
    """Text for one table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


# ---- commands.md: the typer app ---------------------------------------------------------------

COMMON = (("--json", "`--json`, `-o json`"), ("--dry-run", "`--dry-run`"), ("--diff", "`--diff`"),
          ("--exit-code", "`--exit-code`"), ("--lines", "`-n N`"), ("--verbose", "`-v`/`-q`"))


def _context(command: Any, name: str, parent: Any = None) -> Any:
    import typer

    settings = {**(command.context_settings or {}), "terminal_width": WIDTH, "max_content_width": WIDTH}
    return typer.Context(command, info_name=name, parent=parent, **settings)


def walk(group: Any, ctx: Any, path: str) -> Iterator[Tuple[str, Any, Any]]:
    """(command path, command, its context) for every command under ``group``, in --help's order."""
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        sub_ctx = _context(sub, name, ctx)
        if hasattr(sub, "list_commands"):
            yield from walk(sub, sub_ctx, f"{path} {name}")
        else:
            yield f"{path} {name}", sub, sub_ctx


def records(command: Any, ctx: Any) -> List[Tuple[str, str, str]]:
    """(kind, the option or argument as --help shows it, its help) for each visible parameter."""
    out = []
    for param in command.get_params(ctx):
        record = None if getattr(param, "hidden", False) else param.get_help_record(ctx)
        if record:
            out.append((param.param_type_name, record[0], record[1]))
    return out


def takes(recs: List[Tuple[str, str, str]], flag: str) -> bool:
    return any(flag in shown.replace(",", " ").split() for kind, shown, _ in recs if kind == "option")


COMMON_OPTIONS = ("--dry-run", "--diff", "--json", "--output", "--exit-code", "--verbose", "--quiet", "--help")


def common(shown: str) -> str:
    """The common option a help record names ('' when it is the command's own)."""
    words = shown.replace(",", " ").split()
    return next((flag for flag in COMMON_OPTIONS if flag in words), "")


def command_section(path: str, command: Any, ctx: Any, canon: Dict[str, Tuple[str, str]]) -> List[str]:
    """A command's usage, help, own arguments and options, and the common options it takes (an
    option whose help differs from the common one's is listed as its own)."""
    recs = records(command, ctx)
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    lines = [f"## `{path}`", "", "```", usage, "```", "", " ".join((command.help or "").split()), ""]

    def is_common(kind: str, shown: str, helped: str) -> bool:
        return kind == "option" and canon.get(common(shown), ("", ""))[1] == helped

    for kind, title in (("argument", "Arguments"), ("option", "Options")):
        shown = [(s, h) for k, s, h in recs if k == kind and not is_common(k, s, h)]
        if shown:
            lines += [f"{title}:", ""] + [f"- `{s}`: {' '.join(h.split())}" for s, h in shown] + [""]
    taken = [s.split(",")[0].split()[0] for k, s, h in recs if is_common(k, s, h)]
    lines += ["[Common options](#common-options): " + ", ".join(f"`{t}`" for t in taken) + ".", ""]
    return lines


def canonical(found: List[Tuple[str, Any, Any]]) -> Dict[str, Tuple[str, str]]:
    """Each common option as most commands show it: (the option, its help)."""
    from collections import Counter

    counts: Dict[str, Counter] = {}
    for _, command, ctx in found:
        for kind, shown, helped in records(command, ctx):
            flag = common(shown) if kind == "option" else ""
            if flag:
                counts.setdefault(flag, Counter())[(shown, helped)] += 1
    return {flag: counter.most_common(1)[0][0] for flag, counter in counts.items()}


def common_section(canon: Dict[str, Tuple[str, str]]) -> List[str]:
    lines = ["## Common options", "",
             "The same in every command that takes them (the table above says which; a command whose",
             "option says more lists it as its own):", ""]
    lines += [f"- `{canon[flag][0]}`: {' '.join(canon[flag][1].split())}" for flag in COMMON_OPTIONS if flag in canon]
    return [*lines, ""]


def commands_page() -> str:
    import typer.main

    from roboshop_dispatch.cli.app import app

    root = typer.main.get_command(app)
    found = list(walk(root, _context(root, "dispatchctl"), "dispatchctl"))
    lines = header("Commands", "the typer app (roboshop_dispatch/cli/)",
                   "Every command and what it takes, as its `--help` says (`dispatchctl help COMMAND` prints the",
                   "same). Each setting's option (its variable, default and where an installation remembers it)",
                   "is in [options.md](options.md); exit codes in [exit-codes.md](exit-codes.md).",
                   "`dispatchctl lab ...` exists only in a checkout or a wheel, not in the pyz or the RPM.",
                   "", "Which command takes the common flags (every command takes `-h`/`--help`):", "",
                   "| command | " + " | ".join(label for _, label in COMMON) + " |",
                   "|---|" + "---|" * len(COMMON))
    for path, command, ctx in found:
        recs = records(command, ctx)
        marks = ["yes" if takes(recs, flag) else "" for flag, _ in COMMON]
        lines.append(f"| `{path[len('dispatchctl '):]}` | " + " | ".join(marks) + " |")
    lines.append("")
    canon = canonical(found)
    lines += common_section(canon)
    for path, command, ctx in found:
        lines += command_section(path, command, ctx, canon)
    return "\n".join(lines).rstrip("\n") + "\n"


# ---- exit-codes.md: errors.py -----------------------------------------------------------------

def comments(source: str) -> Dict[str, str]:
    """CLASS.NAME -> the comment that ends its line (``    NAME = value  # comment`` in a class)."""
    found: Dict[str, str] = {}
    klass = name = ""
    after_class = False
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 0:
            after_class = tok.string == "class"
        elif tok.type == tokenize.NAME and after_class:
            klass, after_class = tok.string, False
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and not name:
            name = tok.string
        elif tok.type == tokenize.COMMENT and name:
            found[f"{klass}.{name}"] = tok.string.lstrip("# ").strip()
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            name = ""
    return found


def exit_codes_page() -> str:
    from roboshop_dispatch import errors

    said = comments(Path(errors.__file__).read_text())
    lines = header("Exit codes", "roboshop_dispatch/errors.py (ExitStatus, ErrorKind)",
                   " ".join((errors.ExitStatus.__doc__ or "").split()), "",
                   "| code | name | meaning |", "|---|---|---|")
    for name, status in errors.ExitStatus.__members__.items():
        meaning = said.get(f"ExitStatus.{name}") or name.lower()
        lines.append(f"| {int(status)} | `{name}` | {cell(meaning)} |")
    lines += ["", "## Error kinds", "",
              "With `--json`, a command that could not do its job says why in the envelope's `error.kind`",
              "(see [json.md](json.md)); the kind sets the exit status unless the command has its own:", "",
              "| kind | exit | meaning |", "|---|---|---|"]
    for kind in errors.ErrorKind.ALL:
        name = next(n for n, v in vars(errors.ErrorKind).items() if v == kind and n.isupper())
        meaning = cell(said.get(f"ErrorKind.{name}", ""))
        lines.append(f"| `{kind}` | {int(errors.ErrorKind.exit_status(kind))} | {meaning} |")
    return "\n".join(lines) + "\n"


# ---- json.md: the schema ----------------------------------------------------------------------

def describe_type(spec: Dict[str, Any]) -> str:
    if "$ref" in spec:
        return f"[{spec['$ref'].rsplit('/', 1)[-1]}](#{spec['$ref'].rsplit('/', 1)[-1]})"
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    kind = spec.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and isinstance(spec.get("items"), dict):
        return f"array of {describe_type(spec['items'])}"
    return kind


def members(spec: Dict[str, Any], prefix: str = "") -> Iterator[str]:
    required = set(spec.get("required", ()))
    for name, sub in spec.get("properties", {}).items():
        if not isinstance(sub, dict) or (prefix == "" and name == "error" and "$ref" not in sub):
            continue
        yes = "yes" if name in required else ""
        yield f"| `{prefix}{name}` | {describe_type(sub)} | {yes} | {cell(sub.get('description', ''))} |"
        if "properties" in sub and "$ref" not in sub:
            yield from members(sub, f"{prefix}{name}.")


def which_def(schema: Dict[str, Any]) -> Iterator[Tuple[str, str]]:
    """(the commands, the $defs entry their document follows), from the schema's if/then."""
    for rule in schema["else"]["allOf"]:
        command = rule["if"]["properties"]["command"]
        names = command.get("enum") or [command["const"]]
        if not isinstance(rule["then"], dict):  # `dispatchctl` alone: only an error document
            continue
        yield ", ".join(f"`{n}`" for n in names), rule["then"]["$ref"].rsplit("/", 1)[-1]


def usage_error_example() -> str:
    """A real document: ``dispatchctl install --amqp-port 70000 --json`` (a usage error: exit 2)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHCTL_")}
    exe = Path(sys.prefix) / "bin" / "dispatchctl"
    res = subprocess.run([str(exe), "install", "--amqp-port", "70000", "--json"], capture_output=True,
                         text=True, timeout=60, env=env)
    shown = '$ dispatchctl install --amqp-port 70000 --json; echo "exit $?"'
    return f"{shown}\n{res.stdout.strip()}\nexit {res.returncode}"


def json_page() -> str:
    schema = json.loads((REPO / "roboshop_dispatch/schema/dispatchctl.schema.json").read_text())
    lines = header("JSON output", "roboshop_dispatch/schema/dispatchctl.schema.json",
                   cell(schema["description"]), "",
                   "The schema itself (JSON Schema draft 2020-12) ships in the package:",
                   "[`dispatchctl.schema.json`](../../roboshop_dispatch/schema/dispatchctl.schema.json); the tests",
                   "validate every command's real output against it, error documents included. Which commands",
                   "take `--json` is in [commands.md](commands.md).", "",
                   "A real document (generated with this page):", "", "```console", usage_error_example(), "```",
                   "", "## The envelope", "", "| member | type | required | meaning |", "|---|---|---|---|")
    lines += list(members(schema))
    lines += ["", "A document with an `error` whose kind is `usage`, `preflight`, `internal` or `aborted` is a",
              "[failure](#failure) document. Otherwise each command's document adds:", "",
              "| command | document |", "|---|---|"]
    lines += [f"| {names} | [{name}](#{name}) |" for names, name in which_def(schema)]
    for name, spec in schema["$defs"].items():
        lines += ["", f"## {name}", ""]
        if spec.get("description"):
            lines += [cell(spec["description"]), ""]
        lines += ["| member | type | required | meaning |", "|---|---|---|---|", *members(spec)]
    return "\n".join(lines) + "\n"


# ---- metrics.md: consumer/metrics.py ----------------------------------------------------------

def metrics_page() -> str:
    from roboshop_dispatch.consumer import metrics

    registry = metrics.Metrics().registry
    lines = header("Metrics", "roboshop_dispatch/consumer/metrics.py",
                   "What the consumer serves on `http://HOST:PORT/metrics` when `DISPATCH_METRICS_LISTEN` is set",
                   "(`dispatchctl configure --metrics-listen HOST:PORT`; instance N of `--instances` on PORT + N - 1),",
                   "beside prometheus_client's own `process_*` and `python_info`. No authentication: listen on",
                   "127.0.0.1 unless a firewall guards the port.", "",
                   "| metric | type | labels | meaning |", "|---|---|---|---|")
    for family in registry.collect():
        if not family.name.startswith("dispatch_"):
            continue
        shown = family.name + ("_total" if family.type == "counter" else "")
        labels = sorted({f"{k}={v}" for s in family.samples for k, v in s.labels.items() if k != "le"})
        lines.append(f"| `{shown}` | {family.type} | {', '.join(f'`{x}`' for x in labels)} | "
                     f"{cell(family.documentation)} |")
    lines += ["", "Every label above is present from the start, at 0 (this table is read from a fresh registry).",
              "`dispatch_order_processing_seconds` buckets (seconds): "
              + ", ".join(f"{b:g}" for b in metrics.BUCKETS) + "."]
    return "\n".join(lines) + "\n"


# ---- consumer-environment.md: consumer/config.py ----------------------------------------------

def environment_page() -> str:
    from roboshop_dispatch.consumer import config

    lines = header("The consumer's environment", "roboshop_dispatch/consumer/config.py (VARIABLES)",
                   "What `/app/dispatch` (the bundled consumer) reads from its environment: dispatchctl writes",
                   "them into `/etc/roboshop/dispatch.env` (root, 0600) from its options. An invalid value",
                   "exits 2 at start with one line naming the variable; `/app/dispatch --check-config` prints",
                   "the settings (password masked) and exits.", "",
                   "| variable | default | meaning |", "|---|---|---|")
    for name, default, meaning in config.VARIABLES:
        lines.append(f"| `{name}` | `{default}` | {cell(meaning)} |")
    return "\n".join(lines) + "\n"


def options_page() -> str:
    from roboshop_dispatch.cli.output.reference import reference

    return reference()


PAGES: Dict[str, Callable[[], str]] = {
    "commands.md": commands_page,
    "options.md": options_page,
    "exit-codes.md": exit_codes_page,
    "json.md": json_page,
    "metrics.md": metrics_page,
    "consumer-environment.md": environment_page,
}


def main(argv: List[str]) -> int:
    """Write the pages (``--check``: only say which are stale, exit 1); page names limit it."""
    stale = []
    chosen = [a for a in argv if not a.startswith("-")] or list(PAGES)
    for name, render in PAGES.items():
        if name not in chosen:
            continue
        text, path = render(), OUT / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if "--check" not in argv:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if "--check" in argv and stale:
        print(f"not current (run scripts/reference): {', '.join(stale)}", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote docs/reference/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
