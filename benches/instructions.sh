#!/usr/bin/env bash
# Instructions per request of the `server_mix` request loop, counted by callgrind: a measure
# that, unlike time, does not move with a shared machine's load, so a change to a hot path
# can be compared before and after in one run on any machine.
#
#   bash benches/instructions.sh            # every id, 20,000 and 40,000 requests
#   N=50000 bash benches/instructions.sh ctxpool naive
#
# Each id runs N and 2N requests (one worker and the dropper, as `server_mix`); the
# difference divided by N is the cost of one request with start-up and teardown taken out.
# Needs valgrind (Debian: `apt-get install valgrind`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "instructions.sh needs valgrind" >&2; exit 1; }
N=${N:-20000}
ids=("$@")
[ ${#ids[@]} -gt 0 ] || ids=(none naive tokio_util ctxpool)
bin=$(cargo bench --bench server_mix --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*server_mix[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the server_mix bench" >&2; exit 1; }
count() {
  CTXPOOL_MIX_RUN="$1:$2" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' | tr -d ,
}
declare -A per
printf '%-11s %14s\n' id "instr/request"
for id in "${ids[@]}"; do
  a=$(count "$id" "$N")
  b=$(count "$id" $((2 * N)))
  per[$id]=$(( (b - a) / N ))
  printf '%-11s %14d\n' "$id" "${per[$id]}"
done
if [ -n "${per[none]:-}" ]; then
  echo "net of none:"
  for id in "${ids[@]}"; do
    [ "$id" = none ] && continue
    printf '%-11s %14d\n' "$id" $(( per[$id] - per[none] ))
  done
fi
