"""EnvironmentFile quoting round-trips every awkward character (pure logic).

The same values are checked against a real systemd in tests/test_provision*.py (the service
authenticates with such a password); here the renderer and our parser must agree exactly.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch import envfile

AWKWARD = [
    "plain",
    "with space",
    " leading and trailing ",
    'dq"uote',
    "sq'uote",
    "dollar$HOME and ${PATH}",
    "percent %n %% %i",
    "back\\slash\\",
    "hash # not a comment",
    "back`tick`",
    "semi;colon & amp | pipe",
    "ünïcödé ✓ 密码",
    "@:/%#?&=",
    "",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_round_trip(value):
    text = envfile.render({"AMQP_PASS": value})
    assert envfile.parse(text) == {"AMQP_PASS": value}


def test_render_quotes_every_value_and_escapes_specials():
    assert envfile.quote('a"b\\c$d`e') == '"a\\"b\\\\c\\$d\\`e"'


@pytest.mark.parametrize("value", ["line\nbreak", "cr\rhere", "nul\x00"])
def test_newline_rejected(value):
    with pytest.raises(ValueError):
        envfile.quote(value)


def test_invalid_key_rejected():
    with pytest.raises(ValueError):
        envfile.render({"BAD-KEY": "x"})


def test_parse_ignores_comments_and_reads_unquoted_and_single_quoted():
    # ``export C=...`` sets nothing for systemd (the key would be "export C": not a valid name),
    # proven against systemd itself by test_parse_agrees_with_systemd below
    text = "# c\n; c\n\nA=plain value  \nB='single \"q\" $x'\nexport C=\"d\"\nnot an assignment\n"
    assert envfile.parse(text) == {"A": "plain value", "B": 'single "q" $x'}


# -- systemd's own rules, and systemd itself ----------------------------------------------------

# each line (or group) exercises one rule of src/basic/env-file.c
TRICKY = (
    "# a comment\n"
    "  ; another, indented\n"
    "# a comment ending in a backslash \\\n"
    "SWALLOWED=by-the-comment\n"
    "PLAIN=value with  inner  blanks   \n"
    "  SPACED_KEY   =   leading blanks go\n"
    "MIXED='single'\"double\"bare\n"
    "LATE_QUOTE=x \"y\" 'z'\n"
    "DQ_ESC=\"a\\\"b\\\\c\\`d\\$e\\n\\qf\"\n"
    "BARE_ESC=a\\ b\\\\c\\$d\n"
    "CONT=first \\\n"
    "second\n"
    "DQ_CONT=\"one\\\n"
    "two\"\n"
    "SQ_MULTI='line1\n"
    "line2'\n"
    "EMPTY=\n"
    "EMPTY_QUOTED=\"\"\n"
    "export EXPORTED=ignored\n"
    "NO_ASSIGNMENT\n"
    "1BAD=digit-first\n"
    "BAD-NAME=dash\n"
    "DUP=first\n"
    "DUP=second\n"
    "CR=carriage\r"
    "AFTER_CR=yes\n"
    "HASH=not # a comment\n"
    "DOLLAR=$HOME ${PATH} %n\n"
    "UNICODE=\u00fcn\u00efc\u00f6d\u00e9 \u2713\n"
    "LAST=no newline at the end"
)


def test_parse_follows_systemds_rules():
    env = envfile.parse(TRICKY)
    assert env == {
        "PLAIN": "value with  inner  blanks",
        "SPACED_KEY": "leading blanks go",
        "MIXED": "singledoublebare",
        "LATE_QUOTE": "x \"y\" 'z'",
        "DQ_ESC": 'a"b\\c`d$e\\n\\qf',
        "BARE_ESC": "a b\\c$d",
        "CONT": "first second",
        "DQ_CONT": "onetwo",
        "SQ_MULTI": "line1\nline2",
        "EMPTY": "",
        "EMPTY_QUOTED": "",
        "DUP": "second",
        "CR": "carriage",
        "AFTER_CR": "yes",
        "HASH": "not # a comment",
        "DOLLAR": "$HOME ${PATH} %n",
        "UNICODE": "\u00fcn\u00efc\u00f6d\u00e9 \u2713",
        "LAST": "no newline at the end",
    }


@pytest.mark.systemd
def test_parse_agrees_with_systemd(systemd_host):
    """The same file given to a real unit (systemd 252 as PID 1): the environment the process sees
    is what parse() says, key for key, no more and no less."""
    host = systemd_host
    host.write("/etc/tricky.env", TRICKY, mode=0o600)
    host.write("/etc/baseline.env", "", mode=0o600)
    seen = {}
    for name in ("tricky", "baseline"):
        res = host.run(["systemd-run", "--wait", "--quiet", "--collect", f"--unit=envtest-{name}",
                        f"--property=EnvironmentFile=/etc/{name}.env",
                        f"--property=StandardOutput=file:/tmp/{name}.out",
                        "/usr/bin/env", "-0"], check=False, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        raw = host.path(f"/tmp/{name}.out").read_bytes().decode("utf-8")
        seen[name] = dict(item.split("=", 1) for item in raw.split("\0") if item)
    from_file = {k: v for k, v in seen["tricky"].items() if k not in seen["baseline"]}
    assert from_file == envfile.parse(TRICKY)


_VALUES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"))


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), _VALUES, max_size=6))
def test_render_then_parse_round_trips_anything(values):
    assert envfile.parse(envfile.render(values, header="a header\n\nline")) == values


@given(st.text(alphabet=st.sampled_from(list(" \t\n\r#;='\"\\`$xX_9-")), max_size=80))
def test_parse_never_raises_and_yields_only_valid_names(text):
    assert all(envfile.is_valid_name(k) for k in envfile.parse(text))
