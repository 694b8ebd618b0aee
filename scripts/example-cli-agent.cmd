@echo off
rem A stand-in for a headless agent CLI run as the agent itself
rem ("wake_mode": "run"), the shape of `claude -p --output-format json`:
rem
rem   "wake_mode": "run",
rem   "wake_command": "C:\\agents\\example-cli-agent.cmd"
rem
rem It knows nothing of .started or result files (docs/protocol.md section
rem 8.7): it chats on stderr while it works, prints one JSON object on
rem stdout when it is done and exits 0. The task text is never used here
rem (cmd re-parses what it is given, see the README's Windows section);
rem the task id ([A-Za-z0-9._-] only) is safe to print. A real CLI goes in
rem its place, e.g. "claude -p \"!AGENTCOM_TASK_DESCRIPTION!\" --output-format json".
rem Set AGENTCOM_EXAMPLE_FAIL=N to fail with status N instead.
setlocal DisableDelayedExpansion
echo example-cli-agent: thinking about the task... 1>&2
if defined AGENTCOM_EXAMPLE_FAIL (
    echo example-cli-agent: error: the model is not reachable 1>&2
    exit /b %AGENTCOM_EXAMPLE_FAIL%
)
echo example-cli-agent: done 1>&2
echo {"type":"result","subtype":"success","is_error":false,"result":"Done: task %AGENTCOM_TASK_ID%","duration_ms":1,"num_turns":1,"session_id":"example","total_cost_usd":0}
exit /b 0
