# Shared by the bench scripts (compare, durability, footprint, profile):
# sourced after `set -euo pipefail` and ROOT. What each script needs from
# the machine is the same: a scratch directory cleaned up on exit, child
# processes stopped on exit, a mosquitto on a free port, a built wasmgate.

MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$ROOT/bench/results"

say() { printf '== %s\n' "$*" >&2; }

# Children to stop and directories to remove when the script exits, however.
PIDS=()
SCRATCH=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${#SCRATCH[@]}" -gt 0 ]; then rm -rf "${SCRATCH[@]}"; fi
}
trap cleanup EXIT

# scratch VAR DIR-TEMPLATE: sets VAR to a new directory (a mktemp template),
# removed on exit. (Not `VAR=$(scratch ..)`: a subshell could not register it.)
scratch() {
    local dir
    dir=$(mktemp -d "$2")
    SCRATCH+=("$dir")
    printf -v "$1" '%s' "$dir"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for FILE PATTERN: until FILE has a line matching PATTERN (30 s at most).
wait_for() {
    local file=$1 pattern=$2
    for _ in $(seq 300); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "gave up waiting for '$pattern' in $file:" >&2
    cat "$file" >&2
    return 1
}

# wasmgate_binary: sets WG to $WASMGATE if given, else builds the release
# binary as it ships (boards/link-ordered.sh: the functions a gateway runs
# laid out together) into CARGO_TARGET_DIR.
wasmgate_binary() {
    if [ -n "${WASMGATE:-}" ]; then
        WG=$WASMGATE
        say "using the prebuilt $WG"
    else
        say "building wasmgate (release, link-ordered) into $CARGO_TARGET_DIR"
        local built copy_dir
        built=$("$ROOT/boards/link-ordered.sh" | tail -1)
        # A copy: another build in the same target dir replaces cargo's
        # file, and every run of a script must measure the same binary.
        scratch copy_dir /var/tmp/wasmgate-bin.XXXXXX
        cp "$built" "$copy_dir/wasmgate"
        WG="$copy_dir/wasmgate"
    fi
}

# start_mosquitto DIR [CONFIG-LINES]: a non-persistent, anonymous mosquitto
# on a free loopback port, its config and log in DIR; sets PORT, MOSQ (pid)
# and BROKER (host:port). Fails if it is not listening within 10 s.
start_mosquitto() {
    local dir=$1 extra=${2:-}
    PORT=$(free_port)
    cat > "$dir/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
# As root (containers) mosquitto would switch to the mosquitto user; harmless otherwise.
user root
persistence false
log_dest file $dir/mosquitto.log
$extra
CONF
    "$MOSQUITTO" -c "$dir/mosquitto.conf" &
    MOSQ=$!
    PIDS+=("$MOSQ")
    BROKER="127.0.0.1:$PORT"
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "mosquitto is not listening on $BROKER:" >&2
    cat "$dir/mosquitto.log" >&2
    return 1
}

# vending_function QOS: the [[functions]] table the comparisons run: the
# vending example (WASM), alerts to the local broker, summaries "upstream"
# (also the local broker, as no [upstream] is configured).
vending_function() {
    cat <<TOML
[[functions]]
name = "vending"
wasm = "$WASM"
triggers = [{ mqtt = "vending/+/telemetry", qos = $1 }]

[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/#"]

[functions.config]
max_temp_c = "8"
TOML
}

# enrich_function QOS: the [[functions]] table of the enrichment workload:
# telemetry-enrich (WASM), each device's object forwarded "upstream" (the
# local broker, as no [upstream] is configured) with three fields added.
enrich_function() {
    cat <<TOML
[[functions]]
name = "enrich"
wasm = "$ENRICH_WASM"
triggers = [{ mqtt = "vending/+/telemetry", qos = $1 }]

[functions.grants]
upstream = ["telemetry/#"]

[functions.config]
site = "bench"
TOML
}

# node_red_install: sets NR_JS (Node-RED's red.js, installed once into
# NODE_RED_DIR with npm and reused afterwards) and NR_VERSION, or leaves
# both empty with a line saying why (NODE_RED=0, no node or npm, npm failed).
node_red_install() {
    NR_JS=""
    NR_VERSION=""
    if [ "${NODE_RED:-1}" = 0 ]; then
        say "Node-RED: skipped (NODE_RED=0)"
        return 0
    fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        say "Node-RED: skipped (node or npm not found; install Node.js >= 18 to include it)"
        return 0
    fi
    NR_JS="$NODE_RED_DIR/node_modules/node-red/red.js"
    if [ ! -f "$NR_JS" ]; then
        say "Node-RED: npm install --prefix $NODE_RED_DIR node-red"
        mkdir -p "$NODE_RED_DIR"
        if ! npm install --prefix "$NODE_RED_DIR" --no-audit --no-fund node-red >&2; then
            say "Node-RED: skipped (npm install failed)"
            NR_JS=""
            return 0
        fi
    fi
    NR_VERSION=$(node -p "require('$NODE_RED_DIR/node_modules/node-red/package.json').version")
    say "Node-RED $NR_VERSION on node $(node --version)"
}

# node_red_settings FILE PORT NODE_ROOT: a Node-RED settings.js for a
# benchmark: no editor, no admin API, context in memory, the runtime's HTTP
# server on localhost:PORT serving the flows' HTTP nodes at NODE_ROOT
# (`"/"`, or `false` for none).
node_red_settings() {
    cat > "$1" <<JS
// Generated by the bench scripts: no editor, no admin API.
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: $2,
    httpAdminRoot: false,
    httpNodeRoot: $3,
    disableEditor: true,
    flowFile: "flows.json",
    credentialSecret: false,
    contextStorage: { default: { module: "memory" } },
    diagnostics: { enabled: false },
    runtimeState: { enabled: false },
    telemetry: { enabled: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
};
JS
}

