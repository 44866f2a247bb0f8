"""EnvironmentFile quoting round-trips every awkward character (pure logic).

The same values are checked against a real systemd in tests/test_provision*.py (the service
authenticates with such a password); here the renderer and our parser must agree exactly.
"""

from __future__ import annotations

import pytest

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
    text = "# c\n; c\n\nA=plain value  \nB='single \"q\" $x'\nexport C=\"d\"\nnot an assignment\n"
    assert envfile.parse(text) == {"A": "plain value", "B": 'single "q" $x', "C": "d"}
