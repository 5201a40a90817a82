#!/bin/sh
# Stand-in for the official runner's /home/runner/run.sh (docs/github.md §8), talking
# to gantryd's GitHub emulator (agent/emulator/broker.py) with busybox wget.
#
# Contract kept from the real one:
# - the JIT config comes from env ACTIONS_RUNNER_INPUT_JITCONFIG (or --jitconfig VALUE) and the
#   variable is removed from the environment before anything else runs (§8.2);
# - one job, then exit (a JIT runner is single-use, §8.2);
# - exit status 0 whether the job succeeded or failed, and also for an unusable config or a
#   session conflict; GitHub tells the job's result, not the exit code (§8.3);
# - SIGTERM/SIGINT stop it (RUNNER_MANUALLY_TRAP_SIG): a running job is killed and reported.
# Works on a read-only root filesystem: everything is written under $HOME/<workFolder>, or
# /tmp/<workFolder> when $HOME is not writable.
set -u

jit="${ACTIONS_RUNNER_INPUT_JITCONFIG:-}"
unset ACTIONS_RUNNER_INPUT_JITCONFIG
while [ $# -gt 0 ]; do
    case "$1" in
        --jitconfig) shift; jit="${1:-}"; [ $# -gt 0 ] && shift ;;
        --jitconfig=*) jit="${1#*=}"; shift ;;
        *) shift ;;
    esac
done

say() { echo "$(date -u '+%Y-%m-%d %H:%M:%SZ'): $*"; }

if [ -z "$jit" ]; then
    say "No JIT config: set ACTIONS_RUNNER_INPUT_JITCONFIG or pass --jitconfig" >&2
    exit 0
fi

# field NAME JSON: the string value of "NAME" in one line of compact JSON.
field() {
    printf '%s' "$2" | sed -n 's/.*"'"$1"'" *: *"\([^"]*\)".*/\1/p'
}

files=$(printf '%s' "$jit" | base64 -d 2>/dev/null)
unset jit
runner=$(field '\.runner' "$files" | base64 -d 2>/dev/null)
credentials=$(field '\.credentials' "$files" | base64 -d 2>/dev/null)
unset files
server=$(field serverUrl "$runner")
name=$(field agentName "$runner")
folder=$(field workFolder "$runner")
token=$(field token "$credentials")
unset credentials
if [ -z "$server" ] || [ -z "$token" ]; then
    say "The JIT config could not be decoded" >&2
    exit 0
fi

base="${HOME:-/home/runner}/${folder:-_work}"
if ! mkdir -p "$base" 2>/dev/null || ! [ -w "$base" ]; then
    base="/tmp/${folder:-_work}"
    mkdir -p "$base" || { say "No writable work folder (home or /tmp)" >&2; exit 0; }
fi
state=$(mktemp -d "$base/.runner.XXXXXX")
log="$state/log"
auth="Authorization: Bearer $token"
session=""
child=""
job_id=""

# call OUT METHOD_ARGS... URL: wget into file OUT; HTTP errors are left in $state/err.
call() {
    out=$1
    shift
    wget -q -O "$out" --header "$auth" "$@" 2>"$state/err"
}

# gone: the last call failed because GitHub no longer knows this runner or session.
gone() {
    grep -q 'HTTP/1\.[01] 40[14] ' "$state/err"
}

stop() {
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
        wait "$child" 2>/dev/null
    fi
    if [ -n "$job_id" ]; then
        call /dev/null --post-file "$log" "$server/jobs/$job_id/result?exit_code=143"
    elif [ -n "$session" ]; then
        call /dev/null --post-data '' "$server/sessions/$session/close"
    fi
    say "Runner stopped by signal"
    rm -rf "$state"
    exit 0
}
trap stop TERM INT

# Open the session (the runner is online from now on); retry while the server is unreachable.
tries=0
until call "$state/session" --header 'Content-Type: application/json' \
    --post-data '{"os":"Linux"}' "$server/sessions"; do
    if grep -q 'HTTP/1\.[01] 409 ' "$state/err"; then
        say "A session for this runner already exists (session conflict)" >&2
        exit 0
    fi
    if gone; then
        say "The runner registration is gone (deleted, or the JIT config was used)" >&2
        exit 0
    fi
    tries=$((tries + 1))
    [ "$tries" -lt 30 ] || { say "Cannot reach $server: $(cat "$state/err")" >&2; exit 0; }
    sleep 1
done
session=$(field sessionId "$(cat "$state/session")")
say "Runner $name connected to GitHub (stand-in) at $server"
say "Listening for Jobs"

# Long-poll for one job (each poll ends with 204 and an empty body when nothing came).
failures=0
while :; do
    call "$state/message" "$server/sessions/$session/message" &
    child=$!
    if wait "$child"; then
        child=""
        failures=0
        message=$(cat "$state/message")
        [ -n "$message" ] && break
        continue
    fi
    child=""
    if gone; then
        say "The runner was removed from GitHub" >&2
        exit 0
    fi
    failures=$((failures + 1))
    [ "$failures" -lt 30 ] || { say "Lost the connection to $server" >&2; exit 0; }
    sleep 1
done

job_id=$(printf '%s' "$message" | sed -n 's/.*"job_id" *: *\([0-9]*\).*/\1/p')
work="$base/job-$job_id"
mkdir -p "$work"
field script "$message" | base64 -d >"$state/script.sh"
say "Running job $job_id"
(
    cd "$work" || exit 1
    export CI=true GITHUB_ACTIONS=true RUNNER_NAME="$name" RUNNER_TEMP="$state" \
        GITHUB_WORKSPACE="$work"
    exec sh "$state/script.sh"
) </dev/null >"$log" 2>&1 &
child=$!
wait "$child"
code=$?
child=""
cat "$log"
if [ "$code" -eq 0 ]; then result=Succeeded; else result=Failed; fi
say "Job $job_id completed with result: $result (exit code $code)"

# Report the result, retrying while the server is unreachable.
tries=0
until call /dev/null --post-file "$log" "$server/jobs/$job_id/result?exit_code=$code"; do
    gone && break
    tries=$((tries + 1))
    [ "$tries" -lt 30 ] || break
    sleep 1
done
rm -rf "$state" "$work"
exit 0
