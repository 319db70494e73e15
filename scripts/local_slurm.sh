#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `slurm` tests and for trying the cluster
# path by hand (Debian's slurmctld, slurmd and munge; run as root).
#
#   eval "$(scripts/local_slurm.sh start)"   # installs what is missing, starts, waits for an idle node
#   sbatch --wrap hostname; squeue           # the clients read SLURM_CONF, which `start` exports
#   scripts/local_slurm.sh stop              # stops exactly the daemons that `start` started
#   scripts/local_slurm.sh status
#
# Everything lives under $LOCAL_SLURM_DIR (default /tmp/salsa-local-slurm): slurm.conf, the
# daemons' state, logs and pid files, and `started`, the pids of the daemons this script started
# (a munged that was already running is used and left alone). The node is described by
# `slurmd -C` (this machine's cores and memory). Accounting is off, as on many small clusters.
# `start` on a cluster that is already up only prints the export line. Exit status: 0 up (or
# stopped), 3 cannot start here (not root, no apt, a daemon that does not come up: the reason is
# on stderr).
set -euo pipefail

dir="${LOCAL_SLURM_DIR:-/tmp/salsa-local-slurm}"
conf="$dir/slurm.conf"
started="$dir/started"
packages=(slurmctld slurmd slurm-client munge)

die() { echo "local_slurm: $*" >&2; exit 3; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# The pids in $started that still run.
running_pids() {
    [ -f "$started" ] || return 0
    local pid
    while read -r pid _; do
        if alive "$pid"; then echo "$pid"; fi
    done < "$started"
}

install_missing() {
    local missing=()
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    echo "local_slurm: installing ${missing[*]} (apt-get)" >&2
    apt-get update -q >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

# munged: the one already serving the default socket, or one started here (as the munge user).
start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    [ -s /etc/munge/munge.key ] || { mungekey --create >&2 && chown munge:munge /etc/munge/munge.key; } \
        || die "no munge key and mungekey failed"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid || die "munged did not start"
    echo "$(cat /run/munge/munged.pid) munged" >> "$started"
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged started but does not answer"
}

write_conf() {
    local host node
    host="$(hostname -s)"
    # "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105": this machine's hardware.
    node="$(slurmd -C | head -n 1)"
    [[ "$node" == NodeName=* ]] || die "slurmd -C did not describe this node: $node"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat > "$conf" <<EOF
# Written by scripts/local_slurm.sh for $host.
ClusterName=salsa-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=${LOCAL_SLURM_PORT:-6817}
SlurmdPort=$(( ${LOCAL_SLURM_PORT:-6817} + 1 ))
# No cgroups in a container: track processes by their parents, bind no cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
PropagateResourceLimits=NONE
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_for_idle() {
    local state=""
    for _ in $(seq 120); do
        state="$(SLURM_CONF="$conf" sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)"
        case "$state" in
            idle|mixed|allocated) return 0 ;;
            down*|drain*) SLURM_CONF="$conf" scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    die "the node did not become idle (last state: '${state:-none}'); see $dir/log/"
}

start() {
    if [ -f "$conf" ] && [ -n "$(running_pids)" ] && SLURM_CONF="$conf" sinfo -h >/dev/null 2>&1; then
        echo "export SLURM_CONF=$conf"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "needs root (to install the packages and run slurmd)"
    install_missing
    mkdir -p "$dir"
    : > "$started"
    start_munge
    write_conf
    /usr/sbin/slurmctld -f "$conf" -i || die "slurmctld did not start; see $dir/log/slurmctld.log"
    for _ in $(seq 50); do [ -s "$dir/slurmctld.pid" ] && break; sleep 0.1; done
    echo "$(cat "$dir/slurmctld.pid") slurmctld" >> "$started"
    /usr/sbin/slurmd -f "$conf" || die "slurmd did not start; see $dir/log/slurmd.log"
    for _ in $(seq 50); do [ -s "$dir/slurmd.pid" ] && break; sleep 0.1; done
    echo "$(cat "$dir/slurmd.pid") slurmd" >> "$started"
    wait_for_idle
    echo "export SLURM_CONF=$conf"
}

stop() {
    local pids
    pids="$(running_pids)"
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(running_pids)" ] && break
            sleep 0.1
        done
        # shellcheck disable=SC2046
        kill -9 $(running_pids) 2>/dev/null || true
    fi
    rm -f "$started"
}

status() {
    if [ -n "$(running_pids)" ]; then
        SLURM_CONF="$conf" sinfo || true
    else
        echo "local_slurm: not running (no daemon started by this script is alive)"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (state in \$LOCAL_SLURM_DIR, default /tmp/salsa-local-slurm)" >&2; exit 2 ;;
esac
