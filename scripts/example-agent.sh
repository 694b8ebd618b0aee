#!/bin/sh
# A tiny example agent for the README demo and the tests: the synchronous
# script shape of docs/agents.md. Point the sidecar's wake_command at it,
# e.g. "wake_command": "sh scripts/example-agent.sh".
#
# It reports through the sidecar's helpers (`agentcom-sidecar agent ...`),
# which take the task from the environment the sidecar sets for the wake
# command (AGENTCOM_TASK_ID, AGENTCOM_RESULTS_DIR, AGENTCOM_MAX_RESULT_BYTES)
# and write each file atomically after checking it:
#   1. `agent started`: creates <id>.started (the confirmation);
#   2. unless given --no-progress, `agent progress 50 halfway`;
#   3. `agent done --output TEXT`: the result
#      {"status":"success","output":"<the description>"}.
# The description (AGENTCOM_TASK_DESCRIPTION) is untrusted: it is only ever
# passed as one quoted argument, after `--output`, never evaluated.
# AGENTCOM_SIDECAR is the sidecar's own executable.
set -eu

sidecar=${AGENTCOM_SIDECAR:-agentcom-sidecar}
description=${AGENTCOM_TASK_DESCRIPTION-}

write_progress=yes
for arg in "$@"; do
    case $arg in
        --no-progress) write_progress=no ;;
        *)
            echo "example-agent.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

"$sidecar" agent started
if [ "$write_progress" = yes ]; then
    "$sidecar" agent progress 50 halfway
fi
# The work goes here. This agent's answer is the task's own text.
"$sidecar" agent done --output "$description"
