#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM tests: munged, MariaDB, slurmdbd (accounting, so that
# `sacct` works), slurmctld and slurmd, all from Debian's packages.
#
#   tests/slurm/cluster.sh up       install what is missing (apt), write the configs, start the daemons, wait
#                                   until the node is idle; does nothing more when the cluster is already up
#   tests/slurm/cluster.sh down     cancel every job, stop every daemon this script started (by the PIDs in its
#                                   state folder); safe to run twice or when nothing runs
#   tests/slurm/cluster.sh status   which daemons run, and sinfo; exit status 0 only when all of them run
#   tests/slurm/cluster.sh purge    down, then delete the state folder (configs, database, logs)
#
# Everything lives in one state folder, $DSSBT_SLURM_DIR (default /tmp/dssbt-slurm): etc/ (slurm.conf,
# slurmdbd.conf, cgroup.conf), pids/, log/, spool/, mysql/ (MariaDB on 127.0.0.1:$DSSBT_SLURM_DB_PORT, default
# 3307). Nothing is written under /etc/slurm: slurmctld and slurmdbd read the configs through SLURM_CONF, and
# slurmd runs configless, so that clients (sinfo, sbatch, sacct, snakemake, the srun inside a job) find
# slurm.conf at /run/slurm/conf/slurm.conf while slurmd runs; `. $DSSBT_SLURM_DIR/env` sets SLURM_CONF as well.
# munged uses the packaged key and /run/munge (the default socket); a munged that already answered before `up`
# is used and left alone. Partition `debug` (default), account `dssbt` for root (and $SUDO_USER). The node has two
# GPU GRES (gres.conf: File=/dev/null, /dev/zero), so that `--gpus=1` jobs are scheduled; the jobs run on the CPU.
#
# Test sessions call `up` first and `down` at the end (tests/test_slurm.py); `down` kills only PIDs recorded in
# pids/ (each checked against its executable) and step daemons that carry this cluster's mark.
#
# Memory limits are enforced (a job over its --mem is killed): with the cgroup v1/v2 memory controller where
# slurmd can use it ($DSSBT_SLURM_MEMORY=auto, the default, tries it first), otherwise by the accounting
# sampler (jobacct_gather/linux with OverMemoryKill, sampled every second). Force one with
# DSSBT_SLURM_MEMORY=cgroup or DSSBT_SLURM_MEMORY=jobacct.
#
# Needs root (the daemons run as root, munged as user munge). Exit status 2: cannot run here (not root, or no
# apt-get to install missing packages); the message says why. Any other failure: exit status 1.
set -euo pipefail

STATE=${DSSBT_SLURM_DIR:-/tmp/dssbt-slurm}
CLUSTER=dssbt
ACCOUNT=${DSSBT_SLURM_ACCOUNT:-dssbt}
PARTITION=debug
DB_PORT=${DSSBT_SLURM_DB_PORT:-3307}
DB_PASS=dssbt-slurm-test
MEMORY_MODE=${DSSBT_SLURM_MEMORY:-auto}
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
ETC=$STATE/etc
PIDS=$STATE/pids
LOG=$STATE/log
export SLURM_CONF=$ETC/slurm.conf
export PATH=$PATH:/usr/sbin:/sbin
# Every daemon (and so every slurmstepd) carries this mark: `down` finds stray step daemons of this cluster by it.
export DSSBT_SLURM_CLUSTER=$STATE

say() { echo "cluster.sh: $*" >&2; }
die() { say "$*"; exit 1; }
cannot() { say "cannot run here: $*"; exit 2; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.5 s until it succeeds
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local end=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            say "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

pid_of() { [[ -s $PIDS/$1.pid ]] && cat "$PIDS/$1.pid"; }

# The executable of each daemon this script starts. Started by this name, not by the file the link leads to
# (/usr/sbin/slurmctld -> slurmctld-wlm): SLURM tells its daemons apart by the program name, and a slurmctld
# named slurmctld-wlm crashes at its first accounting message.
exe_of() {
    case $1 in
        mariadb) echo /usr/sbin/mariadbd ;;
        *) echo "/usr/sbin/$1" ;;
    esac
}

running() {  # running NAME: the daemon started by this script (PID in the state folder) is alive
    local pid
    pid=$(pid_of "$1") || return 1
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$(exe_of "$1")")" ]]
}

# start NAME USER ARGS...: start a daemon that stays in the foreground, in the background; keep its PID
start() {
    local name=$1 user=$2
    shift 2
    if running "$name"; then
        return 0
    fi
    start-stop-daemon --start --background --make-pidfile --pidfile "$PIDS/$name.pid" --chuid "$user" \
        --output "$LOG/$name.out" --exec "$(exe_of "$name")" -- "$@"
    # The PID is written at the fork; it is the daemon once the child has exec'ed it.
    wait_for 10 "$name to start" running "$name" || die "$name did not start (log: $LOG/$name.out)"
}

