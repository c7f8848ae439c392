#!/usr/bin/env bash
# Where ctxpool stands against its peers on a shared, noisy machine: runs the `server_mix`
# request loop (`CTXPOOL_MIX_RUN`: one worker and the dropper) of `ctxpool` from two builds,
# then `naive` and `none` from the second, one after the other, ROUNDS times, so that the
# machine's slow and fast periods fall on every column alike; prints each round and the
# medians, and ctxpool's net cost (minus `none`) against naive's.
#
#   cargo bench --bench server_mix --no-run     # copy the binary it names, e.g. to /tmp/a
#   ... change something, build again, copy it to /tmp/b ...
#   bash benches/rotate.sh /tmp/a /tmp/b        # ROUNDS=7 REQUESTS=1000000
#
# Besides the medians it prints the paired difference B − A of each round (median, quartiles,
# range): on a shared VM whose speed drifts by ±20 ns between runs, that is the number to read.
#
# ENVX: one `NAME=value` set for every run, e.g. ENVX=CTXPOOL_MIX_HANDOFF=off.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: rotate.sh <server_mix binary A> <server_mix binary B>" >&2; exit 2; }
ROUNDS=${ROUNDS:-7}
REQUESTS=${REQUESTS:-1000000}
ENVX=${ENVX:-_ROTATE_UNUSED=1}
run() {
  local t
  t=$(env "$ENVX" CTXPOOL_MIX_RUN="$2:$REQUESTS" "$1" 2>&1 >/dev/null |
    sed -n 's/.*: \([0-9.]*\) ns\/request.*/\1/p')
  [ -n "$t" ] || { echo "no time from $1 ($2)" >&2; exit 1; }
  echo "$t"
}
cols=("A ctxpool" "B ctxpool" "B naive" "B none")
declare -a all=("" "" "" "")
diffs=""

printf '%10s %10s %10s %10s\n' "${cols[@]}"
for _ in $(seq "$ROUNDS"); do
  r=("$(run "$1" ctxpool)" "$(run "$2" ctxpool)" "$(run "$2" naive)" "$(run "$2" none)")
  printf '%10s %10s %10s %10s\n' "${r[@]}"
  for i in 0 1 2 3; do all[$i]="${all[$i]} ${r[$i]}"; done
  diffs="$diffs $(awk -v a="${r[0]}" -v b="${r[1]}" 'BEGIN {printf "%.1f", b - a}')"
done
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
m=()
for i in 0 1 2 3; do m[$i]=$(median "${all[$i]}"); done
printf 'medians: %10s %10s %10s %10s\n' "${m[@]}"
awk -v a="${m[0]}" -v b="${m[1]}" -v n="${m[2]}" -v z="${m[3]}" 'BEGIN {
  printf "net of none: A ctxpool %.0f, B ctxpool %.0f, naive %.0f ns: B ctxpool %.2fx naive'"'"'s cost (A %.2fx)\n",
    a - z, b - z, n - z, (b - z) / (n - z), (a - z) / (n - z) }'
# The same comparison paired by round: B − A within each round cancels the machine's slow and
# fast periods, which a difference of medians does not. An effect smaller than the spread
# printed here is not resolved by this many rounds.
tr ' ' '\n' <<<"$diffs" | sed '/^$/d' | sort -n | awk '{v[NR]=$1; if ($1 < 0) f++} END {
  printf "paired B - A (ctxpool): median %+.1f ns, quartiles %+.1f..%+.1f, range %+.1f..%+.1f; B faster in %d of %d rounds\n",
    v[int((NR+1)/2)], v[int((NR+3)/4)], v[int((3*NR+3)/4)], v[1], v[NR], f, NR }'
