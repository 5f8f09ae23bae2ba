# Sourced by the launchers in scripts/ (not run on its own): the original's environment variables,
# the gradient accumulation that keeps the original's effective batch, paths and the usage message.
#
# Environment, as in the original's scripts, except the GPUS default:
#   GPUS           GPUs to train on; default: the GPUs this machine has (torch.cuda.device_count(),
#                  else the lines of nvidia-smi -L), 1 on a machine without GPUs (the original: 8)
#   GPUS_PER_NODE  processes started on this machine; default GPUS, at most 8 (as the original)
#   PORT           port the processes meet on (default 29500)
#   CPUS_PER_TASK  CPU threads per process (OMP_NUM_THREADS; the original gave it to Slurm);
#                  default: the launcher's (1)
#   ACCUM_ITER     gradient accumulation; default 8 / GPUS_PER_NODE, the original's 8 GPUs' batch
#
# Defines REPO_ROOT; output_dir_and_weights_arguments OUTPUT_DIR and WEIGHTS; launch_settings GPUS,
# GPUS_PER_NODE, PORT, ACCUM_ITER.

REPO_ROOT=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The original trained every recipe on 8 GPUs; the batch per GPU is in each script's flags.
ORIGINAL_GPUS=8
DEFAULT_PORT=29500

# The comment block at the top of the running script (after the #! line), without the "# ".
usage() {
    awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0" >&2
}

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# The output directory argument ($1 of every script): missing, a flag or a bare number is a usage error.
check_output_dir_argument() {
    if (( $# == 0 )) || [[ $1 == --* || -z $1 ]]; then
        usage
        exit 1
    fi
    if [[ $1 =~ ^[0-9]+$ ]]; then
        die "the first argument is OUTPUT_DIR, not a GPU count: the GPU count comes from the environment, as in" \
            "the original: GPUS=$1 $0 ${*:2}"
    fi
}

# $1 as an absolute path (relative paths are relative to the directory the script was started from).
absolute() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

# The weights argument: an existing file, as an absolute path; a missing one or a flag is a usage error.
weights_argument() {
    if [[ -z ${1:-} || $1 == --* ]]; then
        usage
        exit 1
    fi
    [[ -f $1 ]] || die "weights file $1 does not exist"
    absolute "$1"
}

# OUTPUT_DIR and WEIGHTS, absolute, from the script's arguments OUTPUT_DIR WEIGHTS [...] (the caller
# then shifts them off); a missing or misplaced argument is a usage error.
output_dir_and_weights_arguments() {
    check_output_dir_argument "$@"
    OUTPUT_DIR=$(absolute "$1")
    WEIGHTS=$(weights_argument "${2:-}")
}

detect_gpus() {
    local count
    # torch counts the GPUs this process may use (it honours CUDA_VISIBLE_DEVICES); nvidia-smi if torch is absent.
    if count=$(python3 -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null) && [[ $count =~ ^[0-9]+$ ]]; then
        :
    elif ! count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU '); then
        count=0
    fi
    echo $(( count > 0 ? count : 1 ))
}

positive_integer() {  # name value
    [[ $2 =~ ^[0-9]+$ ]] && (( $2 > 0 )) || die "$1 must be a positive integer, got '$2'"
}

# GPUS, GPUS_PER_NODE, PORT and ACCUM_ITER from the environment or their defaults; CPUS_PER_TASK.
launch_settings() {
    GPUS=${GPUS:-$(detect_gpus)}
    positive_integer GPUS "$GPUS"
    GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < ORIGINAL_GPUS ? GPUS : ORIGINAL_GPUS ))}
    positive_integer GPUS_PER_NODE "$GPUS_PER_NODE"
    PORT=${PORT:-$DEFAULT_PORT}
    positive_integer PORT "$PORT"
    ACCUM_ITER=${ACCUM_ITER:-$(( ORIGINAL_GPUS / GPUS_PER_NODE > 0 ? ORIGINAL_GPUS / GPUS_PER_NODE : 1 ))}
    positive_integer ACCUM_ITER "$ACCUM_ITER"
    if [[ -n ${CPUS_PER_TASK:-} ]]; then
        positive_integer CPUS_PER_TASK "$CPUS_PER_TASK"
        export OMP_NUM_THREADS=$CPUS_PER_TASK
    fi
    echo "$(basename "$0"): $GPUS_PER_NODE process(es) (GPUS=$GPUS), --accum_iter $ACCUM_ITER, port $PORT" >&2
    if (( GPUS_PER_NODE * ACCUM_ITER != ORIGINAL_GPUS )); then
        echo "$(basename "$0"): note: $GPUS_PER_NODE processes x --accum_iter $ACCUM_ITER is not the original's" \
             "$ORIGINAL_GPUS GPUs' batch (set ACCUM_ITER to choose)" >&2
    fi
}

# main.py in GPUS_PER_NODE processes (the launcher sets LOCAL_RANK etc. in the environment).
train() {
    python3 -m torch.distributed.run --nproc_per_node "$GPUS_PER_NODE" --master_port "$PORT" "$REPO_ROOT/main.py" "$@"
}

# An inference script of the repository ($1) on GPUS_PER_NODE GPUs; a later --ngpu in the arguments wins.
predict() {
    local script=$1
    shift
    python3 "$REPO_ROOT/$script" --ngpu "$GPUS_PER_NODE" "$@"
}
