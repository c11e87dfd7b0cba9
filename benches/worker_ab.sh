#!/usr/bin/env bash
# Three targets against one, and against an earlier build's one target,
# in alternated rounds on the same machine (benches/README.md, Worker).
#
#   benches/worker_ab.sh OLD_BENCH NEW_BENCH [ROUNDS]
#
# OLD_BENCH and NEW_BENCH are `cargo bench --bench worker --no-run`
# executables of two builds (target/release/deps/worker-*). Each round runs
# OLD's throughput measurement (one discard target, state on) and NEW's
# three-against-one measurement, alternating which goes first, one run
# each. Prints, per round: OLD's one target (state on), NEW's one target,
# NEW's three (each), and the slowest of the three against both.
set -euo pipefail
old=${1:?old bench executable}
new=${2:?new bench executable}
rounds=${3:-5}

# The `median` line's numbers are not used: one run per round.
old_run() {
  "$old" --runs 1 --no-rate --no-state 2>/dev/null |
    awk -F' [|] ' '$1 == "1" { print $4 }'
}
new_run() {
  "$new" --runs 1 --no-throughput --no-rate --no-state --no-catchup 2>/dev/null |
    awk -F' [|] ' '$1 == "1" { split($3, t, " / "); print $2, t[1], t[2], t[3] }'
}

echo "round | old build, one target ev/s | new, one target | new, three (a / b / c) | slowest / new one | slowest / old one"
for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then
    o=$(old_run); read -r n a b c < <(new_run)
  else
    read -r n a b c < <(new_run); o=$(old_run)
  fi
  low=$(printf '%s\n' "$a" "$b" "$c" | sort -n | head -1)
  printf '%s | %s | %s | %s / %s / %s | %.2f | %.2f\n' "$r" "$o" "$n" "$a" "$b" "$c" \
    "$(echo "$low / $n" | bc -l)" "$(echo "$low / $o" | bc -l)"
done
