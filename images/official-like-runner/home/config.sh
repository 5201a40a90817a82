#!/bin/bash
# Stand-in for the official runner's config.sh. The JIT path never uses it
# (src/Runner.Listener/Runner.cs applies the JIT config itself, without ./config.sh), and gantryd
# only uses JIT configs, so registration by token is not reproduced.
echo "config.sh: this stand-in runner supports JIT configs only (run.sh --jitconfig, or ACTIONS_RUNNER_INPUT_JITCONFIG)" >&2
exit 1
