#!/usr/bin/env bash
# Starts the speech server container (UI, API and OpenAI-compatible speech on one port) on one GPU.
# Run with --help for the settings; docs/deployment.md explains them, the volumes and troubleshooting.
set -euo pipefail

# ---- settings: edit here, or set them in the environment (PORT=7861 ./start_unified_container.sh) ----
PROJECT_DIR="${PROJECT_DIR:-$HOME/Step-Audio-EditX}"  # your Step-Audio-EditX checkout, with the weights in models/
GPU_ID="${GPU_ID:-0}"                                 # host GPU index (or GPU-UUID) given to the container
PORT="${PORT:-7860}"                                  # host port for UI and API
IDLE_TIMEOUT="${IDLE_TIMEOUT:-300}"                   # seconds a model may sit unused before it is unloaded
# ---- optional ----
IMAGE="${IMAGE:-step-audio-unified:latest}"           # built with: docker build -t step-audio-unified:latest .
DATA_DIR="${DATA_DIR:-}"                              # host folder for uploaded voices (default: beside PROJECT_DIR)
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-180}"               # seconds to wait for /healthz after docker run
API_KEY="${API_KEY:-}"                                # passed to the container by name only, never printed

readonly CONTAINER_NAME=step-audio-unified
readonly CONTAINER_UID=1000  # the image's non-root user (Dockerfile: APP_UID)
readonly CONTAINER_GID=1000
readonly CONTAINER_PORT=7860

# Exit codes, one per failed check.
readonly EXIT_USAGE=2       # unknown option or invalid setting
readonly EXIT_DOCKER=3      # docker missing, or its engine not reachable
readonly EXIT_PROJECT=4     # PROJECT_DIR missing or unreadable
readonly EXIT_MODELS=5      # PROJECT_DIR/models missing, not a folder, or unreadable
readonly EXIT_PORT=6        # PORT already in use
readonly EXIT_GPU=7         # nvidia-smi missing, or no GPU with GPU_ID
readonly EXIT_DATA=8        # DATA_DIR not a folder, or cannot be created
readonly EXIT_IMAGE=9       # IMAGE not found locally
readonly EXIT_START=10      # docker run failed, or the container did not become healthy in time

