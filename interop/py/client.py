"""The Python SDK client of the interop suite (see ../README.md).

usage: python client.py <mcp url> <output.json>

Runs these sessions against the server with the official Python SDK (`mcp`):

- py-low-closed, py-low-parallel, py-low-open: the low-level `ClientSession`
  over `streamable_http_client` (always legacy: initialize, a session id).
  The first two end with the DELETE the transport sends on exit
  (`terminate_on_close=True`, the default); py-low-parallel makes its calls
  all at once; py-low-open exits with `terminate_on_close=False`, leaving the
  session to the idle timeout.
- py-auto: the high-level `mcp.Client(url)` in its default mode ("auto"),
  which probes `server/discover` and goes 2026-07-28: no session, no DELETE.

The low-level sessions run on an `httpx2.AsyncClient` with event hooks that
note every request and the head of its response; the session id is the
`mcp-session-id` header of the initialize response (mcp 2.x exposes no
getter: `streamable_http_client` yields only the two streams). The
high-level client is used exactly as `mcp.Client(url)`.

Writes what it saw to <output.json>, in the same shape as ../ts/client.mjs.
"""

from __future__ import annotations

import json
import random
import secrets
import sys
from importlib.metadata import version
from typing import Any

import anyio
import httpx2
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def plan(marker: str) -> list[dict[str, Any]]:
    """The calls of one session; `marker` makes its arguments unique in the suite."""
    a = random.randint(1000, 1999)
    b = random.randint(2000, 2999)
    return [
        {"tool": "echo", "arguments": {"text": f"{marker} hello"}},
        {"tool": "add", "arguments": {"a": a, "b": b}},
        {"tool": "slow_progress", "arguments": {"steps": 3, "delay_ms": 20}, "progress": True},
        {"tool": "fail", "arguments": {"reason": f"{marker} fails"}},
        {"tool": "no_such_tool", "arguments": {"marker": marker}},
    ]


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", None) == "text")


async def call(session: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """One tool call through `session` (a ClientSession or a Client)."""
    out: dict[str, Any] = {"tool": spec["tool"], "arguments": spec["arguments"]}
    progress = 0

    async def on_progress(_progress: float, _total: float | None, _message: str | None) -> None:
        nonlocal progress
        progress += 1

    callback = on_progress if spec.get("progress") else None
    try:
        result = await session.call_tool(spec["tool"], spec["arguments"], progress_callback=callback)
        out["outcome"] = "result"
        out["is_error"] = bool(result.is_error)
        out["text"] = text_of(result)
    except MCPError as err:
        out["outcome"] = "jsonrpc_error"
        out["error_code"] = err.code
        out["error_message"] = err.error.message
    except Exception as err:  # a transport failure: the checker reports it
        out["outcome"] = "exception"
        out["error_code"] = None
        out["error_message"] = repr(err)
    if spec.get("progress"):
        out["progress_notifications"] = progress
    return out


async def run_calls(session: Any, specs: list[dict[str, Any]], parallel: bool) -> list[dict[str, Any]]:
    if not parallel:
        return [await call(session, spec) for spec in specs]
    results: list[dict[str, Any] | None] = [None] * len(specs)

    async def one(i: int) -> None:
        results[i] = await call(session, specs[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(specs)):
            tg.start_soon(one, i)
    return [r for r in results if r is not None]


def logging_http_client(log: list[dict[str, Any]]) -> httpx2.AsyncClient:
    """The SDK's default HTTP client, plus hooks that note each request and response head."""
    client = create_mcp_http_client()
    entries: dict[int, dict[str, Any]] = {}

    async def on_request(request: httpx2.Request) -> None:
        entry: dict[str, Any] = {
            "http_method": request.method,
            "session_id_sent": request.headers.get("mcp-session-id"),
            "protocol_version_sent": request.headers.get("mcp-protocol-version"),
        }
        if request.method == "POST":
            try:
                msg = json.loads(request.content)
                entry["rpc_method"] = msg.get("method")
                entry["rpc_id"] = msg.get("id")
                if msg.get("method") == "initialize":
                    entry["client_info"] = msg.get("params", {}).get("clientInfo")
            except ValueError:
                entry["body_not_json"] = True
        entries[id(request)] = entry
        log.append(entry)

    async def on_response(response: httpx2.Response) -> None:
        entry = entries.pop(id(response.request), None)
        if entry is not None:
            entry["status"] = response.status_code
            entry["session_id_received"] = response.headers.get("mcp-session-id")

    client.event_hooks = {"request": [on_request], "response": [on_response]}
    return client


def session_id_from(log: list[dict[str, Any]]) -> str | None:
    """The session id the server gave: the header of the initialize response."""
    for entry in log:
        if entry.get("rpc_method") == "initialize":
            return entry.get("session_id_received")
    return None


async def low_level_session(url: str, label: str, *, parallel: bool, close: str) -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    out: dict[str, Any] = {"label": label, "client": "py-low", "mode": "legacy", "close": close, "http": log}
    out["calls"] = []
    try:
        async with logging_http_client(log) as http:
            async with streamable_http_client(url, http_client=http, terminate_on_close=close == "delete") as (
                read,
                write,
            ):
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    out["session_id"] = session_id_from(log)
                    out["protocol_version"] = init.protocol_version
                    out["server_info"] = init.server_info.model_dump(exclude_none=True)
                    tools = await session.list_tools()
                    out["tools"] = [t.name for t in tools.tools]
                    marker = f"{label}-{secrets.token_hex(6)}"
                    out["calls"] = await run_calls(session, plan(marker), parallel)
            # Leaving streamable_http_client sent the DELETE (terminate_on_close).
    except Exception as err:
        out["error"] = repr(err)
    out.setdefault("session_id", session_id_from(log))
    return out


async def high_level_auto_session(url: str, label: str) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label, "client": "py-high", "mode": "auto", "close": "none", "http": None}
    out["calls"] = []
    try:
        async with Client(url) as client:
            out["session_id"] = None  # none is issued in 2026-07-28
            out["protocol_version"] = client.protocol_version
            info = client.server_info
            out["server_info"] = info.model_dump(exclude_none=True) if info else None
            tools = await client.list_tools()
            out["tools"] = [t.name for t in tools.tools]
            marker = f"{label}-{secrets.token_hex(6)}"
            out["calls"] = await run_calls(client, plan(marker), parallel=False)
    except Exception as err:
        out["error"] = repr(err)
    return out


async def main(url: str, out_path: str) -> None:
    sessions: list[dict[str, Any] | None] = [None] * 4

    async def store(i: int, coro: Any) -> None:
        sessions[i] = await coro

    async with anyio.create_task_group() as tg:
        tg.start_soon(store, 0, low_level_session(url, "py-low-closed", parallel=False, close="delete"))
        tg.start_soon(store, 1, low_level_session(url, "py-low-parallel", parallel=True, close="delete"))
        tg.start_soon(store, 2, low_level_session(url, "py-low-open", parallel=False, close="left_open"))
        tg.start_soon(store, 3, high_level_auto_session(url, "py-auto"))
    report = {"client": "py", "sdk": f"mcp {version('mcp')}", "sessions": sessions}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    for s in sessions:
        assert s is not None
        error = f", ERROR {s['error']}" if s.get("error") else ""
        print(f"{s['label']}: session {s.get('session_id') or '-'}, {len(s['calls'])} calls{error}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python client.py <mcp url> <output.json>", file=sys.stderr)
        sys.exit(2)
    anyio.run(main, sys.argv[1], sys.argv[2])
