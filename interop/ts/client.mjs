// The TypeScript SDK client of the interop suite (see ../README.md).
//
// usage: node client.mjs <mcp url> <output.json>
//
// Runs three legacy (session) sessions against the server with the official
// TypeScript SDK v1 (Client + StreamableHTTPClientTransport), at the same time:
//   ts-closed    calls one after the other, then DELETE (terminateSession)
//   ts-parallel  the same calls all at once, then DELETE
//   ts-open      calls one after the other, then close() without DELETE:
//                the session is left to the idle timeout
// and writes what it saw to <output.json>: per session the session id the
// transport got, every call with its arguments and result, and every HTTP
// request it sent (through the transport's `fetch` option; bodies of
// responses are not touched).

import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const SDK_VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8'),
).version;
const CLIENT_INFO = { name: 'interop-ts-v1', version: '1.0.0' };

// The calls of one session; `marker` makes its arguments unique in the suite.
function plan(marker) {
  const a = 1000 + Math.floor(Math.random() * 1000);
  const b = 2000 + Math.floor(Math.random() * 1000);
  return [
    { tool: 'echo', arguments: { text: `${marker} hello` } },
    { tool: 'add', arguments: { a, b } },
    { tool: 'slow_progress', arguments: { steps: 3, delay_ms: 20 }, progress: true },
    { tool: 'fail', arguments: { reason: `${marker} fails` } },
    { tool: 'no_such_tool', arguments: { marker } },
  ];
}

// A fetch that notes each request and the head of its response.
function loggingFetch(log) {
  return async (url, init = {}) => {
    const headers = new Headers(init.headers);
    const entry = {
      http_method: init.method ?? 'GET',
      session_id_sent: headers.get('mcp-session-id'),
      protocol_version_sent: headers.get('mcp-protocol-version'),
    };
    if (typeof init.body === 'string') {
      try {
        const msg = JSON.parse(init.body);
        entry.rpc_method = msg.method ?? null;
        entry.rpc_id = msg.id ?? null;
        if (msg.method === 'initialize') entry.client_info = msg.params?.clientInfo ?? null;
      } catch {
        entry.body_not_json = true;
      }
    }
    log.push(entry);
    try {
      const res = await fetch(url, init);
      entry.status = res.status;
      entry.session_id_received = res.headers.get('mcp-session-id');
      return res;
    } catch (err) {
      entry.fetch_error = String(err);
      throw err;
    }
  };
}

function textOf(result) {
  return (result.content ?? [])
    .filter((block) => block.type === 'text')
    .map((block) => block.text)
    .join('\n');
}

async function call(client, spec) {
  const out = { tool: spec.tool, arguments: spec.arguments };
  let progress = 0;
  const options = spec.progress ? { onprogress: () => { progress += 1; } } : undefined;
  try {
    const result = await client.callTool({ name: spec.tool, arguments: spec.arguments }, undefined, options);
    out.outcome = 'result';
    out.is_error = result.isError === true;
    out.text = textOf(result);
  } catch (err) {
    // A JSON-RPC error answer (McpError), or a transport failure.
    out.outcome = typeof err?.code === 'number' ? 'jsonrpc_error' : 'exception';
    out.error_code = typeof err?.code === 'number' ? err.code : null;
    out.error_message = String(err?.message ?? err);
  }
  if (spec.progress) out.progress_notifications = progress;
  return out;
}

async function runSession(url, label, { parallel, close }) {
  const http = [];
  const session = { label, client: 'ts-v1', mode: 'legacy', close, http, calls: [] };
  const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: loggingFetch(http) });
  const client = new Client(CLIENT_INFO);
  try {
    await client.connect(transport);
    session.session_id = transport.sessionId ?? null;
    session.protocol_version = transport.protocolVersion ?? null;
    session.server_info = client.getServerVersion() ?? null;
    const { tools } = await client.listTools();
    session.tools = tools.map((t) => t.name);
    const specs = plan(`${label}-${randomBytes(6).toString('hex')}`);
    session.calls = parallel
      ? await Promise.all(specs.map((spec) => call(client, spec)))
      : await (async () => {
        const done = [];
        for (const spec of specs) done.push(await call(client, spec));
        return done;
      })();
    if (close === 'delete') {
      await transport.terminateSession(); // DELETE
    }
  } catch (err) {
    session.error = String(err?.stack ?? err);
  } finally {
    // Aborts the GET stream; sends no DELETE.
    await client.close().catch(() => {});
  }
  return session;
}

async function main() {
  const [url, outPath] = process.argv.slice(2);
  if (!url || !outPath) {
    console.error('usage: node client.mjs <mcp url> <output.json>');
    process.exit(2);
  }
  const sessions = await Promise.all([
    runSession(url, 'ts-closed', { parallel: false, close: 'delete' }),
    runSession(url, 'ts-parallel', { parallel: true, close: 'delete' }),
    runSession(url, 'ts-open', { parallel: false, close: 'left_open' }),
  ]);
  const report = { client: 'ts-v1', sdk: `@modelcontextprotocol/sdk ${SDK_VERSION}`, sessions };
  writeFileSync(outPath, `${JSON.stringify(report, null, 2)}\n`);
  for (const s of sessions) {
    console.log(`${s.label}: session ${s.session_id ?? '-'}, ${s.calls.length} calls${s.error ? `, ERROR ${s.error}` : ''}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