usage() {
    cat <<EOF
Usage: $(basename "$0") [--dry-run] [--help]

Checks the host, then runs the speech server image as container '${CONTAINER_NAME}' on one GPU
(replacing an older container of that name) and waits until /healthz answers.

Options:
  --dry-run   check the settings and folders, then print the docker commands instead of running them;
              the checks that need a Docker engine or a GPU are skipped (and say so)
  -h, --help  this text

Settings (environment variables; defaults in brackets):
  PROJECT_DIR     Step-Audio-EditX checkout with the weights in models/ [\$HOME/Step-Audio-EditX]
                  mounted read-only: models/ at /models, the checkout at /step-audio
  GPU_ID          host GPU index or UUID; inside the container it is device 0 [0]
  PORT            host port for UI and API [7860]
  IDLE_TIMEOUT    seconds a model may sit unused before it is unloaded; negative: never [300]
  IMAGE           image to run [step-audio-unified:latest]
  DATA_DIR        host folder for uploaded voices, mounted read-write at /data [PROJECT_DIR/../step-audio-data]
                  must be writable by uid ${CONTAINER_UID} (the container's user)
  API_KEY         passed to the container if set (by name: the value is never printed)
  HEALTH_TIMEOUT  seconds to wait for /healthz [180]

Exit codes: 0 started (or printed), ${EXIT_USAGE} usage/setting, ${EXIT_DOCKER} docker, ${EXIT_PROJECT} PROJECT_DIR, \
${EXIT_MODELS} models/, ${EXIT_PORT} port in use,
${EXIT_GPU} GPU, ${EXIT_DATA} DATA_DIR, ${EXIT_IMAGE} image missing, ${EXIT_START} start or health check failed.
EOF
}

say() { printf '%s\n' "$*"; }
fail() {
    local code=$1
    shift
    printf 'error: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do printf '       %s\n' "$line" >&2; done
    exit "$code"
}

# Prints a command as a line to copy and paste: words with shell metacharacters in single quotes.
show_command() {
    local word line=""
    for word in "$@"; do
        if ! [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            word="'${word//\'/\'\\\'\'}'"
        fi
        line+=" $word"
    done
    say " $line"
}

# Runs a command, or prints it in a dry run.
run_or_show() {
    if [ "$DRY_RUN" = 1 ]; then
        show_command "$@"
    else
        "$@"
    fi
}

DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            fail "$EXIT_USAGE" "unknown option: $1"
            ;;
    esac
    shift
done

# ---- settings ----
if ! [[ "$PORT" =~ ^[1-9][0-9]{0,4}$ ]] || [ "$PORT" -gt 65535 ]; then
    fail "$EXIT_USAGE" "PORT must be a number from 1 to 65535, got '$PORT'"
fi
[[ "$GPU_ID" =~ ^([0-9]+|GPU-[0-9a-fA-F-]+)$ ]] ||
    fail "$EXIT_USAGE" "GPU_ID must be one GPU's index (0, 1, ...) or UUID (GPU-...), got '$GPU_ID'"
[[ "$IDLE_TIMEOUT" =~ ^-?[0-9]+([.][0-9]+)?$ ]] ||
    fail "$EXIT_USAGE" "IDLE_TIMEOUT must be a number of seconds (negative: never unload), got '$IDLE_TIMEOUT'"
[[ "$HEALTH_TIMEOUT" =~ ^[0-9]+$ ]] ||
    fail "$EXIT_USAGE" "HEALTH_TIMEOUT must be a whole number of seconds, got '$HEALTH_TIMEOUT'"
[ -n "$IMAGE" ] || fail "$EXIT_USAGE" "IMAGE must not be empty"

# Whether the container's user (uid/gid 1000, no other groups) may list and read a folder, from its mode bits.
container_can_read() {
    local owner group mode
    read -r owner group mode < <(stat -c '%u %g %a' "$1")
    mode=$((8#$mode))
    if [ "$owner" = "$CONTAINER_UID" ]; then
        [ $((mode & 8#500)) = $((8#500)) ]
    elif [ "$group" = "$CONTAINER_GID" ]; then
        [ $((mode & 8#050)) = $((8#050)) ]
    else
        [ $((mode & 8#005)) = $((8#005)) ]
    fi
}

container_can_write() {
    local owner group mode
    read -r owner group mode < <(stat -c '%u %g %a' "$1")
    mode=$((8#$mode))
    if [ "$owner" = "$CONTAINER_UID" ]; then
        [ $((mode & 8#300)) = $((8#300)) ]
    elif [ "$group" = "$CONTAINER_GID" ]; then
        [ $((mode & 8#030)) = $((8#030)) ]
    else
        [ $((mode & 8#003)) = $((8#003)) ]
    fi
}

# ---- the checkout and its models ----
[ -e "$PROJECT_DIR" ] || fail "$EXIT_PROJECT" "PROJECT_DIR does not exist: $PROJECT_DIR" \
    "set PROJECT_DIR to your Step-Audio-EditX checkout, e.g. PROJECT_DIR=/srv/Step-Audio-EditX $0"
[ -d "$PROJECT_DIR" ] || fail "$EXIT_PROJECT" "PROJECT_DIR is not a folder: $PROJECT_DIR"
[[ -r "$PROJECT_DIR" && -x "$PROJECT_DIR" ]] || fail "$EXIT_PROJECT" "PROJECT_DIR is not readable by you: $PROJECT_DIR"
PROJECT_DIR="$(cd "$PROJECT_DIR" && pwd -P)"
container_can_read "$PROJECT_DIR" || fail "$EXIT_PROJECT" \
    "PROJECT_DIR is not readable by the container's user (uid $CONTAINER_UID): $PROJECT_DIR" \
    "let others read it: chmod o+rx '$PROJECT_DIR'"
say "ok: PROJECT_DIR $PROJECT_DIR"

MODELS_DIR="$PROJECT_DIR/models"
[ -e "$MODELS_DIR" ] || fail "$EXIT_MODELS" "models folder does not exist: $MODELS_DIR" \
    "download the weights into it (Step-Audio-Tokenizer/, Step-Audio-EditX/, ...): see docs/deployment.md"
[ -d "$MODELS_DIR" ] || fail "$EXIT_MODELS" "models is not a folder: $MODELS_DIR"
[[ -r "$MODELS_DIR" && -x "$MODELS_DIR" ]] || fail "$EXIT_MODELS" "models folder is not readable by you: $MODELS_DIR"
container_can_read "$MODELS_DIR" || fail "$EXIT_MODELS" \
    "models folder is not readable by the container's user (uid $CONTAINER_UID): $MODELS_DIR" \
    "let others read it: chmod -R o+rX '$MODELS_DIR'"
say "ok: models $MODELS_DIR"

# ---- the data folder (uploaded voices) ----
if [ -z "$DATA_DIR" ]; then
    DATA_DIR="$(dirname "$PROJECT_DIR")/step-audio-data"
fi
CREATE_DATA_DIR=0
if [ -e "$DATA_DIR" ]; then
    [ -d "$DATA_DIR" ] || fail "$EXIT_DATA" "DATA_DIR is not a folder: $DATA_DIR"
    DATA_DIR="$(cd "$DATA_DIR" && pwd -P)"
    if container_can_write "$DATA_DIR"; then
        say "ok: DATA_DIR $DATA_DIR"
    else
        say "warning: DATA_DIR is not writable by the container's user (uid $CONTAINER_UID): $DATA_DIR"
        say "         uploading voices will fail until you run: sudo chown $CONTAINER_UID:$CONTAINER_GID '$DATA_DIR'"
    fi
else
    parent="$(dirname "$DATA_DIR")"
    [[ -d "$parent" && -w "$parent" ]] || fail "$EXIT_DATA" "DATA_DIR cannot be created: $DATA_DIR" \
        "its parent folder is missing or not writable by you; create it, or set DATA_DIR"
    DATA_DIR="$(cd "$parent" && pwd -P)/$(basename "$DATA_DIR")"
    CREATE_DATA_DIR=1
    say "ok: DATA_DIR $DATA_DIR (will be created)"
fi

# ---- Docker, the GPU and the image ----
if [ "$DRY_RUN" = 1 ]; then
    say "skipped: docker engine check (dry run)"
    say "skipped: GPU check (dry run)"
    say "skipped: image check (dry run)"
else
    command -v docker >/dev/null 2>&1 || fail "$EXIT_DOCKER" "docker not found on PATH" \
        "install Docker Engine and the NVIDIA Container Toolkit"
    docker_error="$(docker info 2>&1 >/dev/null)" || fail "$EXIT_DOCKER" "cannot reach the Docker engine" \
        "${docker_error%%$'\n'*}" "is the daemon running, and may you use it (docker group)?"
    say "ok: docker engine"

    command -v nvidia-smi >/dev/null 2>&1 || fail "$EXIT_GPU" "nvidia-smi not found: no NVIDIA driver on this host?"
    gpu_line="$(nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader -i "$GPU_ID" 2>&1)" ||
        fail "$EXIT_GPU" "no GPU with GPU_ID=$GPU_ID" "${gpu_line%%$'\n'*}" \
        "the GPUs here: nvidia-smi --query-gpu=index,name --format=csv"
    say "ok: GPU $gpu_line"

    docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "$EXIT_IMAGE" "image not found: $IMAGE" \
        "build it: docker build -t $IMAGE ."
    say "ok: image $IMAGE"
fi

# ---- replace an older container, then check the port ----
# The old container is removed first: it may be the one holding the port.
if [ "$DRY_RUN" = 1 ]; then
    say "would remove an existing container named $CONTAINER_NAME:"
    show_command docker rm -f "$CONTAINER_NAME"
elif docker container inspect "$CONTAINER_NAME" >/dev/null 2>&1; then
    say "removing the existing container $CONTAINER_NAME"
    docker rm -f "$CONTAINER_NAME" >/dev/null
fi

port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
    else
        # Without ss: a connection that succeeds means something listens there.
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
if port_in_use "$PORT"; then
    hint="see what holds it: ss -ltnp 'sport = :$PORT'; or choose another: PORT=$((PORT + 1)) $0"
    if [ "$DRY_RUN" = 1 ]; then
        hint="$hint (a real run first removes an old $CONTAINER_NAME container, which may be what holds it)"
    fi
    fail "$EXIT_PORT" "port $PORT is already in use" "$hint"
fi
say "ok: port $PORT is free"

# ---- run ----
# One field of docker's --mount option, which is CSV: quoted if it holds a comma or a double quote.
mount_field() {
    local field=$1
    if [[ "$field" == *[,\"]* ]]; then
        field="\"${field//\"/\"\"}\""
    fi
    printf '%s' "$field"
}
run_args=(
    docker run -d
    --name "$CONTAINER_NAME"
    --gpus "device=$GPU_ID"
    -p "$PORT:$CONTAINER_PORT"
    --mount "type=bind,$(mount_field "source=$MODELS_DIR"),target=/models,readonly"
    --mount "type=bind,$(mount_field "source=$PROJECT_DIR"),target=/step-audio,readonly"
    --mount "type=bind,$(mount_field "source=$DATA_DIR"),target=/data"
    -e "IDLE_TIMEOUT=$IDLE_TIMEOUT"
    --restart unless-stopped
    --stop-timeout 30
    --log-opt max-size=100m
    --log-opt max-file=3
)
if [ -n "$API_KEY" ]; then
    export API_KEY
    run_args+=(-e API_KEY)  # by name: docker copies the value from this environment
fi
run_args+=("$IMAGE")

if [ "$CREATE_DATA_DIR" = 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        say "would create DATA_DIR:"
    fi
    run_or_show mkdir -p "$DATA_DIR"
    if [ "$(id -u)" = 0 ]; then
        # run as root: hand the new folder to the container's user
        run_or_show chown "$CONTAINER_UID:$CONTAINER_GID" "$DATA_DIR"
    elif [ "$DRY_RUN" = 0 ] && ! container_can_write "$DATA_DIR"; then
        say "warning: DATA_DIR is not writable by the container's user (uid $CONTAINER_UID): $DATA_DIR"
        say "         uploading voices will fail until you run: sudo chown $CONTAINER_UID:$CONTAINER_GID '$DATA_DIR'"
    fi
fi
if [ "$DRY_RUN" = 1 ]; then
    say "would run:"
    show_command "${run_args[@]}"
    say "then wait up to ${HEALTH_TIMEOUT}s for http://localhost:$PORT/healthz"
else
    say "starting $CONTAINER_NAME from $IMAGE"
    container_id="$("${run_args[@]}")" || fail "$EXIT_START" "docker run failed (its message is above)" \
        "'could not select device driver' means the NVIDIA Container Toolkit is missing"
    say "container ${container_id:0:12}; waiting up to ${HEALTH_TIMEOUT}s for /healthz"

    healthy() {
        if command -v curl >/dev/null 2>&1; then
            curl -fsS -o /dev/null -m 3 "http://127.0.0.1:$PORT/healthz" 2>/dev/null
        else
            [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CONTAINER_NAME")" = healthy ]
        fi
    }
    deadline=$((SECONDS + HEALTH_TIMEOUT))
    until healthy; do
        state="$(docker inspect -f '{{.State.Status}}' "$CONTAINER_NAME" 2>/dev/null || echo missing)"
        if [ "$state" != running ] && [ "$state" != created ]; then
            say "the container is $state; its last log lines:" >&2
            docker logs --tail 40 "$CONTAINER_NAME" >&2 || true
            fail "$EXIT_START" "$CONTAINER_NAME did not start" "full log: docker logs $CONTAINER_NAME"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "$EXIT_START" "no answer from http://localhost:$PORT/healthz after ${HEALTH_TIMEOUT}s" \
                "the container is still running; see: docker logs $CONTAINER_NAME"
        fi
        sleep 2
    done
    say "ok: healthy"
fi

cat <<EOF

UI       http://localhost:$PORT/
API docs http://localhost:$PORT/docs
health   http://localhost:$PORT/healthz
models   http://localhost:$PORT/api/v1/models/status
logs     docker logs -f $CONTAINER_NAME
(from other machines: http://${HOSTNAME:-this-host}:$PORT/)
EOF
