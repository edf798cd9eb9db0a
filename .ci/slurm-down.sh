#!/usr/bin/env bash
# Stops the daemons .ci/slurm-up.sh started, by the pids it recorded.
set -uo pipefail
STATE="${FLOW_SLURM_STATE:-/var/tmp/flow-slurm}"
for d in slurmd slurmctld munged; do
  f="$STATE/$d.pid"
  if [ -f "$f" ]; then
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null && echo "slurm-down: stopped $d ($pid)"
    rm -f "$f"
  fi
done
