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
# The minimal recording layer (`OVERHEAD_LAYER=floor`: copies both bodies,
# hands them to another thread) is counted too, on the routes, as a floor
# for any layer that records the bodies there.
#
# Takes 5 to 10 minutes. What it cannot show: the cost of memory the layer
# hands to its delivery thread on another core (callgrind runs one thread
# at a time); see "Performance" in the README.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=support/bench_executable.sh
source benches/support/bench_executable.sh
bench=$(bench_executable overhead)
[ -n "$bench" ] || { echo "instructions.sh: no overhead bench binary" >&2; exit 1; }
command -v callgrind_control >/dev/null || { echo "instructions.sh: needs valgrind" >&2; exit 1; }
work=$(mktemp -d)
runner=
trap 'set +e; [ -n "$runner" ] && kill "$runner" 2>/dev/null; pkill -f "valgrind.*$bench" 2>/dev/null; rm -rf "$work"' EXIT

# Waits until `$2` holds `$3`, while the bench under valgrind (`$1`) runs.
wait_for() {
    local dir=$1 file=$2 pattern=$3
    until grep -q "$pattern" "$dir/$file" 2>/dev/null; do
        if ! kill -0 "$runner" 2>/dev/null; then
            echo "instructions.sh: the bench stopped early:" >&2
            cat "$dir/out.txt" "$dir/err.txt" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# Instructions per call on the server thread, for one server: $1 = bare or
# layered, then environment settings for the bench.
per_call() {
    local only=$1 dir
    shift
    dir=$(mktemp -d -p "$work")
    # One server worker thread: it is the process's second thread.
    (cd "$dir" && env "$@" OVERHEAD_ONLY="$only" OVERHEAD_SERVER_THREADS=1 OVERHEAD_ROUNDS=3 \
        OVERHEAD_ROUND_SECS=4 OVERHEAD_WARMUP_SECS=1 valgrind --tool=callgrind \
        --separate-threads=yes "$bench" --bench >out.txt 2>err.txt) &
    runner=$!
    wait_for "$dir" err.txt '^==[0-9]*=='
    local pid
    pid=$(grep -m1 -o '^==[0-9]*==' "$dir/err.txt" | tr -d '=')
    wait_for "$dir" out.txt "round 1"
    callgrind_control -z "$pid" >/dev/null 2>&1
    wait_for "$dir" out.txt "round 2"
    callgrind_control -d "$pid" >/dev/null 2>&1
    wait "$runner"
    runner=
    python3 - "$dir"/callgrind.out.*.1-02 <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
total = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
# Calls of the demo tool handler, counted where its future is dropped (once
# per call): every `calls=` line under the `cfn=` naming that drop.
handler = re.compile(r"^core::ptr::drop_in_place<<\w+::tools::DemoTools as "
                     r"rmcp::handler::server::ServerHandler>::call_tool::\{\{closure\}\}>$")
names, calls, cfn = {}, 0, None
for line in text.splitlines():
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(3):
            names[m.group(2)] = m.group(3)
        if m.group(1) == "cfn":
            cfn = names.get(m.group(2), "")
    elif line.startswith("calls=") and cfn and handler.match(cfn):
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
report "layered (around the router) " "$outer"
floor=$(per_call layered OVERHEAD_LAYER=floor)
report "minimal (Router::layer)     " "$floor"
python3 - "${bare% *}" "${routes% *}" "${outer% *}" "${floor% *}" <<'PY'
import sys
bare, routes, outer, floor = map(float, sys.argv[1:])
print(f"  layered / bare: {routes / bare:.3f} (Router::layer, +{routes - bare:.0f}), "
      f"{outer / bare:.3f} (around the router, +{outer - bare:.0f})")
print(f"  minimal layer / bare: {floor / bare:.3f} (Router::layer, +{floor - bare:.0f}); "
      f"TrodoLayer on the routes adds {routes - floor:+.0f} more")
PY
