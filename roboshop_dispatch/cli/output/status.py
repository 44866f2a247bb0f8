"""``status`` on the screen: a rich panel on a terminal, ``key: value`` lines into a pipe, both
from one list of (key, value, style) rows."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

from . import console

Row = Tuple[str, str, str]  # (key, value, style: "" or "ok"/"warn"/"fail")


def status_rows(doc: Dict[str, Any]) -> List[Row]:
    """What ``status`` shows, as (key, value, style) rows: one renderer for a terminal (a panel)
    and one for a pipe (``key: value`` lines)."""
    if doc.get("systemd") is False:
        return [("systemd", doc["error"]["message"], "fail"),
                ("unit file", "present" if doc.get("unit_file_present") else "absent", "")]
    if not doc["installed"]:
        return [("unit", f"{doc['unit']} is not installed", "fail"),
                ("next", "dispatchctl install --amqp-host HOST --amqp-pass-file FILE", "")]
    state = f"{doc['active_state']} ({doc['sub_state']})"
    if doc["result"] and doc["result"] != "success":
        state += f", result {doc['result']}"
    rows: List[Row] = [("state", state, "ok" if doc["running"] else "fail"), ("enabled", doc["enabled"] or "-", ""),
                       ("main PID", str(doc["main_pid"] or "-"), ""), ("uptime", human_duration(doc["uptime_s"]), ""),
                       ("restarts", str(doc["restarts"]), "")]
    proc = doc.get("process") or {}
    if proc and "error" not in proc:
        rows += [("runs as", proc["user"], "fail" if proc["user"] == "root" else ""),
                 ("memory", f"{human_bytes(proc['rss_bytes'])} RSS", ""),
                 ("CPU", f"{proc['cpu_percent']:.2f}% average ({proc['cpu_seconds']:.2f}s since start)", "")]
    else:
        rows.append(("runs as", f"User={doc['unit_user'] or '(root)'} (no process)", ""))
    binary = doc["binary"]
    rows.append(("binary", f"{binary['path']} ({binary['flavour'] or 'missing'})", "" if binary["exists"] else "fail"))
    config = doc["config"]
    if "hosts" in config:
        source = f" (from the {config['password_source']})" if config.get("password_source") else ""
        rows.append(("RabbitMQ", f"{','.join(config['hosts'])}:{config['port']} vhost {config['vhost']} "
                                 f"user {config['user']} password {config['password']}{source}", ""))
        rows.append(("queue type", config.get("queue_type") or "classic", ""))
    if doc.get("status_text"):
        rows.append(("systemd status", doc["status_text"], ""))
    if doc.get("delivery_path") or binary["flavour"] == "bundled":
        rows.append(("delivery path", doc.get("delivery_path") or "unknown", ""))
    rows += telemetry_rows(doc)
    if config.get("error"):
        rows.append(("config", f"{config['path']}: {config['error']}", "warn"))
    queue = doc.get("queue")
    if queue is not None:
        if "error" in queue:
            rows.append(("orders queue", f"unknown: {queue['error']}", "warn"))
        else:
            rows.append(("orders queue", f"{queue['messages']} waiting, {queue['consumers']} consumer(s)",
                         "warn" if not queue["consumers"] else ""))
    return rows + instance_rows(doc)


def telemetry_rows(doc: Dict[str, Any]) -> List[Row]:
    """Tracing (the collector, headers "set") and metrics (each instance's URL)."""
    rows: List[Row] = []
    tracing, metrics = doc.get("tracing"), doc.get("metrics")
    if tracing is not None:
        headers = ", exporter headers set" if tracing["headers"] else ""
        text = f"on: spans to {tracing['endpoint']}{headers}" if tracing["on"] else \
            tracing["state"].replace("(", " (", 1) + (f" ({tracing['endpoint']} set)" if tracing["endpoint"] else "")
        rows.append(("tracing", text, ""))
    if metrics is not None:
        if metrics.get("error"):
            rows.append(("metrics", f"off: {metrics['error']}", "warn"))
        elif not metrics["on"]:
            rows.append(("metrics", "off", ""))
        elif len(metrics["instances"]) == 1:
            rows.append(("metrics", metrics["instances"][0]["url"], ""))
        else:
            rows.append(("metrics", f"on, {metrics['listen']} + instance - 1:", ""))
            rows += [(f"  {r['unit']}", r["url"], "") for r in metrics["instances"]]
    return rows


def print_status(doc: Dict[str, Any]) -> None:
    """A rich panel on a terminal; ``key: value`` lines into a pipe (no box, no fixed width)."""
    rows = status_rows(doc)
    logs = doc.get("logs") or []
    if not sys.stdout.isatty():
        width = max(len(k) for k, _, _ in rows)
        lines = [f"{k + ':':<{width + 1}} {v}" for k, v, _ in rows]
        if logs:
            lines += ["", f"last {len(logs)} log line(s):", *logs]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        return
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    styles = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    con = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value, style in rows:
        grid.add_row(key, Text(value, style=styles.get(style, "")))
    good = bool(doc.get("running"))
    con.print(Panel(grid, title="dispatch", title_align="left", border_style="green" if good else "red"))
    if logs:
        con.print(Text(f"last {len(logs)} log line(s):", style="bold"))
        for line in logs:
            con.print(Text(line))


def instance_rows(doc: Dict[str, Any]) -> List[Row]:
    """One row per instance when the template is in use (or a stray unit runs beside the one)."""
    instances = doc.get("instances") or []
    if len(instances) < 2 and all(r["unit"] == doc["unit"] for r in instances):
        return []
    rows: List[Row] = [("instances", f"{doc.get('configured_instances') or 0} configured", "")]
    for r in instances:
        orders = "" if r["orders_handled"] is None else f", {r['orders_handled']} orders handled"
        extra = "" if r["configured"] else " (not configured)"
        text = (f"{r['active_state']} ({r['sub_state'] or '-'}), pid {r['main_pid'] or '-'}, "
                f"{human_bytes(r['rss_bytes'])} RSS{orders}{extra}")
        rows.append((f"  {r['unit']}", text, "ok" if r["active_state"] == "active" and r["configured"] else "fail"))
    return rows


def import_rich() -> None:
    """What print_status draws with, imported ahead (status runs it in the background)."""
    import rich.console
    import rich.panel
    import rich.table
    import rich.text  # noqa: F401


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def human_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {s}s"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{seconds:.1f}s"
