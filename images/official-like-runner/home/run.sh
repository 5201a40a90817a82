#!/bin/bash
# Stand-in for the official runner's /home/runner/run.sh, with the same behaviour (read in
# actions/runner: src/Misc/layoutroot/run.sh; written anew here, not copied):
# - every loop copies run-helper.sh.template over run-helper.sh next to this script, a write into
#   /home/runner: on a read-only /home/runner the copy fails, run-helper.sh does not exist, the
#   shell answers 127 and run.sh exits 127;
# - helper exit 2 means "relaunch" (the template turns Listener exits 2, 3 and 4 into 2);
#   exit 7 is passed out only when ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE is "1";
#   with RUNNER_MANUALLY_TRAP_SIG any other code is passed out as is, without it run.sh exits 0;
# - with RUNNER_MANUALLY_TRAP_SIG (set in the image) it runs the helper as a job of its own
#   (set -m) and turns SIGINT/SIGTERM into SIGINT for that whole process group. The wait that the
#   signal interrupts answers 128+signal, and that is the code run.sh then exits with, after the
#   helper has finished (so a SIGTERM'd runner exits 143 once the Listener has reported);
# - no attempt limit: the loop relaunches for as long as the helper answers 2;
# - RUNNER_UPDATE_CA_CERTS runs update-ca-certificates (through sudo when not root) first.
# ACTIONS_RUNNER_INPUT_JITCONFIG is left in the environment: only the Listener drops it, for its
# own process (src/Runner.Listener/CommandSettings.cs), so each relaunch reads it again.

# Resolve the directory of this script through symlinks, as upstream does.
SOURCE="${BASH_SOURCE[0]}"
while [ -h "$SOURCE" ]; do
    DIR="$(cd -P "$(dirname "$SOURCE")" && pwd)"
    SOURCE="$(readlink "$SOURCE")"
    [[ $SOURCE != /* ]] && SOURCE="$DIR/$SOURCE"
done
DIR="$(cd -P "$(dirname "$SOURCE")" && pwd)"

run() {
    while :; do
        cp -f "$DIR"/run-helper.sh.template "$DIR"/run-helper.sh
        "$DIR"/run-helper.sh $*
        returnCode=$?
        if [[ $returnCode -eq 2 ]]; then
            echo "Restarting runner..."
        elif [[ "$ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE" == "1" && $returnCode -eq 7 ]]; then
            echo "Exiting runner..."
            exit "$returnCode"
        else
            echo "Exiting runner..."
            exit 0
        fi
    done
}

runWithManualTrap() {
    set -m
    trap 'kill -INT -$PID' INT TERM
    while :; do
        cp -f "$DIR"/run-helper.sh.template "$DIR"/run-helper.sh
        "$DIR"/run-helper.sh $* &
        PID=$!
        wait $PID
        returnCode=$?
        if [[ $returnCode -eq 2 ]]; then
            echo "Restarting runner..."
        elif [[ "$ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE" == "1" && $returnCode -eq 7 ]]; then
            echo "Exiting runner..."
            exit "$returnCode"
        else
            echo "Exiting runner..."
            trap - INT TERM
            wait $PID # let the helper (and the Listener's last log lines) finish
            exit $returnCode
        fi
    done
}

updateCerts() {
    local sudo_prefix=""
    if [ "$(id -u)" -ne 0 ]; then
        if [[ ! -x "$(command -v sudo)" ]]; then
            echo "Warning: failed to update certificate store: sudo is required but not found"
            return 1
        fi
        sudo_prefix="sudo"
    fi
    if [[ -x "$(command -v update-ca-certificates)" ]]; then
        $sudo_prefix update-ca-certificates
    elif [[ -x "$(command -v update-ca-trust)" ]]; then
        $sudo_prefix update-ca-trust
    else
        echo "Warning: failed to update certificate store: update-ca-certificates or update-ca-trust not found."
        return 1
    fi
}

if [[ -n "$RUNNER_UPDATE_CA_CERTS" ]]; then
    updateCerts
fi

if [[ -z "$RUNNER_MANUALLY_TRAP_SIG" ]]; then
    run $*
else
    runWithManualTrap $*
fi
