#!/usr/bin/env bash
# A real single-node Slurm for CI: munge, MariaDB, slurmdbd, slurmctld and slurmd, all started by hand
# (no systemd needed), as root, on a throwaway Debian 12 machine.
#
#   .ci/slurm.sh up      install the Debian packages if missing, start the daemons, wait until a job can run
#   .ci/slurm.sh down    stop the daemons that `up` started (by the PIDs in its state file), nothing else
#   .ci/slurm.sh status  say whether they are running
#
# State (PID file, logs, MariaDB data, Slurm state and spool, the munge key and socket) lives under
# $BENCH_SLURM_DIR (default /tmp/bench-slurm); the Slurm configuration is written to /etc/slurm so that
# sbatch, squeue, scontrol, sacct and Submitit work without any environment variable.
# Munge and MariaDB use their own key, socket and port, so a system munged or MariaDB does not get in the way.
# `up` on a running cluster does nothing; `up` after `down` (or after a crash) starts from a clean state.
#
# Knobs: BENCH_SLURM_DIR, BENCH_SLURM_CPUS (default: nproc), BENCH_SLURM_MEM_MB (default: 85% of RAM),
# BENCH_SLURM_DB_PORT (default 13306), BENCH_SLURM_CLUSTER (default bench).
set -euo pipefail

STATE=${BENCH_SLURM_DIR:-/tmp/bench-slurm}
CLUSTER=${BENCH_SLURM_CLUSTER:-bench}
DB_PORT=${BENCH_SLURM_DB_PORT:-13306}
CONF_DIR=/etc/slurm
MARK="# written by .ci/slurm.sh"
PIDS="$STATE/pids"
# the default socket: some Slurm clients (sacctmgr talking to slurmdbd) ignore AuthInfo=socket=...
MUNGE_SOCKET=/run/munge/munge.socket.2
DB_SOCKET="$STATE/mysql/mysqld.sock"
# start order; `down` stops them in reverse
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
PACKAGES=(munge mariadb-server slurm-wlm slurmdbd)

log() { printf '[slurm.sh] %s\n' "$*" >&2; }

# fail MESSAGE [LOG...]: say what failed, show the end of the daemon logs, exit 1
fail() {
	local msg=$1
	shift
	log "FAILED: $msg"
	local f
	for f in "$@"; do
		if [[ -s $f ]]; then
			printf '%s\n' "----- last lines of $f -----" >&2
			tail -n 40 "$f" >&2
		fi
	done
	log "the daemons started so far are in $PIDS; stop them with: $0 down"
	exit 1
}

# wait_for SECONDS DESCRIPTION LOG COMMAND...: retry COMMAND every half second until it succeeds
wait_for() {
	local secs=$1 what=$2 logf=$3
	shift 3
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= end)); then
			fail "$what (not ready after ${secs}s)" "$logf"
		fi
		sleep 0.5
	done
}

# pid_of NAME: the recorded PID of daemon NAME if that process is still alive and still that daemon
pid_of() {
	local name=$1 pid
	[[ -f $PIDS ]] || return 1
	pid=$(awk -v n="$name" '$1 == n { p = $2 } END { print p }' "$PIDS")
	[[ -n $pid ]] || return 1
	is_daemon "$pid" "$name" || return 1
	echo "$pid"
}

is_daemon() {
	local pid=$1 name=$2 comm
	[[ -r /proc/$pid/comm ]] || return 1
	comm=$(<"/proc/$pid/comm") || return 1
	[[ $comm == "$name" ]]
}

record_pid() { # record_pid NAME PIDFILE LOG
	local name=$1 pidfile=$2 logf=$3 pid=""
	local end=$((SECONDS + 30))
	while ((SECONDS < end)); do
		if [[ -s $pidfile ]]; then
			pid=$(tr -dc '0-9' <"$pidfile")
			if [[ -n $pid ]] && is_daemon "$pid" "$name"; then
				echo "$name $pid" >>"$PIDS"
				log "$name running, PID $pid"
				return 0
			fi
		fi
		sleep 0.2
	done
	fail "$name did not start (no live process in $pidfile)" "$logf"
}

all_up() {
	local d
	[[ -f $PIDS ]] || return 1
	for d in "${DAEMONS[@]}"; do
		if [[ $d == munged ]]; then
			munge_answers || return 1
		else
			pid_of "$d" >/dev/null || return 1
		fi
	done
	scontrol ping 2>/dev/null | grep -q UP
}

