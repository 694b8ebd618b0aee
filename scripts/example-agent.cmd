@echo off
rem A tiny example agent for Windows, the counterpart of example-agent.sh, used
rem by "agentcom-devhub --demo" on Windows and by the tests. Point the
rem sidecar's wake_command at it, e.g.
rem   "wake_command": "C:\\agentcom\\scripts\\example-agent.cmd"
rem
rem It reports through the sidecar's helpers ("agentcom-sidecar agent ..."),
rem which take the task from the environment the sidecar sets for the wake
rem command (AGENTCOM_TASK_ID, AGENTCOM_RESULTS_DIR, AGENTCOM_MAX_RESULT_BYTES)
rem and write each file atomically after checking it:
rem   1. "agent started": creates <id>.started (the confirmation);
rem   2. "agent progress 50 halfway";
rem   3. "agent done --output-file FILE": the result
rem      {"status":"success","output":"<the text of the task file>"}.
rem AGENTCOM_SIDECAR is the sidecar's own executable; AGENTCOM_TASK_FILE the
rem whole task as JSON.
rem
rem The task text comes from the hub and is untrusted. Read it only
rem   - from the file AGENTCOM_TASK_FILE (best: a program parses the JSON), or
rem   - as !AGENTCOM_TASK_DESCRIPTION! with delayed expansion on (below):
rem     cmd expands !VAR! after it has parsed the line, so the text is data.
rem NEVER take it from an argument (%1, %~1, %*) or as %AGENTCOM_TASK_DESCRIPTION%:
rem cmd expands those before it parses the line, so a description such as
rem   " & del /q C:\important & "
rem becomes commands. That is why this script takes no arguments, and why a
rem wake_command should not pass ${TASK_DESCRIPTION} to a .bat or .cmd file.
rem Nor pass it to a program as an argument ("!AGENTCOM_TASK_DESCRIPTION!"):
rem a quote in it would split it into several arguments. Hand a program a
rem file (--output-file) instead.
setlocal EnableExtensions EnableDelayedExpansion

if not defined AGENTCOM_TASK_FILE (
    echo example-agent.cmd: AGENTCOM_TASK_FILE is not set 1>&2
    exit /b 1
)
set "SIDECAR=agentcom-sidecar"
if defined AGENTCOM_SIDECAR set "SIDECAR=!AGENTCOM_SIDECAR!"

rem Safe: delayed expansion. The text is printed, never run.
echo example-agent.cmd: task !AGENTCOM_TASK_ID!: !AGENTCOM_TASK_DESCRIPTION!

"!SIDECAR!" agent started
if errorlevel 1 exit /b 1
"!SIDECAR!" agent progress 50 halfway
if errorlevel 1 exit /b 1
rem The work goes here. This agent's answer is the task file's text.
"!SIDECAR!" agent done --output-file "!AGENTCOM_TASK_FILE!"
if errorlevel 1 exit /b 1
exit /b 0
