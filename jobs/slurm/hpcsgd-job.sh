#!/bin/bash
# The body of every hpcsgd sbatch script (jobs/slurm/*.sbatch exec it, so it runs as
# the batch shell and receives Slurm's --signal=B:USR1@margin warning).
#
#   hpcsgd-job.sh CONFIG.toml [RUN_DIR]        (inside an allocation)
#
# - A run directory that already holds checkpoints (a requeued job, SLURM_RESTART_COUNT
#   > 0, or a resubmission) is resumed from its newest valid checkpoint; otherwise the
#   config is trained from scratch into RUN_DIR (default runs/<config stem>).
# - USR1 (the time-limit warning): ask hpcsgd for a checkpoint with a STOP file in the
#   run directory, wait for the job to exit, then `scontrol requeue` it.  TERM (scancel,
#   the time limit itself) reaches every rank directly; hpcsgd checkpoints and exits and
#   this script does not requeue.  Exit status 4 (a worker stopped answering:
#   run.worker_timeout) requeues too, at most HPCSGD_MAX_REQUEUES times (default 3).
# - Threads per rank come from --cpus-per-task; HDF5 file locking is off (network file
#   systems); the launcher is the venv's mpiexec (HPCSGD_LAUNCH=srun for srun --mpi=pmi2).
# - Several nodes (--nodes > 1): rank 0, the master, runs alone on the first node and the
#   workers are spread evenly over the others (hpcsgd.placement; HPCSGD_PER_NODE sets
#   workers per node; HPCSGD_PLACEMENT=slurm keeps Slurm's own task layout).  Numba
#   compiles into a cache per host name, so nodes sharing a home directory do not share
#   one.
set -u
CONFIG=${1:?usage: hpcsgd-job.sh CONFIG.toml [RUN_DIR]}
RUN=${2:-runs/$(basename "$CONFIG" .toml)}
ROOT=${HPCSGD_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
BIN=${HPCSGD_BIN:-$ROOT/.venv/bin}
log() { echo "[hpcsgd-job] $(date '+%F %T') $*"; }

export NUMBA_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export HDF5_USE_FILE_LOCKING=${HDF5_USE_FILE_LOCKING:-FALSE}
NTASKS=${SLURM_NTASKS:?not inside a Slurm allocation (SLURM_NTASKS is unset)}
export HPCSGD_NTASKS=$NTASKS   # hpcsgd checks its world size against it

mkdir -p "$RUN" || exit 2
requested=0
trap 'requested=1; touch "$RUN/STOP"; log "USR1 (time limit near): asked for a checkpoint"' USR1

if compgen -G "$RUN/ckpt-*.h5" > /dev/null; then
  log "resuming $RUN (restart count ${SLURM_RESTART_COUNT:-0})"
  args=(resume "$RUN")
else
  log "training $CONFIG into $RUN"
  args=(train "$CONFIG" --set "run.out='$RUN'")
fi
launch=(-n "$NTASKS")
if [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ] && [ "${HPCSGD_PLACEMENT:-master-alone}" != slurm ]; then
  # shellcheck disable=SC2046 # one word per node
  place=("$BIN/python" -m hpcsgd.placement --ranks "$NTASKS" ${HPCSGD_PER_NODE:+--per-host "$HPCSGD_PER_NODE"}
         $(scontrol show hostnames "$SLURM_JOB_NODELIST"))
  hosts=$("${place[@]}") || exit 2
  log "placement: $hosts (the master alone on the first node)"
  if [ "${HPCSGD_LAUNCH:-mpiexec}" = srun ]; then
    SLURM_HOSTFILE=$(mktemp "${TMPDIR:-/tmp}/hpcsgd-hosts.XXXXXX") || exit 2
    "${place[@]}" --hostfile > "$SLURM_HOSTFILE" || exit 2
    export SLURM_HOSTFILE
    launch+=(--distribution=arbitrary)
  else
    launch+=(-hosts "$hosts")
  fi
fi
if [ "${HPCSGD_LAUNCH:-mpiexec}" = srun ]; then
  srun --mpi=pmi2 "${launch[@]}" "$BIN/python" -m hpcsgd "${args[@]}" &
else
  "$BIN/mpiexec" "${launch[@]}" "$BIN/python" -m hpcsgd "${args[@]}" &
fi
pid=$!
# `wait` returns early when a trapped signal arrives: wait again until the job is gone
while :; do
  wait "$pid"
  status=$?
  kill -0 "$pid" 2> /dev/null || break
done
log "hpcsgd exited with status $status"
[ -n "${SLURM_HOSTFILE:-}" ] && rm -f "$SLURM_HOSTFILE"
if [ "$requested" = 1 ] && [ "$status" = 0 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  log "requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
elif [ "$status" = 4 ] && [ -n "${SLURM_JOB_ID:-}" ] \
     && [ "${SLURM_RESTART_COUNT:-0}" -lt "${HPCSGD_MAX_REQUEUES:-3}" ]; then
  # a worker stopped answering (a hung or dead node): go on from the last checkpoint
  # in a new allocation, a bounded number of times
  log "a worker did not answer; requeueing job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0} of ${HPCSGD_MAX_REQUEUES:-3})"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
