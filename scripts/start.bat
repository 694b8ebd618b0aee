@echo off
rem Starts agentcom-sidecar on Windows, updating it first; the same steps as
rem scripts/start.sh (read its header for the reasons):
rem   1. git pull --ff-only; a failure is logged and not fatal.
rem   2. cargo build --release --locked, only when HEAD differs from the
rem      revision of the last successful build or there is no good binary.
rem      A failed build is remembered (its revision in .agentcom-failed-rev)
rem      and not tried again until HEAD moves, so a broken commit does not
rem      cost a build at every restart; AGENTCOM_FORCE_BUILD=1 (or deleting
rem      that file) retries it.
rem   3. Run the last good binary with --config "%SIDECAR_CONFIG%" (default
rem      config.json) plus this script's arguments.
rem We run a copy, agentcom-sidecar.last-good.exe, replaced only after a build
rem succeeds (copy to .tmp, then move over it), so a failed build can never
rem leave us without a complete binary. The copy also keeps cargo free to
rem replace agentcom-sidecar.exe while the sidecar runs.
rem The binary channel: when a release binary is installed at
rem %AGENTCOM_BINARY% (default bin\agentcom-sidecar.exe; README, Install)
rem there is nothing to pull or build: it runs that, and the binary replaces
rem itself on the hub's restart_sidecar when the config sets update_url.
rem (start.sh reads update_url from the config; cmd has no JSON reader, and
rem findstr differs under Wine, where this script is tested.)
rem cmd cannot exec, so this script waits for the sidecar and passes on its
rem exit code. Messages go to stderr.
rem
rem Plain constructs only (goto and "if errorlevel", no "||", no redirection
rem before a command, no redirection of a "( ... )" block): Wine's cmd, where
rem the tests run this script, gets those wrong. "call" runs git and cargo so
rem that a .cmd or .bat shim returns here instead of ending this script.
setlocal EnableExtensions
cd /d "%~dp0.."

if not defined SIDECAR_CONFIG set "SIDECAR_CONFIG=config.json"
if not defined AGENTCOM_BINARY set "AGENTCOM_BINARY=bin\agentcom-sidecar.exe"
if not exist "%AGENTCOM_BINARY%" goto source_channel
echo start.bat: running the release binary %AGENTCOM_BINARY% (no pull, no build) 1>&2
"%AGENTCOM_BINARY%" --config "%SIDECAR_CONFIG%" %*
exit /b %errorlevel%
:source_channel

if "%AGENTCOM_SKIP_PULL%"=="1" goto no_pull
set GIT_TERMINAL_PROMPT=0
call git pull --ff-only 1>&2
if errorlevel 1 echo start.bat: git pull --ff-only failed; starting the code already checked out 1>&2
goto pulled
:no_pull
echo start.bat: AGENTCOM_SKIP_PULL=1: not pulling 1>&2
:pulled

set "RELEASE_DIR=target\release"
if defined CARGO_TARGET_DIR set "RELEASE_DIR=%CARGO_TARGET_DIR%\release"
set "BUILT_BINARY=%RELEASE_DIR%\agentcom-sidecar.exe"
set "GOOD_BINARY=%RELEASE_DIR%\agentcom-sidecar.last-good.exe"
set "STAMP=%RELEASE_DIR%\.agentcom-built-rev"
set "FAILED_STAMP=%RELEASE_DIR%\.agentcom-failed-rev"
if not defined SIDECAR_CONFIG set "SIDECAR_CONFIG=config.json"

set "HEAD_REV="
for /f "delims=" %%r in ('git rev-parse HEAD') do set "HEAD_REV=%%r"
set "BUILT_REV="
if exist "%STAMP%" set /p BUILT_REV=<"%STAMP%"
set "BUILT_SHOWN=%BUILT_REV%"
if not defined BUILT_REV set "BUILT_SHOWN=unknown"
set "FAILED_REV="
if exist "%FAILED_STAMP%" set /p FAILED_REV=<"%FAILED_STAMP%"

if not defined HEAD_REV goto head_unknown
if exist "%GOOD_BINARY%" if "%HEAD_REV%"=="%BUILT_REV%" goto up_to_date
if "%AGENTCOM_FORCE_BUILD%"=="1" goto build
if "%HEAD_REV%"=="%FAILED_REV%" goto failed_before
goto build

:head_unknown
if exist "%GOOD_BINARY%" goto no_head
goto build

:failed_before
if exist "%GOOD_BINARY%" goto failed_before_keep_good
echo start.bat: %HEAD_REV% failed to build before and there is no previous binary to fall back on; not starting (AGENTCOM_FORCE_BUILD=1 retries the build) 1>&2
exit /b 1
:failed_before_keep_good
echo start.bat: %HEAD_REV% failed to build before; not retrying until HEAD moves (AGENTCOM_FORCE_BUILD=1 forces it); keeping the last good binary (rev %BUILT_SHOWN%) 1>&2
goto run

:no_head
echo start.bat: cannot read the checked-out revision; running the last good binary (rev %BUILT_SHOWN%) 1>&2
goto run

:up_to_date
echo start.bat: binary is up to date with %HEAD_REV%; not rebuilding 1>&2
goto run

:build
set "HEAD_SHOWN=%HEAD_REV%"
if not defined HEAD_REV set "HEAD_SHOWN=the checkout"
set "LAST_SHOWN=%BUILT_REV%"
if not defined BUILT_REV set "LAST_SHOWN=none"
echo start.bat: building %HEAD_SHOWN% (last good build: %LAST_SHOWN%) 1>&2
call cargo build --release --locked 1>&2
if errorlevel 1 goto build_failed
copy /y "%BUILT_BINARY%" "%GOOD_BINARY%.tmp" >nul
if errorlevel 1 goto build_failed
move /y "%GOOD_BINARY%.tmp" "%GOOD_BINARY%" >nul
if errorlevel 1 goto build_failed
rem A revision is 40 (or 64) hex digits, so "echo <rev>>file" never reads
rem its last digit as a handle number.
if defined HEAD_REV echo %HEAD_REV%>"%STAMP%.tmp"
if not defined HEAD_REV type nul>"%STAMP%.tmp"
move /y "%STAMP%.tmp" "%STAMP%" >nul
if errorlevel 1 goto build_failed
if exist "%FAILED_STAMP%" del "%FAILED_STAMP%"
echo start.bat: built %HEAD_SHOWN% 1>&2
goto run

:build_failed
if not defined HEAD_REV goto failed_unrecorded
if not exist "%RELEASE_DIR%" mkdir "%RELEASE_DIR%"
echo %HEAD_REV%>"%FAILED_STAMP%"
:failed_unrecorded
if exist "%GOOD_BINARY%" goto keep_good
echo start.bat: build failed and there is no previous binary to fall back on; not starting 1>&2
exit /b 1
:keep_good
echo start.bat: build failed; keeping the last good binary (rev %BUILT_SHOWN%) 1>&2

:run
"%GOOD_BINARY%" --config "%SIDECAR_CONFIG%" %*
exit /b %errorlevel%
