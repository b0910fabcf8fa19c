#!/usr/bin/env python3
"""The checker of the interop suite (see README.md); standard library only.

    check.py wait  --received URL [--timeout 30] CLIENT.json...
    check.py check --received URL [--save DUMP.json] CLIENT.json...

`wait` polls the ingest's `/received` dump until every legacy session the
clients report has its run's `end` (or the timeout passes: the checks then
say what is missing). `check` compares the dump with what the clients saw,
prints one line per check and `N passed, M failed` as its last line, and
exits 1 on any failure.

Sessionless traffic (the Python SDK's default 2026-07-28 mode) is grouped
into runs by the layer's key chain and checked like a session
(`check_sessionless_strict`). INTEROP_SESSIONLESS_STRICT=0 checks only that
the requests were served correctly and no span has a bogus run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime
from typing import Any

SESSIONLESS_STRICT = os.environ.get("INTEROP_SESSIONLESS_STRICT", "1") != "0"

SITE_ID = "interop"
SERVER_NAME = "trodo-demo"
# The idle timeout the suite gives the layer (interop/run: TRODO_IDLE_TIMEOUT_SECS).
IDLE_TIMEOUT_SECS = float(os.environ.get("TRODO_IDLE_TIMEOUT_SECS", "3"))
# JSON-RPC codes the layer calls `caller_error` (README, "What is recorded").
CALLER_ERROR_CODES = {-32700, -32600, -32601, -32602, -32002}
CLOSED_VIA = {"delete": "session_deleted", "left_open": "idle_timeout"}


# ---------------------------------------------------------------- reporting


class Report:
    """Counts checks; prints a line for each, with the reason when it fails."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def group(self, title: str) -> None:
        print(f"\n== {title}")

    def check(self, name: str, problems: list[str] | str | None) -> bool:
        if isinstance(problems, str):
            problems = [problems]
        if not problems:
            self.passed += 1
            print(f"  ok    {name}")
            return True
        self.failed += 1
        print(f"  FAIL  {name}")
        for problem in problems:
            print(f"          {problem}")
        return False

    def note(self, text: str) -> None:
        print(f"  note  {text}")


def short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"


# ---------------------------------------------------------------- the dump


class Dump:
    """What the ingest received, indexed by run."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.starts: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.spans: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.ends: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.other: list[dict[str, Any]] = []
        self.misfiled: list[tuple[int, str, Any]] = []
        for r in records:
            path, body, seq = r["path"], r["body"], r["seq"]
            if path == "/api/sdk/runs/start" and isinstance(body, dict):
                run = body.get("run", {})
                self.starts.setdefault(str(run.get("run_id")), []).append((seq, run))
                continue
            if path == "/api/sdk/runs/ingest" and isinstance(body, dict):
                # A whole run in one call: its start, spans and end at once.
                run = body.get("run", {})
                run_id = str(run.get("run_id"))
                self.starts.setdefault(run_id, []).append((seq, run))
                for span in body.get("spans", []):
                    self.spans.setdefault(run_id, []).append((seq, span))
                self.ends.setdefault(run_id, []).append((seq, {**run, "whole_run": True}))
                continue
            parts = path.split("/")
            # /api/sdk/runs/{run_id}/{action}
            if len(parts) == 6 and parts[:4] == ["", "api", "sdk", "runs"] and isinstance(body, dict):
                run_id, action = parts[4], parts[5]
                if action == "spans":
                    for span in body.get("spans", []):
                        self.spans.setdefault(run_id, []).append((seq, span))
                        if span.get("run_id") != run_id:
                            self.misfiled.append((seq, run_id, span.get("run_id")))
                    continue
                if action == "end":
                    self.ends.setdefault(run_id, []).append((seq, body))
                    continue
            self.other.append(r)

    def runs_of(self, session_id: str) -> list[str]:
        return [rid for rid, starts in self.starts.items() for _, run in starts if run.get("conversation_id") == session_id]

    def all_run_ids(self) -> set[str]:
        return set(self.starts) | set(self.spans) | set(self.ends)


def fetch(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def load_clients(paths: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The sessions of every client file, and the files that could not be read."""
    sessions, missing = [], []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError) as err:
            missing.append(f"{path}: {err}")
            continue
        for s in report.get("sessions", []):
            s["sdk"] = report.get("sdk")
            sessions.append(s)
    return sessions, missing


