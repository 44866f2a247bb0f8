"""Findings and reports: what every diagnosis returns, with the one rule for skipping checks."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

OK = "ok"
WARN = "warn"
FAIL = "fail"
SKIP = "skip"
STATUSES = (OK, WARN, FAIL, SKIP)

# The manual's "Common issues & fixes" rows (../shared/roboshop-contract.md), by name.
BINARY_NOT_FOUND = "Binary not found"
SERVICE_NOT_STARTING = "Service not starting"
AUTH_FAILURE = "Auth failure"
PERMISSION_DENIED = "Permission denied"

INTERNAL_ERROR = "Internal error in dispatchctl"


@dataclass
class Finding:
    """One check's outcome. ``diagnosis`` is the named problem (empty when ok), ``issue`` the
    manual's common-issue row it is an instance of, if any. ``traceback``: set only for an
    internal error (a bug in the check), shown at ``-v``. ``quotes``: its text quotes what
    dispatchctl did not write (an exception's message), so it is shown with every secret value
    masked (:meth:`Report.masked`); the other findings' fields hold no secret and show as they are."""

    name: str
    title: str
    status: str
    summary: str
    diagnosis: str = ""
    cause: str = ""
    fix: str = ""
    issue: str = ""
    data: Dict[str, Any] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    traceback: str = ""
    quotes: bool = False

    def as_dict(self) -> Dict[str, Any]:
        doc = {
            "name": self.name, "title": self.title, "status": self.status, "summary": self.summary,
            "diagnosis": self.diagnosis, "cause": self.cause, "fix": self.fix, "issue": self.issue,
            "data": self.data, "elapsed_ms": round(self.elapsed_ms, 1),
        }
        if self.traceback:
            doc["traceback"] = self.traceback
        return doc


def internal_error(name: str, title: str, exc: BaseException) -> Finding:
    """A check that raised: a bug in dispatchctl, never blamed on the host or the broker."""
    return Finding(
        name=name, title=title, status=FAIL, summary=f"the check itself failed: {type(exc).__name__}: {exc}",
        diagnosis=INTERNAL_ERROR, cause="an unexpected error inside dispatchctl (not a problem of this host)",
        fix="re-run with -v for the traceback and report it", data={"exception": type(exc).__name__},
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), quotes=True)


@dataclass
class Report:
    findings: List[Finding] = field(default_factory=list)
    elapsed_s: float = 0.0

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    def skip_rest(self, order: Sequence[str], after: str, reason: str, titles: Dict[str, str]) -> None:
        """THE skip rule: every check listed after ``after`` in ``order`` that has no finding yet
        is reported as skipped, with the reason that makes it meaningless."""
        done = {f.name for f in self.findings}
        for name in order[order.index(after) + 1:]:
            if name not in done:
                self.add(Finding(name, titles.get(name, name), SKIP, f"not checked: {reason}"))

    @property
    def ok(self) -> bool:
        return not any(f.status == FAIL for f in self.findings)

    @property
    def failures(self) -> List[Finding]:
        return [f for f in self.findings if f.status == FAIL]

    @property
    def issues(self) -> List[str]:
        """The manual's common issues found, in order, without repeats."""
        seen: List[str] = []
        for f in self.findings:
            if f.status == FAIL and f.issue and f.issue not in seen:
                seen.append(f.issue)
        return seen

    def get(self, name: str) -> Optional[Finding]:
        return next((f for f in self.findings if f.name == name), None)

    def counts(self) -> Dict[str, int]:
        return {s: sum(1 for f in self.findings if f.status == s) for s in STATUSES}

    def masked(self, mask: Callable[[str], str]) -> Report:
        """This report fit to show: every finding that quotes what dispatchctl did not write with
        ``mask`` (a Redactor's text) applied to its text; the others as they are."""
        def shown(f: Finding) -> Finding:
            return replace(f, summary=mask(f.summary), diagnosis=mask(f.diagnosis), cause=mask(f.cause),
                           fix=mask(f.fix), traceback=mask(f.traceback)) if f.quotes else f
        return Report([shown(f) for f in self.findings], self.elapsed_s)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "ok": self.ok, "counts": self.counts(), "issues": self.issues,
            "elapsed_s": round(self.elapsed_s, 3), "findings": [f.as_dict() for f in self.findings],
        }
