#!/bin/sh
# A stand-in for a headless agent CLI run as the agent itself
# ("wake_mode": "run"), the shape of `claude -p --output-format json`:
#
#   "wake_mode": "run",
#   "wake_command": "sh scripts/example-cli-agent.sh \"$AGENTCOM_TASK_DESCRIPTION\""
#
# It knows nothing of .started or result files (docs/protocol.md section
# 8.7): it takes the prompt as its argument (the task text reaches it as
# data, through the environment reference in the template), chats on
# stderr while it works, prints one JSON object on stdout when it is done
# and exits 0. The sidecar turns that into
#   {"status":"success","output":{"type":"result","result":...}}
# A real CLI goes in its place with no wrapper, e.g.
#   "wake_command": "claude -p \"$AGENTCOM_TASK_DESCRIPTION\" --output-format json"
# Options (for tests and rehearsals):
#   --fail N     print an error on stderr and exit with status N instead
#   --work-file F  work until file F exists (stands in for minutes of work)
# Plain POSIX sh and awk; no bash, no python.
set -eu

prompt=""
fail=""
work_file=""
while [ $# -gt 0 ]; do
    case $1 in
        --fail) fail=${2:?--fail needs a status}; shift 2 ;;
        --work-file) work_file=${2:?--work-file needs a path}; shift 2 ;;
        *) prompt=$1; shift ;;
    esac
done

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

echo "example-cli-agent: thinking about the task..." >&2
if [ -n "$work_file" ]; then
    while [ ! -e "$work_file" ]; do sleep 1; done
fi
if [ -n "$fail" ]; then
    echo "example-cli-agent: error: the model is not reachable" >&2
    exit "$fail"
fi
echo "example-cli-agent: done" >&2
answer=$(json_string "Done: $prompt")
printf '{"type":"result","subtype":"success","is_error":false,"result":%s,"duration_ms":1,"num_turns":1,"session_id":"example","total_cost_usd":0}\n' "$answer"