def legacy(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in sessions if s.get("mode") == "legacy"]


def sessionless(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in sessions if s.get("mode") != "legacy"]


# ---------------------------------------------------------------- wait


def ended(dump: Dump, session_id: str) -> bool:
    return any(dump.ends.get(rid) for rid in dump.runs_of(session_id))


def legacy_run_ids(dump: Dump, sessions: list[dict[str, Any]]) -> set[str]:
    """The runs whose conversation_id is a session id a client got."""
    return {rid for s in legacy(sessions) if s.get("session_id") for rid in dump.runs_of(s["session_id"])}


def spans_outside(dump: Dump, legacy_runs: set[str]) -> list[tuple[int, dict[str, Any]]]:
    """The spans of the runs that are not the sessions' (where sessionless traffic goes)."""
    return [x for rid, spans in dump.spans.items() if rid not in legacy_runs for x in spans]


def sessionless_runs(dump: Dump, s: dict[str, Any], legacy_runs: set[str]) -> list[str]:
    """The runs outside the sessions' runs that hold calls of sessionless client `s`."""
    calls = s.get("calls") or []
    return sorted(
        rid for rid, spans in dump.spans.items()
        if rid not in legacy_runs and any(spans_of_call(spans, c) for c in calls)
    )


def sessionless_pending(dump: Dump, sessions: list[dict[str, Any]]) -> list[str]:
    """Strict mode: what sessionless traffic is not recorded and ended yet."""
    legacy_runs = legacy_run_ids(dump, sessions)
    outside = spans_outside(dump, legacy_runs)
    pending = []
    for s in sessionless(sessions):
        if not all(spans_of_call(outside, c) for c in s.get("calls") or []):
            pending.append(f"{s['label']}: calls without spans")
        pending += [f"{s['label']}: run {rid}" for rid in sessionless_runs(dump, s, legacy_runs) if not dump.ends.get(rid)]
    return pending


def wait(url: str, sessions: list[dict[str, Any]], timeout: float) -> int:
    """Polls the dump until each legacy session's run has ended (strict mode:
    and every run of sessionless traffic), or `timeout`."""
    want = [s["session_id"] for s in legacy(sessions) if s.get("session_id")]
    began = time.monotonic()
    while True:
        dump = Dump(fetch(url))
        missing = [sid for sid in want if not ended(dump, sid)]
        if SESSIONLESS_STRICT:
            missing += sessionless_pending(dump, sessions)
        waited = time.monotonic() - began
        if not missing:
            extra = " and the sessionless traffic's" if SESSIONLESS_STRICT else ""
            print(f"interop: the {len(want)} sessions' ends{extra} arrived after {waited:.1f} s")
            return 0
        if waited >= timeout:
            print(f"interop: after {timeout:.0f} s still waiting for {len(missing)} ends: {', '.join(missing)}")
            return 1
        time.sleep(0.1)


# ---------------------------------------------------------------- expectations


def expected_result(call: dict[str, Any]) -> dict[str, Any]:
    """What the demo server answers to a call (examples/support/tools.rs)."""
    tool, args = call["tool"], call["arguments"]
    if tool == "echo":
        return {"outcome": "result", "is_error": False, "text": f"echo: {args['text']}"}
    if tool == "add":
        return {"outcome": "result", "is_error": False, "text": str(args["a"] + args["b"])}
    if tool == "slow_progress":
        return {"outcome": "result", "is_error": False, "text": f"done after {args['steps']} steps",
                "progress_notifications": args["steps"]}
    if tool == "fail":
        return {"outcome": "result", "is_error": True, "text": args["reason"]}
    return {"outcome": "jsonrpc_error"}  # a tool that does not exist


