#!/usr/bin/env bash
# Compares two builds (or two settings) of the `server_mix` bench on one shared, noisy
# machine: runs one id's request loop (`CTXPOOL_MIX_RUN`: one worker and the dropper) from
# each side in turn, ROUNDS times, and prints each side's time per request (the worker's),
# sorted, with the minimum and the median. Alternating the runs spreads the machine's load
# changes over both sides; on a shared VM, compare minimums and medians, not single runs.
#
#   cargo bench --bench server_mix --no-run     # copy the binary it names, e.g. to /tmp/a
#   ... change something, build again, copy it to /tmp/b ...
#   bash benches/ab.sh /tmp/a /tmp/b            # ID=ctxpool ROUNDS=7 REQUESTS=1000000
#
# A_ENV / B_ENV: one `NAME=value` set for that side's runs only, e.g. the cost of the
# per-operation metrics with one binary:
#
#   B_ENV=CTXPOOL_MIX_METRICS=off bash benches/ab.sh /tmp/a /tmp/a
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: ab.sh <server_mix binary A> <server_mix binary B>" >&2; exit 2; }
ID=${ID:-ctxpool}
ROUNDS=${ROUNDS:-7}
REQUESTS=${REQUESTS:-1000000}
bins=("$1" "$2")
envs=("${A_ENV:-_AB_UNUSED=1}" "${B_ENV:-_AB_UNUSED=1}")
times=("" "")
for _ in $(seq "$ROUNDS"); do
  for i in 0 1; do
    t=$(env "${envs[$i]}" CTXPOOL_MIX_RUN="$ID:$REQUESTS" "${bins[$i]}" 2>&1 >/dev/null |
      sed -n 's/.*: \([0-9.]*\) ns\/request.*/\1/p')
    [ -n "$t" ] || { echo "no time from ${bins[$i]}" >&2; exit 1; }
    times[$i]="${times[$i]} $t"
  done
done
for i in 0 1; do
  sorted=$(tr ' ' '\n' <<<"${times[$i]}" | grep . | sort -n)
  min=$(head -1 <<<"$sorted")
  med=$(sed -n "$(( (ROUNDS + 1) / 2 ))p" <<<"$sorted")
  label=${bins[$i]}
  [ "${envs[$i]}" = _AB_UNUSED=1 ] || label="${envs[$i]} $label"
  printf '%s %s: min %s, median %s ns/request; all: %s\n' \
    "$([ $i = 0 ] && echo A || echo B)" "$label ($ID)" "$min" "$med" "$(tr '\n' ' ' <<<"$sorted")"
done
