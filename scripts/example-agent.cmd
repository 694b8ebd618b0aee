@echo off
rem A tiny example agent for Windows, the counterpart of example-agent.sh, used
rem by "agentcom-devhub --demo" on Windows and by the tests. Point the
rem sidecar's wake_command at it, e.g.
rem   "wake_command": "C:\\agentcom\\scripts\\example-agent.cmd"
rem
rem It takes the task from the environment the sidecar sets for the wake
rem command:
rem   AGENTCOM_TASK_ID           used as a file name in the results directory
rem   AGENTCOM_RESULTS_DIR       where .started, .progress and .json go
rem   AGENTCOM_TASK_FILE         the whole task as JSON (id, description, ...)
rem   AGENTCOM_TASK_DESCRIPTION  the task text
rem and then, in the results directory:
rem   1. creates <id>.started (the confirmation the sidecar waits for);
rem   2. writes <id>.progress: {"progress":50,"message":"halfway"};
rem   3. writes <id>.json.tmp and renames it to <id>.json, so the sidecar never
rem      sees half a result: {"status":"success","output":<the task file>}.
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
setlocal EnableExtensions EnableDelayedExpansion

if not defined AGENTCOM_TASK_ID (
    echo example-agent.cmd: AGENTCOM_TASK_ID is not set 1>&2
    exit /b 1
)
if not defined AGENTCOM_RESULTS_DIR (
    echo example-agent.cmd: AGENTCOM_RESULTS_DIR is not set 1>&2
    exit /b 1
)
if not defined AGENTCOM_TASK_FILE (
    echo example-agent.cmd: AGENTCOM_TASK_FILE is not set 1>&2
    exit /b 1
)

rem The id becomes a file name. The sidecar only passes ids made of letters,
rem digits, ".", "_" and "-" that do not start with "." (example-agent.sh
rem checks again; cmd has no portable way to, Wine's cmd lacks !VAR:x=y!).
set "ID=!AGENTCOM_TASK_ID!"
set "DIR=!AGENTCOM_RESULTS_DIR!"

rem Safe: delayed expansion. The text is printed, never run.
echo example-agent.cmd: task !ID!: !AGENTCOM_TASK_DESCRIPTION!

if not exist "!DIR!\" mkdir "!DIR!"
type nul>"!DIR!\!ID!.started"

echo {"progress":50,"message":"halfway"}>"!DIR!\!ID!.progress.tmp"
move /y "!DIR!\!ID!.progress.tmp" "!DIR!\!ID!.progress" >nul

rem The result embeds the task file, which is JSON already: no escaping in cmd.
rem (One redirection per line: Wine's cmd ignores one after a "( ... )" block.)
echo {"status":"success","output":>"!DIR!\!ID!.json.tmp"
type "!AGENTCOM_TASK_FILE!">>"!DIR!\!ID!.json.tmp"
echo }>>"!DIR!\!ID!.json.tmp"
move /y "!DIR!\!ID!.json.tmp" "!DIR!\!ID!.json" >nul
if errorlevel 1 (
    echo example-agent.cmd: cannot write the result 1>&2
    exit /b 1
)
exit /b 0
