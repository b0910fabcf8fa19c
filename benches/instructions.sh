#!/usr/bin/env bash
# Instructions per `tools/call` on the server's thread, bare vs. layered, under
# callgrind: a count that does not drift with the machine, unlike the load
# bench's seconds. Runs `benches/overhead.rs` once per server (and per
# placement of the layer), zeroes the counters when its first round ends and
# dumps them when the second ends, so that only steady-state calls count
# (no session set-up, no warm-up), then divides the server thread's
# instructions by the calls of the demo tool in that window.
#
#   bash benches/instructions.sh          # needs valgrind (callgrind_control)
#
# Takes 5 to 10 minutes. What it cannot show: the cost of memory the layer
# hands to its delivery thread on another core (callgrind runs one thread
# at a time); see "Performance" in the README.
set -euo pipefail
cd "$(dirname "$0")/.."

bench=$(cargo bench --bench overhead --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "overhead" and m.get("executable"):
        print(m["executable"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Instructions per call on the server thread, for one server: $1 = bare or
# layered, then environment settings for the bench.
per_call() {
    local only=$1 dir
    shift
    dir=$(mktemp -d -p "$work")
    (cd "$dir" && env "$@" OVERHEAD_ONLY="$only" OVERHEAD_ROUNDS=3 OVERHEAD_ROUND_SECS=4 \
        OVERHEAD_WARMUP_SECS=1 valgrind --tool=callgrind --separate-threads=yes \
        "$bench" --bench >out.txt 2>err.txt) &
    local runner=$!
    until [ -s "$dir/err.txt" ] && grep -q '^==[0-9]*==' "$dir/err.txt"; do sleep 0.2; done
    local pid
    pid=$(grep -m1 -o '^==[0-9]*==' "$dir/err.txt" | tr -d '=')
    until grep -q "round 1" "$dir/out.txt" 2>/dev/null; do sleep 0.2; done
    callgrind_control -z "$pid" >/dev/null 2>&1
    until grep -q "round 2" "$dir/out.txt" 2>/dev/null; do sleep 0.2; done
    callgrind_control -d "$pid" >/dev/null 2>&1
    wait "$runner"
    # The server runtime's one worker is the process's second thread.
    python3 - "$dir"/callgrind.out.*.1-02 <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
total = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
# Calls of the demo tool handler: every `calls=` line under a `cfn=` naming it.
names, calls, cfn = {}, 0, None
for line in text.splitlines():
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(3):
            names[m.group(2)] = m.group(3)
        if m.group(1) == "cfn":
            cfn = names.get(m.group(2), "")
    elif line.startswith("calls=") and cfn and "DemoTools as rmcp::handler::server::ServerHandler>::call_tool::{{closure}}>" in cfn:
        calls += int(line.split()[0][6:])
print(f"{total / calls:.0f} {calls}")
PY
}

report() {
    local name=$1 result=$2
    echo "  $name: ${result% *} instructions per call (${result#* } calls)"
}

echo "server thread, instructions per tools/call (callgrind, steady state):"
bare=$(per_call bare)
report "bare                        " "$bare"
routes=$(per_call layered)
report "layered (Router::layer)     " "$routes"
outer=$(per_call layered OVERHEAD_PLACEMENT=outer)
report "layered (around the router)" "$outer"
python3 - "${bare% *}" "${routes% *}" "${outer% *}" <<'PY'
import sys
bare, routes, outer = map(float, sys.argv[1:])
print(f"  layered / bare: {routes / bare:.3f} (Router::layer, +{routes - bare:.0f}), "
      f"{outer / bare:.3f} (around the router, +{outer - bare:.0f})")
PY
