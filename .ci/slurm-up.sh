#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for `flow run --executor slurm` and its tests
# (tests/e2e_slurm.rs): munged, slurmctld and slurmd as root, no cgroups, two schedulable
# fake GPUs. Idempotent: a cluster this script started and that still answers is reused.
#
#   .ci/slurm-up.sh      # start; waits until `sinfo` says the node is idle
#   .ci/slurm-down.sh    # stop the daemons it started (by pid)
#
# Needs root and Debian's packages: slurmctld slurmd slurm-client munge.
# The configuration goes to /etc/slurm (SLURM_CONF_DIR), where the client commands look by
# default; the daemons' state, logs and pid files to /var/tmp/flow-slurm (FLOW_SLURM_STATE).
set -euo pipefail

CONF_DIR="${SLURM_CONF_DIR:-/etc/slurm}"
STATE="${FLOW_SLURM_STATE:-/var/tmp/flow-slurm}"
HOST="$(hostname -s)"
# Every Slurm command gets a timeout: they hang while a daemon is down.
T="timeout 10"

if [ "$(id -u)" != 0 ]; then
  echo "slurm-up: needs root (starts munged, slurmctld and slurmd)" >&2
  exit 1
fi
for bin in munged slurmctld slurmd sinfo; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    echo "slurm-up: $bin is missing (apt-get install slurmctld slurmd slurm-client munge)" >&2
    exit 1
  fi
done
export PATH="$PATH:/usr/sbin"

if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null \
  && $T sinfo -h -o %T 2>/dev/null | grep -qx idle; then
  echo "slurm-up: already running ($CONF_DIR/slurm.conf)"
  exit 0
fi

mkdir -p "$STATE"/{ctld,spool} "$CONF_DIR" /run/munge /var/log/munge /var/lib/munge

# munge: a key if there is none, then the daemon on its default socket (as its own user
# where that user exists, else as root).
KEY=/etc/munge/munge.key
if [ ! -s "$KEY" ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none
fi
if id munge >/dev/null 2>&1; then
  chown munge:munge /etc/munge "$KEY" /run/munge /var/log/munge /var/lib/munge
fi
chmod 700 /etc/munge
chmod 400 "$KEY"
if ! { [ -f /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  else
    munged --force --pid-file=/run/munge/munged.pid
  fi
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi

# Two schedulable fake GPUs: the node is invalid while its gres files are missing.
for i in 0 1; do
  [ -e "/dev/fakegpu$i" ] || mknod "/dev/fakegpu$i" c 1 3 2>/dev/null || touch "/dev/fakegpu$i"
done

# The node as slurmd sees it (CPUs, sockets, cores, memory), plus the GPUs.
NODE="$(slurmd -C | head -n1)"
case "$NODE" in
  NodeName=*) ;;
  *) echo "slurm-up: unexpected \`slurmd -C\` output: $NODE" >&2; exit 1 ;;
esac
NODE="NodeName=$HOST ${NODE#NodeName=* }"

cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by flow's .ci/slurm-up.sh: a one-node cluster for tests.
ClusterName=flowci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default each job takes all the memory, and jobs run one at a time.
DefMemPerCPU=1000
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Finished jobs stay visible to squeue for this long.
MinJobAge=600
# SIGTERM, then SIGKILL this much later (flow checkpoints on SIGTERM).
KillWait=10
$NODE Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$CONF_DIR/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=/dev/fakegpu[0-1]
EOF

# -c: a clean state (no jobs from an earlier cluster); -i: ignore it if unreadable.
slurmctld -c -i
slurmd

for _ in $(seq 1 60); do
  if $T sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "slurm-up: node $HOST idle ($CONF_DIR/slurm.conf; logs in $STATE)"
    exit 0
  fi
  sleep 1
done
echo "slurm-up: the node did not become idle within 60 s:" >&2
$T sinfo -N -l >&2 || true
tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
exit 1
