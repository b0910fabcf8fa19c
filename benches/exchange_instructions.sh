#!/usr/bin/env bash
# Instructions per `tools/call` exchange of `benches/exchange.rs` under
# callgrind, on the request's thread and on the layer's delivery thread: a
# count that does not drift with the machine, unlike the bench's seconds.
#
#   bash benches/exchange_instructions.sh    # needs valgrind; about a minute
#
# The request's thread: the layer switched on minus switched off
# (`EXCHANGE_TRODO_ENABLED=false`), so the bench's own work and the
# layer's start-up cancel out. The delivery thread: all of its
# instructions (reading each exchange, writing its span, delivering it to
# the bench's local ingest), start-up included.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=support/bench_executable.sh
source benches/support/bench_executable.sh
bench=$(bench_executable exchange)
[ -n "$bench" ] || { echo "exchange_instructions.sh: no exchange bench binary" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "exchange_instructions.sh: needs valgrind" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

calls=3000
# The layered service serves a warm-up round and one measured round.
exchanges=$((2 * calls))

# Runs the bench under callgrind, one output file per thread: $1 = true
# (the layer on) or false (switched off).
run() {
    EXCHANGE_CALLS=$calls EXCHANGE_ROUNDS=1 EXCHANGE_TRODO_ENABLED=$1 \
        valgrind --tool=callgrind --separate-threads=yes \
        --callgrind-out-file="$work/$1.%p" "$bench" --bench >"$work/$1.out" 2>"$work/$1.err" || {
        echo "exchange_instructions.sh: the bench failed:" >&2
        cat "$work/$1.out" "$work/$1.err" >&2
        exit 1
    }
}

# The instructions one callgrind file counts.
total() {
    awk '/^summary:/ { print $2; exit }' "$1"
}

run true
run false
# The bench drives exchanges on the main thread, the process's first.
on=$(total "$work"/true.*-01)
off=$(total "$work"/false.*-01)
delivery=$(grep -l 'Worker::run' "$work"/true.*-0[2-9] | head -1)
[ -n "$delivery" ] || { echo "exchange_instructions.sh: no delivery thread found" >&2; exit 1; }

echo "instructions per exchange ($exchanges exchanges, callgrind):"
echo "  request's thread, layer on minus off: $(((on - off) / exchanges))"
echo "  delivery thread:                      $(($(total "$delivery") / exchanges))"