stop() {  # stop NAME: TERM, then KILL after 20 s, the PID this script recorded (if it still runs that daemon)
    local name=$1 pid
    if running "$name"; then
        pid=$(pid_of "$name")
        start-stop-daemon --stop --quiet --pidfile "$PIDS/$name.pid" --exec "$(exe_of "$name")" \
            --retry TERM/20/KILL/5 || true
        # Gone from the process table once init has reaped it (no zombie left for pgrep to see).
        wait_for 10 "$name (pid $pid) to be reaped" bash -c "! kill -0 $pid" || true
    fi
    rm -f "$PIDS/$name.pid"
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || missing+=(slurm-wlm)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v munged >/dev/null || missing+=(munge)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || cannot "missing ${missing[*]} and no apt-get to install them"
    say "installing ${PACKAGES[*]} with apt"
    # Packages must not start their services: this script starts the daemons itself. Debian's Docker images ship
    # a policy-rc.d that forbids it; where none is, put one there for the install only.
    local policy=/usr/sbin/policy-rc.d made_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
    } >"$STATE/apt.log" 2>&1 || rc=$?
    [[ -n $made_policy ]] && rm -f "$policy"
    # A failing apt is an error, not a reason to skip: the tests must not pass silently where apt is broken.
    ((rc == 0)) || { tail -20 "$STATE/apt.log" >&2; die "apt-get install ${PACKAGES[*]} failed (log: $STATE/apt.log)"; }
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if running munged || { [[ ! -e $PIDS/munged.pid ]] && munge_works; }; then
        return 0  # ours, or one that was there before us (left alone)
    fi
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || (cd / && setpriv --reuid munge --regid munge --init-groups mungekey --create)
    start munged munge --foreground
    wait_for 15 munged munge_works
}

db() { mariadb --socket="$STATE/mysql/mysqld.sock" -u root "$@"; }

start_mariadb() {
    if [[ ! -d $STATE/mysql/mysql ]]; then
        install -d -o mysql -g mysql -m 750 "$STATE/mysql"
        mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed (log: $LOG/mariadb-install.log)"
    fi
    start mariadb root --no-defaults --user=mysql --datadir="$STATE/mysql" \
        --socket="$STATE/mysql/mysqld.sock" --pid-file="$STATE/mysql/mariadbd.pid" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --log-error="$STATE/mysql/mariadb.err" --innodb-buffer-pool-size=64M
    wait_for 60 "MariaDB on $STATE/mysql/mysqld.sock" db -e "SELECT 1"
    db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
           CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

cgroup_version() {  # 2 (unified), 1 (v1 memory controller) or nothing: what slurmd's cgroup plugin could use
    if [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]]; then
        grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null && echo 2
    elif [[ -w /sys/fs/cgroup/memory && -w /sys/fs/cgroup/freezer && -w /sys/fs/cgroup/cpuset ]]; then
        echo 1
    fi
}

write_configs() {  # write_configs cgroup|jobacct
    local mode=$1 node mem
    # The node's CPU line from slurmd -C, renamed localhost; memory 10% below what the machine has.
    node=$(slurmd -C | head -1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    node=$(sed -e 's/^NodeName=[^ ]*/NodeName=localhost NodeAddr=127.0.0.1/' \
        -e "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<<"$node")
    local memory_lines
    if [[ $mode == cgroup ]]; then
        memory_lines="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=task=1"
        cat >"$ETC/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v$(cgroup_version)
CgroupAutomount=yes
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
AllowedRAMSpace=100
EOF
    else
        # Without cgroups: the accounting sampler reads each step's RSS every second and kills a step over its
        # --mem (OverMemoryKill).
        memory_lines="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill"
        rm -f "$ETC/cgroup.conf"
    fi
    # GPU GRES on the node, one per CPU, so that a job's --gpus / --gres=gpu request is really scheduled (the jobs run
    # on the CPU) and two single-GPU jobs can run at once. Each GPU needs a device file (without File= slurmd counts
    # 0 GPUs and the node goes INVAL): any character device will do. Configless slurmd fetches this file too.
    cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=/dev/null
Name=gpu File=/dev/zero
EOF
    cat >"$ETC/slurm.conf" <<EOF
# Written by tests/slurm/cluster.sh (memory enforcement: $mode). A one-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/spool/slurmctld.pid
SlurmdPidFile=$STATE/spool/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SchedulerType=sched/backfill
# Backfill every 5 s instead of 30: a job behind one that waits for a GPU starts within seconds.
SchedulerParameters=bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
$memory_lines
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
# sacct shows the job comment (the plugin writes rule and wildcards there).
AccountingStoreFlags=job_comment
# The node's one GPU (gres.conf), scheduled and accounted: sacct's AllocTRES shows gres/gpu of a job that asked.
GresTypes=gpu
AccountingStorageTRES=gres/gpu
# slurmd runs configless: it fetches this file from slurmctld and links it at /run/slurm/conf/slurm.conf, where
# every client finds it, also the srun that snakemake's job step runs with SLURM_CONF stripped from its
# environment.
SlurmctldParameters=enable_configless
# sacct answers from slurmdbd; squeue keeps a finished job for MinJobAge seconds (the default).
MinJobAge=300
# A cancelled, timed-out or requeued job gets SIGTERM, then SIGKILL after KillWait seconds (default 30). The job step's
# Snakemake outlives SIGTERM and lets its training run on: 5 s keeps a requeue test's job from finishing after it
# was requeued.
KillWait=5
$node Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
# Written by tests/slurm/cluster.sh. slurmdbd refuses this file unless only its owner can read it.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/spool/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$ETC/slurmdbd.conf"
}

register_accounting() {
    wait_for 60 "slurmdbd" sacctmgr -n list cluster
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" \
        || sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description=tests organization=tests >/dev/null
    local user
    for user in root ${SUDO_USER:-}; do
        sacctmgr -n -P list assoc user="$user" account="$ACCOUNT" format=user | grep -qx "$user" \
            || sacctmgr -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
    done
}

node_state() { sinfo -h -N -n localhost -o %T 2>/dev/null; }
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }  # up, with or without jobs

start_slurm() {  # start_slurm MODE: slurmctld and slurmd; 0 when the node is idle within 60 s
    start slurmctld root -D
    wait_for 30 slurmctld scontrol ping || return 1
    (unset SLURM_CONF && start slurmd root -D -N localhost --conf-server localhost)
    local end=$((SECONDS + 60)) state
    while ((SECONDS < end)); do
        running slurmd || { say "slurmd exited (log: $LOG/slurmd.log, $LOG/slurmd.out)"; return 1; }
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing) return 0 ;;
            down* | drain*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    say "node not idle after 60 s (state: ${state:-none}; logs: $LOG)"
    return 1
}

