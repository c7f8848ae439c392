#!/usr/bin/env bash
# How the request mix scales with worker threads under one shared server root.
#
# Builds the `server_mix` bench once (or uses SERVER_MIX_BIN, e.g. a binary built elsewhere and
# copied to a machine without a toolchain), runs its group `server_mix_workers` at each worker
# count in WORKERS (default "1 2 4 8 16"), and prints, per id and worker count, the time of one
# request as seen by one worker (ns) and the total throughput of all workers (M requests/s).
#
#   bash benches/scale.sh                      # build here, run here
#   WORKERS="1 2" bash benches/scale.sh        # a 2-core machine
#   SERVER_MIX_BIN=./server_mix bash scale.sh  # a prebuilt binary
#
# MEASURE (default 2) and WARM (default 1) set criterion's seconds per id.
set -euo pipefail
cd "$(dirname "$0")/.."

workers=${WORKERS:-"1 2 4 8 16"}
measure=${MEASURE:-2}
warm=${WARM:-1}
bin=${SERVER_MIX_BIN:-}
if [ -z "$bin" ]; then
  bin=$(cargo bench --bench server_mix --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*server_mix[^"]*\)".*/\1/p' | tail -1)
fi
[ -x "$bin" ] || { echo "scale.sh: no server_mix binary (got '$bin')" >&2; exit 1; }

list=$(echo "$workers" | tr ' ' ',')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) CPUs)"
echo "worker counts: $list; criterion: ${warm}s warm-up, ${measure}s per id"
CTXPOOL_MIX_WORKERS=$list "$bin" --bench --output-format bencher \
  --warm-up-time "$warm" --measurement-time "$measure" 'server_mix_workers/' 2>/dev/null \
  | awk '
    /^test server_mix_workers\// {
      split($2, p, "/"); id = p[2]; w = p[3]; ns = $5; gsub(",", "", ns);
      t[id, w] = ns; ids[id] = 1; ws[w] = 1
    }
    END {
      n = 0; for (w in ws) order[++n] = w + 0
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (order[j] < order[i]) { x = order[i]; order[i] = order[j]; order[j] = x }
      printf "%-11s", "workers"
      for (i = 1; i <= n; i++) printf " | %7d: ns/req  Mreq/s", order[i]
      printf "\n"
      split("none naive tokio_util ctxpool", names, " ")
      for (k = 1; k <= 4; k++) {
        id = names[k]; if (!(id in ids)) continue
        printf "%-11s", id
        for (i = 1; i <= n; i++) {
          ns = t[id, order[i]]
          if (ns == "") printf " | %22s", "-"
          else printf " | %15.0f %6.2f", ns, order[i] * 1000 / ns
        }
        printf "\n"
      }
      printf "\nnet of none (ns/req, the contexts alone):\n"
      for (k = 2; k <= 4; k++) {
        id = names[k]; if (!(id in ids)) continue
        printf "%-11s", id
        for (i = 1; i <= n; i++) {
          w = order[i]; if (t[id, w] == "" || t["none", w] == "") { printf " | %8s", "-"; continue }
          printf " | %3d: %5.0f", w, t[id, w] - t["none", w]
        }
        printf "\n"
      }
    }'
