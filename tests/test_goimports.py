"""Which Go sources may need ``go get`` (roboshop_dispatch/goimports.py): pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest

from roboshop_dispatch import goimports

COURSE_FIXTURE = 'package main\n\nimport (\n\t"fmt"\n\t"os"\n\t"time"\n)\n\nfunc main() {}\n'
ORIGINAL_HEAD = '''package main

import (
	"encoding/json"
	"fmt"

	ot "github.com/opentracing/opentracing-go"
	"github.com/streadway/amqp"
)
'''


@pytest.mark.parametrize("text, expected", [
    (COURSE_FIXTURE, ["fmt", "os", "time"]),
    (ORIGINAL_HEAD, ["encoding/json", "fmt", "github.com/opentracing/opentracing-go", "github.com/streadway/amqp"]),
    ('// Package x.\n/* block */ package main; import "fmt"; import _ "embed"\nimport . "os"\n',
     ["fmt", "embed", "os"]),
    ('package main\n// import "github.com/x/y"\nfunc main() { println("import \\"a.b/c\\"") }\n', []),
    ('package main\nimport (\n\t"fmt" // why\n\t/* c */ x "example.com/m"\n)\n', ["fmt", "example.com/m"]),
])
def test_imports_reads_every_import_declaration_and_nothing_after(text, expected):
    assert goimports.imports(text) == expected


@pytest.mark.parametrize("text", ["", "func main() {}", "package main\nimport `fmt`\n",
                                  "package main\nimport (\n\"fmt\"\n"])
def test_what_does_not_read_as_go_is_none(text):
    assert goimports.imports(text) is None


def _tree(tmp_path: Path, files: dict) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        target = tmp_path / name
        target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
    return tmp_path


def test_standard_library_and_own_packages_need_no_get(tmp_path):
    src = _tree(tmp_path, {"main.go": 'package main\nimport (\n"fmt"\n"dispatch/util"\n)\n',
                           "util/u.go": 'package util\nimport "strings"\n', "README": "x"})
    assert not goimports.needs_get(src, "dispatch")


@pytest.mark.parametrize("files", [
    {"main.go": COURSE_FIXTURE, "util/u.go": 'package util\nimport "github.com/streadway/amqp"\n'},
    {"main.go": ORIGINAL_HEAD},
    {"main.go": COURSE_FIXTURE, "vendor/modules.txt": "# x\n"},
    {"main.go": "package main\nimport `fmt`\n"},
    {"main.go": b"package main\n\xff"},
    {"main.go": 'package main\nimport "dispatchx/y"\n'.replace("dispatchx", "dispatch.example")},
])
def test_anything_from_elsewhere_or_unreadable_needs_get(tmp_path, files):
    assert goimports.needs_get(_tree(tmp_path, files), "dispatch")
