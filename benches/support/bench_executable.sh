# Sourced by the bench scripts (`instructions.sh`, `exchange_instructions.sh`).

# Builds the bench named `$1` (release) and prints the path of its executable.
bench_executable() {
    cargo bench --bench "$1" --no-run --message-format=json |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}
