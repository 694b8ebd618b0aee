#!/bin/sh
# A tiny example agent for the README demo and the tests. Point the sidecar's
# wake_command at it, e.g. "wake_command": "scripts/example-agent.sh".
#
# It takes the task from the environment the sidecar sets for the wake
# command (docs/protocol.md section 8):
#   AGENTCOM_TASK_ID           used as a file name in the results directory
#   AGENTCOM_RESULTS_DIR       where .started, .progress and .json go
#   AGENTCOM_TASK_DESCRIPTION  the task text; untrusted, so it is only ever
#                              data here: never evaluated, only JSON-escaped
# and then, in the results directory:
#   1. creates <id>.started (the confirmation the sidecar waits for);
#   2. unless given --no-progress, writes <id>.progress:
#      {"progress":50,"message":"halfway"};
#   3. writes <id>.json.tmp and renames it to <id>.json, so the sidecar never
#      sees half a result: {"status":"success","output":"<the description>"}.
# Plain POSIX sh and awk; no bash, no python.
set -eu

task_id=${AGENTCOM_TASK_ID:?AGENTCOM_TASK_ID is not set}
results_dir=${AGENTCOM_RESULTS_DIR:?AGENTCOM_RESULTS_DIR is not set}
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

# The id becomes a file name: refuse anything that could leave the results
# directory or hide as a dot file.
case $task_id in
    '' | .* | */* | *\\*)
        echo "example-agent.sh: refusing unsafe task id" >&2
        exit 1
        ;;
esac

# Prints $1 as a JSON string literal (with the quotes). awk reads the text
# as data, line by line: backslash and double quote are escaped, line breaks
# become \n, other control characters \u00XX; bytes >= 0x80 (UTF-8) pass
# through. The printf adds a final newline that awk consumes as the end of
# the last line, so a trailing newline in the text is kept exactly.
json_string() {
    printf '%s\n' "$1" | LC_ALL=C awk '
        BEGIN {
            ORS = ""
            for (code = 1; code < 32; code++) escaped[sprintf("%c", code)] = sprintf("\\u%04x", code)
            escaped["\t"] = "\\t"
            escaped["\r"] = "\\r"
            escaped["\\"] = "\\\\"
            escaped["\""] = "\\\""
            print "\""
        }
        {
            if (NR > 1) print "\\n"
            for (i = 1; i <= length($0); i++) {
                c = substr($0, i, 1)
                if (c in escaped) print escaped[c]; else print c
            }
        }
        END { print "\"" }'
}

mkdir -p "$results_dir"
: >"$results_dir/$task_id.started"

if [ "$write_progress" = yes ]; then
    printf '%s\n' '{"progress":50,"message":"halfway"}' >"$results_dir/$task_id.progress.tmp"
    mv -f "$results_dir/$task_id.progress.tmp" "$results_dir/$task_id.progress"
fi

output=$(json_string "$description")
printf '{"status":"success","output":%s}\n' "$output" >"$results_dir/$task_id.json.tmp"
mv -f "$results_dir/$task_id.json.tmp" "$results_dir/$task_id.json"