install_packages() {
	local missing=0 c
	for c in munged mungekey mariadbd mariadb-install-db mariadb-admin slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
		command -v "$c" >/dev/null 2>&1 || missing=1
	done
	((missing)) || return 0
	log "installing ${PACKAGES[*]} (apt-get)"
	# keep the packages' own services from starting (there may be no init system to run them, and ours
	# are started below): a temporary policy-rc.d, unless the machine already has one
	local policy=/usr/sbin/policy-rc.d added=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		added=1
	fi
	local rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
	} >"/tmp/bench-slurm-apt.log" 2>&1 || rc=$?
	((added)) && rm -f "$policy"
	((rc == 0)) || fail "apt-get install ${PACKAGES[*]} (exit $rc)" /tmp/bench-slurm-apt.log
}

write_slurm_conf() {
	local cpus=${BENCH_SLURM_CPUS:-$(nproc)}
	local mem=${BENCH_SLURM_MEM_MB:-$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.85 }' /proc/meminfo)}
	local f
	for f in slurm.conf slurmdbd.conf; do # keep a configuration that is not ours
		if [[ -e $CONF_DIR/$f ]] && ! grep -qF "$MARK" "$CONF_DIR/$f"; then
			mv "$CONF_DIR/$f" "$CONF_DIR/$f.before-bench-slurm"
			log "moved the existing $CONF_DIR/$f to $CONF_DIR/$f.before-bench-slurm"
		fi
	done
	mkdir -p "$CONF_DIR"
	cat >"$CONF_DIR/slurm.conf" <<EOF
$MARK; state under $STATE
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again after 10 s instead of 120 s
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
ReturnToService=2
JobRequeue=1
KillWait=5
InactiveLimit=0
MinJobAge=300
MailProg=/bin/true
StateSaveLocation=$STATE/slurm/ctld
SlurmdSpoolDir=$STATE/slurm/d
SlurmctldPidFile=$STATE/slurm/slurmctld.pid
SlurmdPidFile=$STATE/slurm/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
	chmod 644 "$CONF_DIR/slurm.conf"
	(
		umask 077
		cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARK; state under $STATE
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurm/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
	)
	chmod 600 "$CONF_DIR/slurmdbd.conf"
}

munge_answers() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
	if munge_answers && ! pid_of munged >/dev/null; then
		log "a munged that $0 did not start answers on $MUNGE_SOCKET; using it (and leaving it running)"
		echo "munged-foreign -" >>"$PIDS"
		return 0
	fi
	mkdir -p "$STATE/munge" "$(dirname "$MUNGE_SOCKET")"
	chmod 700 "$STATE/munge"
	(umask 077 && mungekey --create --keyfile="$STATE/munge/munge.key" --force)
	# --force: the state folder may sit in a world-writable /tmp, which munged's path checks dislike
	munged --force --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
		--pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
		--seed-file="$STATE/munge/munged.seed" </dev/null >>"$STATE/log/munged.log" 2>&1 ||
		fail "munged exited with status $?" "$STATE/log/munged.log"
	record_pid munged "$STATE/munge/munged.pid" "$STATE/log/munged.log"
	wait_for 20 "munge answers" "$STATE/log/munged.log" munge_answers
}

start_mariadb() {
	local data="$STATE/mysql/data" logf="$STATE/log/mariadb.log"
	mkdir -p "$data"
	mariadb-install-db --no-defaults --user=root --datadir="$data" --auth-root-authentication-method=socket \
		--skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 ||
		fail "mariadb-install-db" "$STATE/log/mariadb-install.log"
	setsid mariadbd --no-defaults --user=root --datadir="$data" --socket="$DB_SOCKET" \
		--port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
		--pid-file="$STATE/mysql/mariadbd.pid" --log-error="$logf" \
		--innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
		</dev/null >>"$logf" 2>&1 &
	record_pid mariadbd "$STATE/mysql/mariadbd.pid" "$logf"
	wait_for 60 "MariaDB answers" "$logf" mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping
	mariadb --no-defaults --socket="$DB_SOCKET" -uroot >>"$logf" 2>&1 <<EOF || fail "creating slurm_acct_db" "$logf"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
	local logf="$STATE/log/slurmdbd.log"
	slurmdbd </dev/null >>"$logf" 2>&1 || fail "slurmdbd exited with status $?" "$logf"
	record_pid slurmdbd "$STATE/slurm/slurmdbd.pid" "$logf"
	wait_for 60 "slurmdbd answers" "$logf" sacctmgr -n list cluster
	if ! sacctmgr -n -P list cluster format=Cluster | grep -qx "$CLUSTER"; then
		sacctmgr -i add cluster "$CLUSTER" >>"$logf" 2>&1 || fail "sacctmgr add cluster $CLUSTER" "$logf"
	fi
}

