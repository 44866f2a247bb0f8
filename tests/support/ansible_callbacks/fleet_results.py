"""An aggregate Ansible callback for the fleet tests: every task's result per host, and the play
stats, written as one JSON file ($FLEET_RESULTS) when the run ends; the stdout callback stays the
default one. (ansible-core ships no JSON results callback any more: ``json`` moved to the
ansible.posix collection, which no package index here carries, and ``tree`` is deprecated.)"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = {}

    def _record(self, result, status):
        host = result.host.get_name()
        self.tasks.setdefault(host, {})[result.task_name] = {"status": status, "result": dict(result.result)}

    def v2_runner_on_ok(self, result):
        self._record(result, "changed" if result.result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed)
        summary = {h: stats.summarize(h) for h in hosts}
        with open(os.environ["FLEET_RESULTS"], "w") as f:
            json.dump({"stats": summary, "tasks": self.tasks}, f, default=str)