cmd_up() {
    [[ $(id -u) == 0 ]] || cannot "needs root (starts daemons, installs packages); uid is $(id -u)"
    install -d -m 755 "$STATE" "$ETC" "$PIDS" "$LOG" "$STATE/spool" "$STATE/spool/ctld" "$STATE/spool/d"
    install_packages
    if running slurmctld && running slurmd && running slurmdbd && node_ready; then
        say "already up"
        return 0
    fi
    start_munge
    start_mariadb
    local mode=$MEMORY_MODE
    if [[ $mode == auto ]]; then
        if running slurmd && [[ -f $ETC/slurm.conf ]]; then
            mode=$(sed -n 's/.*memory enforcement: \([a-z]*\).*/\1/p' "$ETC/slurm.conf")
        else
            mode=$([[ -n $(cgroup_version) ]] && echo cgroup || echo jobacct)
        fi
    fi
    [[ $mode == cgroup && -z $(cgroup_version) ]] && die "DSSBT_SLURM_MEMORY=cgroup but no usable cgroup memory controller"
    running slurmctld || write_configs "$mode"
    start slurmdbd root -D
    register_accounting
    if ! start_slurm; then
        if [[ $mode == cgroup && $MEMORY_MODE == auto ]]; then
            say "slurmd did not come up with cgroups; falling back to jobacct_gather OverMemoryKill"
            stop slurmd
            stop slurmctld
            mode=jobacct
            write_configs "$mode"
            start_slurm || die "SLURM did not come up (logs: $LOG)"
        else
            die "SLURM did not come up (logs: $LOG)"
        fi
    fi
    say "up: partition $PARTITION, account $ACCOUNT, memory enforcement $mode; run: . $STATE/env"
    echo "export SLURM_CONF=$SLURM_CONF" >"$STATE/env"
}

cmd_down() {
    if running slurmctld; then
        # Cancel every job so that no slurmstepd or job process outlives the daemons.
        scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
        wait_for 20 "jobs to end" bash -c '[[ -z $(squeue -h -o %i) ]]' || true
    fi
    # Each group stops together (TERM, KILL after 20 s), the groups in order: the SLURM daemons before the
    # accounting daemon, that before its database; munged last.
    local group name
    for group in "slurmd slurmctld" slurmdbd "mariadb munged"; do
        for name in $group; do
            stop "$name" &
        done
        wait
    done
    # Step daemons of this cluster that survived (they carry our mark in their environment).
    local pid
    for pid in $(pgrep -x slurmstepd || true); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "DSSBT_SLURM_CLUSTER=$STATE"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # The link configless slurmd leaves to its config cache.
    [[ $(readlink /run/slurm/conf 2>/dev/null) == "$STATE"/* ]] && rm -f /run/slurm/conf
    rm -f "$STATE/env"
    say "down"
}

cmd_status() {
    local name all=0
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        if running "$name"; then
            echo "$name: running (pid $(pid_of "$name"))"
        elif [[ $name == munged ]] && munge_works; then
            echo "munged: running (not started by this script)"
        else
            echo "$name: stopped"
            all=1
        fi
    done
    echo "SLURM_CONF=$SLURM_CONF"
    if ((all == 0)); then
        sinfo
    fi
    return $all
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    purge) cmd_down && rm -rf "$STATE" ;;
    *) echo "usage: $0 up|down|status|purge" >&2; exit 64 ;;
esac