start_slurmctld() {
	local logf="$STATE/log/slurmctld.log"
	slurmctld </dev/null >>"$logf" 2>&1 || fail "slurmctld exited with status $?" "$logf"
	record_pid slurmctld "$STATE/slurm/slurmctld.pid" "$logf"
	wait_for 60 "slurmctld answers (scontrol ping)" "$logf" bash -c 'scontrol ping | grep -q UP'
}

start_slurmd() {
	local logf="$STATE/log/slurmd.log"
	# the node is called localhost in slurm.conf, whatever the machine's host name is
	slurmd -N localhost </dev/null >>"$logf" 2>&1 || fail "slurmd exited with status $?" "$logf"
	record_pid slurmd "$STATE/slurm/slurmd.pid" "$logf"
	wait_for 60 "node localhost idle (sinfo)" "$logf" \
		bash -c 'sinfo -h -n localhost -o %T | grep -Eqx "idle|mixed|allocated"'
}

up() {
	if all_up; then
		log "already up (state in $STATE)"
		sinfo >&2
		return 0
	fi
	if [[ -f $PIDS ]]; then
		log "a previous cluster is partly running; stopping it first"
		down
	fi
	local t0=$SECONDS
	install_packages
	if [[ -d $STATE ]]; then
		if [[ ! -e $STATE/.bench-slurm && -n $(ls -A "$STATE") ]]; then
			fail "$STATE exists and was not made by $0; set BENCH_SLURM_DIR to another folder"
		fi
		rm -rf "$STATE"
	fi
	mkdir -p "$STATE"/{log,slurm/ctld,slurm/d}
	chmod 755 "$STATE"
	touch "$STATE/.bench-slurm" "$PIDS"
	log "state in $STATE"
	DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
	write_slurm_conf
	start_munge
	start_mariadb
	start_slurmdbd
	start_slurmctld
	start_slurmd
	log "Slurm is up in $((SECONDS - t0))s (cluster $CLUSTER, partition debug, node localhost; logs in $STATE/log)"
	sinfo >&2
}

down() {
	if [[ ! -f $PIDS ]]; then
		log "nothing to stop (no $PIDS)"
		return 0
	fi
	# cancel the jobs first, so that their slurmstepd processes end too
	if pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null; then
		local jobs
		jobs=$(squeue -h -o %i 2>/dev/null || true)
		if [[ -n $jobs ]]; then
			log "cancelling jobs: ${jobs//$'\n'/ }"
			# shellcheck disable=SC2086
			scancel $jobs 2>/dev/null || true
			local end=$((SECONDS + 20))
			while [[ -n $(squeue -h -o %i 2>/dev/null) ]] && ((SECONDS < end)); do sleep 0.5; done
		fi
	fi
	local i name pid
	for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
		name=${DAEMONS[i]}
		pid=$(pid_of "$name") || continue
		log "stopping $name (PID $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		local end=$((SECONDS + 30))
		while is_daemon "$pid" "$name" && ((SECONDS < end)); do sleep 0.2; done
		if is_daemon "$pid" "$name"; then
			log "$name (PID $pid) still running after 30s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	rm -f "$PIDS"
	log "stopped (logs kept in $STATE/log)"
}

status() {
	local d pid rc=0
	for d in "${DAEMONS[@]}"; do
		if pid=$(pid_of "$d"); then
			echo "$d: running (PID $pid)"
		elif [[ $d == munged ]] && munge_answers; then
			echo "munged: running (not started by $0)"
		else
			echo "$d: not running"
			rc=1
		fi
	done
	return "$rc"
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
	echo "usage: $0 up|down|status" >&2
	exit 2
	;;
esac