def client_result_problems(call: dict[str, Any]) -> list[str]:
    want = expected_result(call)
    problems = []
    for key, value in want.items():
        if call.get(key) != value:
            problems.append(f"{call['tool']}: client saw {key} = {short(call.get(key))}, expected {short(value)}")
    if want["outcome"] == "jsonrpc_error" and call.get("error_code") not in CALLER_ERROR_CODES:
        problems.append(f"{call['tool']}: client saw error code {call.get('error_code')}, expected an invalid-params/method-not-found code")
    return problems


def expected_span_status(call: dict[str, Any]) -> tuple[str, str | None]:
    tool = call["tool"]
    if tool == "fail":
        return "error", "tool_error"
    if tool in ("echo", "add", "slow_progress"):
        return "ok", None
    return "error", "caller_error"


# ---------------------------------------------------------------- span checks


def parse(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def spans_of_call(spans: list[tuple[int, dict[str, Any]]], call: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The spans whose input is this call: same tool name and arguments."""
    found = []
    for seq, span in spans:
        msg = parse(span.get("input"))
        if not isinstance(msg, dict) or msg.get("method") != "tools/call":
            continue
        params = msg.get("params") or {}
        if params.get("name") == call["tool"] and params.get("arguments") == call["arguments"]:
            found.append((seq, span))
    return found


def span_problems(span: dict[str, Any], call: dict[str, Any], protocol_version: str | None) -> list[str]:
    """Compares one tools/call span with what the client sent and saw."""
    tool = call["tool"]
    problems = []
    for key, want in (("name", f"tool.{tool}"), ("kind", "tool"), ("tool_name", tool)):
        if span.get(key) != want:
            problems.append(f"{key} = {short(span.get(key))}, expected {want!r}")
    attributes = span.get("attributes") or {}
    for key, want in (
        ("mcp.method.name", "tools/call"),
        ("mcp.protocol.version", protocol_version),
        ("http.response.status_code", 200),
    ):
        if attributes.get(key) != want:
            problems.append(f"attribute {key} = {short(attributes.get(key))}, expected {want!r}")
    request = parse(span.get("input")) or {}
    if str(attributes.get("jsonrpc.request.id")) != str(request.get("id")):
        problems.append(f"attribute jsonrpc.request.id = {short(attributes.get('jsonrpc.request.id'))}, the request's id is {request.get('id')}")

    # The output: the JSON-RPC response to this request, as the client got it.
    output = parse(span.get("output"))
    if not isinstance(output, dict):
        problems.append(f"output is not a JSON-RPC message: {short(span.get('output'))}")
        output = {}
    elif output.get("id") != request.get("id") or ("result" not in output and "error" not in output):
        problems.append(f"output is not the response to request id {request.get('id')}: {short(span.get('output'))}")
    if call.get("outcome") == "result":
        result = output.get("result") or {}
        texts = [b.get("text") for b in result.get("content", []) if isinstance(b, dict) and b.get("type") == "text"]
        if "\n".join(t for t in texts if isinstance(t, str)) != call.get("text"):
            problems.append(f"output text {short(texts)} is not what the client got: {short(call.get('text'))}")
        if bool(result.get("isError")) != bool(call.get("is_error")):
            problems.append(f"output isError = {result.get('isError')}, the client saw is_error = {call.get('is_error')}")
    elif call.get("outcome") == "jsonrpc_error":
        error = output.get("error") or {}
        if error.get("code") != call.get("error_code"):
            problems.append(f"output error code {error.get('code')} is not the client's {call.get('error_code')}")
        if not error.get("message") or error.get("message") not in str(call.get("error_message")):
            problems.append(f"output error message {short(error.get('message'))} is not the client's {short(call.get('error_message'))}")

    status, error_type = expected_span_status(call)
    if span.get("status") != status:
        problems.append(f"status = {short(span.get('status'))}, expected {status!r}")
    if span.get("error_type") != error_type:
        problems.append(f"error_type = {short(span.get('error_type'))}, expected {error_type!r}")
    if error_type == "tool_error" and span.get("error_message") != call.get("text"):
        problems.append(f"error_message = {short(span.get('error_message'))}, expected the tool's text {short(call.get('text'))}")
    if error_type == "caller_error":
        error = output.get("error") or {}
        if span.get("error_message") != error.get("message"):
            problems.append(f"error_message = {short(span.get('error_message'))}, expected the JSON-RPC message {short(error.get('message'))}")
        if attributes.get("jsonrpc.error.code") != error.get("code"):
            problems.append(f"attribute jsonrpc.error.code = {attributes.get('jsonrpc.error.code')}, expected {error.get('code')}")
    return problems


def check_call_spans(report: Report, spans: list[tuple[int, dict[str, Any]]], s: dict[str, Any], where: str) -> None:
    """One check per call: exactly one span, with the call's input and the client's output."""
    for call in s.get("calls") or []:
        found = spans_of_call(spans, call)
        name = f"span of {call['tool']}({short(call['arguments'], 60)})"
        if len(found) != 1:
            report.check(name, f"{len(found)} spans with this tool and these arguments {where}, expected 1")
            continue
        report.check(name, span_problems(found[0][1], call, s.get("protocol_version")))


def aggregate_problems(end: dict[str, Any], spans: list[dict[str, Any]]) -> list[str]:
    want = {
        "span_count": len(spans),
        "tool_count": sum(1 for s in spans if s.get("kind") == "tool"),
        "error_count": sum(1 for s in spans if s.get("status") == "error"),
        "total_tokens_in": sum(s.get("input_tokens") or 0 for s in spans),
        "total_tokens_out": sum(s.get("output_tokens") or 0 for s in spans),
    }
    return [f"{key} = {end.get(key)}, the spans say {value}" for key, value in want.items() if end.get(key) != value]


def order_problems(starts: list[int], spans: list[int], ends: list[int]) -> list[str]:
    problems = []
    if starts and spans and min(spans) < min(starts):
        problems.append(f"a span (#{min(spans)}) arrived before the start (#{min(starts)})")
    if ends and spans and max(spans) > min(ends):
        problems.append(f"a span (#{max(spans)}) arrived after the end (#{min(ends)})")
    if starts and ends and min(ends) < min(starts):
        problems.append(f"the end (#{min(ends)}) arrived before the start (#{min(starts)})")
    return problems


def timestamp(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


# ---------------------------------------------------------------- legacy sessions


def check_legacy_session(report: Report, dump: Dump, s: dict[str, Any]) -> None:
    sid = s.get("session_id")
    report.group(f"{s['client']} {s['label']} ({s.get('sdk')}): session {sid or '-'}, close: {s['close']}")
    http = s.get("http") or []
    calls = s.get("calls") or []

    # What the client did.
    problems = []
    if s.get("error"):
        problems.append(f"the client failed: {short(s['error'], 400)}")
    if not sid:
        problems.append("the client got no session id")
    if len(calls) != 5:
        problems.append(f"{len(calls)} calls made, 5 planned")
    after_init = [h for h in http if h.get("rpc_method") != "initialize"]
    wrong = [h for h in after_init if h.get("session_id_sent") != sid]
    if wrong:
        problems.append(f"{len(wrong)} requests after initialize without the session id, e.g. {short(wrong[0])}")
    deletes = [h for h in http if h.get("http_method") == "DELETE"]
    if s["close"] == "delete" and [h.get("status") for h in deletes] not in ([200], [202], [204]):
        problems.append(f"expected one DELETE answered 2xx, the client sent: {short(deletes)}")
    if s["close"] == "left_open" and deletes:
        problems.append(f"the session was to be left open, but the client sent DELETE: {short(deletes)}")
    report.check("the client ran the session as planned", problems)
    report.check("the client saw the right results", [p for c in calls for p in client_result_problems(c)])
    if not sid:
        return

    # The run.
    run_ids = dump.runs_of(sid)
    if len(run_ids) != 1 or len(dump.starts[run_ids[0]]) != 1:
        report.check("exactly one run with conversation_id = the session id",
                     f"{sum(len(dump.starts[r]) for r in run_ids)} starts with conversation_id {sid} (runs {run_ids})")
        return
    report.check("exactly one run with conversation_id = the session id", None)
    run_id = run_ids[0]
    start_seq, run = dump.starts[run_id][0]
    spans = dump.spans.get(run_id, [])
    ends = dump.ends.get(run_id, [])

    init = next((h for h in http if h.get("rpc_method") == "initialize"), {})
    client_info = init.get("client_info") or {}
    meta = run.get("metadata") or {}
    problems = []
    for key, want in (
        ("client_name", client_info.get("name")),
        ("client_version", client_info.get("version")),
        ("protocol_version", s.get("protocol_version")),
        ("server_name", SERVER_NAME),
        ("transport", "streamable_http"),
    ):
        if meta.get(key) != want:
            problems.append(f"metadata.{key} = {short(meta.get(key))}, expected {short(want)}")
    if meta.get("resumed"):
        problems.append("metadata.resumed is set on a run opened by initialize")
    if run.get("status") != "running":
        problems.append(f"status = {short(run.get('status'))}, expected 'running'")
    if (parse(run.get("input")) or {}).get("method") != "initialize":
        problems.append(f"input is not the initialize request: {short(run.get('input'))}")
    report.check("the run's start: input and metadata", problems)

    check_call_spans(report, spans, s, f"in run {run_id}")

    # One span per JSON-RPC request after initialize, none for notifications, GET, DELETE.
    requests = Counter(
        (h.get("rpc_method"), str(h.get("rpc_id")))
        for h in http
        if h.get("http_method") == "POST" and h.get("rpc_id") is not None and h.get("rpc_method") != "initialize"
    )
    recorded = Counter(
        ((parse(sp.get("input")) or {}).get("method"), str((sp.get("attributes") or {}).get("jsonrpc.request.id")))
        for _, sp in spans
    )
    problems = []
    if recorded != requests:
        missing, extra = requests - recorded, recorded - requests
        if missing:
            problems.append(f"requests without a span: {sorted(missing.elements())}")
        if extra:
            problems.append(f"spans without a request: {sorted(extra.elements())}")
    report.check(f"one span per request the client sent ({sum(requests.values())})", problems)

    # The end.
    want_via = CLOSED_VIA[s["close"]]
    if len(ends) != 1:
        vias = [e.get("metadata", {}).get("closed_via") for _, e in ends]
        report.check(f"exactly one end, closed_via {want_via}", f"{len(ends)} ends (closed_via {vias})")
    else:
        end = ends[0][1]
        problems = []
        via = (end.get("metadata") or {}).get("closed_via")
        if via != want_via:
            problems.append(f"closed_via = {short(via)}, expected {want_via!r}")
        if end.get("status") != "ok":
            problems.append(f"status = {short(end.get('status'))}, expected 'ok'")
        ended_at = timestamp(end.get("ended_at"))
        last = max((t for _, sp in spans if (t := timestamp(sp.get("ended_at")))), default=None)
        if ended_at is None:
            problems.append(f"ended_at = {short(end.get('ended_at'))} is not a timestamp")
        elif last is not None and ended_at < last:
            problems.append(f"ended_at {end.get('ended_at')} is before the last span's end")
        elif want_via == "idle_timeout" and last is not None and (ended_at - last).total_seconds() >= IDLE_TIMEOUT_SECS:
            problems.append(f"ended_at {end.get('ended_at')} is the time of the sweep, not the last activity")
        report.check(f"exactly one end, closed_via {want_via}", problems)
        report.check("the end's aggregates equal what the spans say", aggregate_problems(end, [sp for _, sp in spans]))
    report.check(
        "arrival order: start, spans, end",
        order_problems([start_seq], [seq for seq, _ in spans], [seq for seq, _ in ends]),
    )


# ---------------------------------------------------------------- sessionless


def session_markers(s: dict[str, Any]) -> list[str]:
    """The session's marker: unique to it, in the arguments of its calls."""
    return [c["arguments"].get("marker") or "" for c in s.get("calls", []) if c["tool"] == "no_such_tool"]


def spans_with_markers(dump: Dump, markers: list[str]) -> list[tuple[str, int, dict[str, Any]]]:
    return [
        (run_id, seq, span)
        for run_id, spans in dump.spans.items()
        for seq, span in spans
        if any(m and m in str(span.get("input")) for m in markers)
    ]


def check_sessionless_today(report: Report, dump: Dump, s: dict[str, Any], legacy_runs: set[str]) -> None:
    """The lenient check (INTEROP_SESSIONLESS_STRICT=0): no bogus run, grouping only reported."""
    calls = s.get("calls") or []
    problems = []
    if s.get("error"):
        problems.append(f"the client failed: {short(s['error'], 400)}")
    if s.get("protocol_version") != "2026-07-28":
        problems.append(f"negotiated {s.get('protocol_version')}, expected the sessionless 2026-07-28")
    if len(calls) != 5:
        problems.append(f"{len(calls)} calls made, 5 planned")
    report.check("the client went sessionless (2026-07-28) and ran as planned", problems)
    report.check("the requests were served correctly (the client saw the right results)",
                 [p for c in calls for p in client_result_problems(c)])

    found = spans_with_markers(dump, session_markers(s))
    problems = []
    for run_id, seq, span in found:
        if run_id in legacy_runs:
            problems.append(f"#{seq} span {span.get('name')} landed in a legacy session's run {run_id}")
        elif run_id not in dump.starts:
            problems.append(f"#{seq} span {span.get('name')} belongs to run {run_id}, which was never started")
    for run_id in legacy_runs:
        for seq, span in dump.spans.get(run_id, []):
            if (parse(span.get("input")) or {}).get("method") == "server/discover":
                problems.append(f"#{seq} a server/discover span landed in a legacy session's run {run_id}")
    report.check("no span of this traffic with a bogus run", problems)
    outside = spans_outside(dump, legacy_runs)
    recorded = sum(1 for c in calls if spans_of_call(outside, c))
    runs = sessionless_runs(dump, s, legacy_runs)
    report.note(f"{recorded} of {len(calls)} calls recorded as spans, in {len(runs)} runs "
                "(grouping is checked in strict mode, the default)")
    for run_id in runs:
        run = dump.starts.get(run_id, [(0, {})])[0][1]
        vias = [(e.get("metadata") or {}).get("closed_via") for _, e in dump.ends.get(run_id, [])]
        report.note(f"run {run_id}: conversation_id {run.get('conversation_id')!r}, "
                    f"{len(dump.spans.get(run_id, []))} spans, ends {vias}")


def check_sessionless_strict(report: Report, dump: Dump, s: dict[str, Any], legacy_runs: set[str]) -> None:
    """The check for when the layer groups sessionless traffic (README, "Clients
    without sessions"): like a session's, without assuming how calls are
    grouped into runs (one per client, per request, ...): each call has exactly
    one span with its input and output, in a run that is not a legacy
    session's, has a key, says its era, was started before its spans and ended
    once by the idle timeout (no DELETE comes), with aggregates equal to its
    spans."""
    check_sessionless_today(report, dump, s, legacy_runs)
    # Spans outside the legacy sessions' runs (whose calls have the same shape).
    check_call_spans(report, spans_outside(dump, legacy_runs), s, "outside the sessions' runs")
    run_ids = sessionless_runs(dump, s, legacy_runs)
    problems = []
    for run_id in run_ids:
        spans = dump.spans.get(run_id, [])
        starts, ends = dump.starts.get(run_id, []), dump.ends.get(run_id, [])
        if len(starts) != 1:
            problems.append(f"run {run_id}: {len(starts)} starts, expected 1")
        else:
            run = starts[0][1]
            meta = run.get("metadata") or {}
            if not run.get("conversation_id"):
                problems.append(f"run {run_id}: no conversation_id (the run key)")
            if meta.get("era") != s.get("protocol_version"):
                problems.append(f"run {run_id}: metadata.era = {short(meta.get('era'))}, expected {s.get('protocol_version')!r}")
        if len(ends) != 1:
            problems.append(f"run {run_id}: {len(ends)} ends, expected 1")
        elif not ends[0][1].get("whole_run"):
            end = ends[0][1]
            via = (end.get("metadata") or {}).get("closed_via")
            if via != "idle_timeout":
                problems.append(f"run {run_id}: closed_via = {short(via)}, expected 'idle_timeout'")
            problems += [f"run {run_id}: {p}" for p in aggregate_problems(end, [sp for _, sp in spans])]
        problems += [f"run {run_id}: {p}" for p in order_problems(
            [q for q, _ in starts], [q for q, _ in spans], [q for q, _ in ends])]
    if not run_ids:
        problems.append("no run holds this traffic")
    report.check("the runs of this traffic: key, era, one start, one end by idle timeout, aggregates, order", problems)


# ---------------------------------------------------------------- global


def check_global(report: Report, dump: Dump, sessions: list[dict[str, Any]]) -> set[str]:
    """Checks over the whole dump; returns the run ids of the legacy sessions."""
    report.group("everything the ingest received")
    records = dump.records
    report.check(f"records received ({len(records)})", None if records else "the ingest received nothing")
    bad = [r for r in records if r.get("site_id") != SITE_ID or not str(r.get("content_type")).startswith("application/json")]
    report.check(f"every record has X-Trodo-Site-Id {SITE_ID!r} and a JSON body",
                 [f"#{r['seq']} {r['path']}: site_id {r.get('site_id')!r}, content_type {r.get('content_type')!r}" for r in bad[:5]])
    report.check("every record is a call of the ingest API (start, spans, end, ingest)",
                 [f"#{r['seq']} {r['path']}: {short(r['body'])}" for r in dump.other[:5]])
    report.check("every span's run_id is the run of its path",
                 [f"#{seq}: path run {path_id}, span run_id {span_id}" for seq, path_id, span_id in dump.misfiled[:5]])
    orphans = sorted(dump.all_run_ids() - set(dump.starts))
    report.check("no spans or end of a run that was never started", [f"run {rid}" for rid in orphans])
    twice = sorted(rid for rid, starts in dump.starts.items() if len(starts) > 1)
    report.check("no run started twice", [f"run {rid}: {len(dump.starts[rid])} starts" for rid in twice])

    # Other runs may hold sessionless traffic (the layer may group it, see the
    # sessionless checks), but no run may hold another session's traffic.
    problems = []
    for s in legacy(sessions):
        own = set(dump.runs_of(s["session_id"])) if s.get("session_id") else set()
        for rid, seq, span in spans_with_markers(dump, session_markers(s)):
            if rid not in own:
                run = dump.starts[rid][0][1] if rid in dump.starts else {}
                problems.append(f"#{seq} span {span.get('name')} of {s['label']} in run {rid} "
                                f"(conversation_id {run.get('conversation_id')!r})")
    report.check("no session's traffic in a run besides its own", problems)
    return legacy_run_ids(dump, sessions)


def check(url: str, paths: list[str], save: str | None) -> int:
    report = Report()
    sessions, missing = load_clients(paths)
    try:
        records = fetch(url)
        if save:
            with open(save, "w", encoding="utf-8") as f:
                json.dump(records, f, indent=1)
        dump = Dump(records)
    except OSError as err:
        report.group("the ingest")
        report.check("the ingest's dump can be read", f"{url}: {err}")
        dump = Dump([])
    if missing:
        report.group("the clients")
        report.check("every client wrote its report", missing)

    legacy_runs = check_global(report, dump, sessions)
    for s in legacy(sessions):
        check_legacy_session(report, dump, s)
    for s in sessionless(sessions):
        mode = "strict" if SESSIONLESS_STRICT else "lenient"
        report.group(f"sessionless: {s['client']} {s['label']} ({s.get('sdk')}), mode {s.get('mode')} ({mode})")
        if SESSIONLESS_STRICT:
            check_sessionless_strict(report, dump, s, legacy_runs)
        else:
            check_sessionless_today(report, dump, s, legacy_runs)

    print()
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["wait", "check"])
    parser.add_argument("--received", required=True, help="the ingest's /received URL")
    parser.add_argument("--timeout", type=float, default=30.0, help="wait: seconds to wait for the ends")
    parser.add_argument("--save", help="check: also write the dump to this file")
    parser.add_argument("clients", nargs="+", help="the clients' JSON reports")
    args = parser.parse_args()
    if args.command == "wait":
        sessions, _ = load_clients(args.clients)
        try:
            return wait(args.received, sessions, args.timeout)
        except OSError as err:
            print(f"interop: cannot read {args.received}: {err}")
            return 1
    return check(args.received, args.clients, args.save)


if __name__ == "__main__":
    sys.exit(main())
