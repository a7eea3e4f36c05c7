#!/usr/bin/env bash
# A writer for the Kubernetes suite: puts key w-<i> = v-<i> (i = 1, 2, ...) through
# `dynamoctl` to the nodes at DYNAMO_ADDR, one at a time, appending each acknowledged key
# to ACKED, until the file STOP exists (or MAX puts). A put that fails is not retried
# under that key (it may still have been stored: only acknowledged keys are checked).
#   writer.sh DYNAMOCTL ACKED STOP [MAX]
set -euo pipefail
ctl="$1" acked="$2" stop="$3" max="${4:-100000}"
: > "$acked"
i=0
while [ ! -e "$stop" ] && [ "$i" -lt "$max" ]; do
  i=$((i + 1))
  if "$ctl" --timeout 5s put "w-$i" "v-$i" >/dev/null 2>&1; then
    echo "w-$i" >> "$acked"
  fi
  sleep 0.05
done
