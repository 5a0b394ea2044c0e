#!/usr/bin/env bash
# Check the Slurm that `.ci/slurm.sh up` started: submit a trivial job with sbatch, wait for it, and check
# that sacct reports it COMPLETED; then a job that requeues itself once (as a pre-empted Submitit job does)
# must run twice and complete. Exits non-zero, with the job's output and state, otherwise.
# Usage: .ci/slurm-check.sh [TIMEOUT_SECONDS]   (default 120 per job)
set -euo pipefail

TIMEOUT=${1:-120}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/slurm-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say() { printf '[slurm-check] %s\n' "$*" >&2; }

# sacct_state ID: the job's state in the accounting database (first line: the job, not its steps)
sacct_state() { sacct -n -X -P -j "$1" --format=State 2>/dev/null | head -n 1 | awk '{ print $1 }'; }

# wait_done ID: wait until the job has left the queue and sacct has a final state for it; print that state
wait_done() {
	local id=$1 end=$((SECONDS + TIMEOUT)) state=""
	while ((SECONDS < end)); do
		if [[ -z $(squeue -h -j "$id" -o %i 2>/dev/null) ]]; then
			state=$(sacct_state "$id")
			case $state in
			COMPLETED | FAILED | CANCELLED* | TIMEOUT | OUT_OF_MEMORY | NODE_FAIL | BOOT_FAIL | DEADLINE | PREEMPTED)
				echo "$state"
				return 0
				;;
			esac
		fi
		sleep 1
	done
	echo "${state:-UNKNOWN} (still not finished after ${TIMEOUT}s)"
}

# check NAME ID OUTFILE EXPECTED_OUTPUT
check() {
	local name=$1 id=$2 out=$3 expected=$4 t0=$SECONDS state
	state=$(wait_done "$id")
	if [[ $state != COMPLETED ]]; then
		say "FAILED: $name job $id: sacct says $state"
		squeue -j "$id" 2>/dev/null || true
		sacct -j "$id" --format=JobID,JobName,State,ExitCode,Start,End 2>/dev/null || true
		[[ -f $out ]] && { say "job output:"; cat "$out" >&2; }
		return 1
	fi
	if ! grep -qx "$expected" "$out"; then
		say "FAILED: $name job $id COMPLETED but its output lacks '$expected':"
		cat "$out" >&2
		return 1
	fi
	say "ok: $name job $id COMPLETED in sacct ($((SECONDS - t0))s after submission)"
}

cat >"$WORK/trivial.sh" <<'EOF'
#!/bin/bash
echo "hello from $SLURM_JOB_ID on $(hostname)"
echo done
EOF
id=$(sbatch --parsable -J slurm-check -t 5 -o "$WORK/trivial.out" "$WORK/trivial.sh")
say "submitted trivial job $id"
check trivial "$id" "$WORK/trivial.out" "done"

# a job that requeues itself the first time it runs (Submitit's pre-emption handling does the same)
cat >"$WORK/requeue.sh" <<'EOF'
#!/bin/bash
echo "run ${SLURM_RESTART_COUNT:-0}"
if [[ ${SLURM_RESTART_COUNT:-0} == 0 ]]; then
	scontrol requeue "$SLURM_JOB_ID"
	sleep 60  # the requeue ends this run
	exit 1
fi
echo "requeued once, done"
EOF
id=$(sbatch --parsable --requeue -J slurm-check-requeue -t 5 --open-mode=append -o "$WORK/requeue.out" \
	"$WORK/requeue.sh")
say "submitted self-requeueing job $id"
check requeue "$id" "$WORK/requeue.out" "requeued once, done"
# sacct -D lists every run of a requeued job: one REQUEUED, then the COMPLETED one
runs=$(sacct -n -X -D -P -j "$id" --format=State | tr '\n' ' ')
if [[ $runs != "REQUEUED COMPLETED " ]] || ! grep -qx "run 1" "$WORK/requeue.out"; then
	say "FAILED: requeue job $id: expected one requeue then completion; sacct -D says: $runs; output:"
	cat "$WORK/requeue.out" >&2
	exit 1
fi
say "all checks passed"
