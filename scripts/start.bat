@echo off
rem Starts agentcom-sidecar on Windows, updating it first; the same steps as
rem scripts/start.sh (read its header for the reasons):
rem   1. git pull --ff-only; a failure is logged and not fatal.
rem   2. cargo build --release --locked, only when HEAD differs from the
rem      revision of the last successful build or there is no good binary.
rem   3. Run the last good binary with --config "%SIDECAR_CONFIG%" (default
rem      config.json) plus this script's arguments.
rem We run a copy, agentcom-sidecar.last-good.exe, replaced only after a build
rem succeeds (copy to .tmp, then move over it), so a failed build can never
rem leave us without a complete binary. The copy also keeps cargo free to
rem replace agentcom-sidecar.exe while the sidecar runs.
rem cmd cannot exec, so this script waits for the sidecar and passes on its
rem exit code. Messages go to stderr.
setlocal EnableExtensions
cd /d "%~dp0.."

if "%AGENTCOM_SKIP_PULL%"=="1" (
    echo start.bat: AGENTCOM_SKIP_PULL=1: not pulling 1>&2
) else (
    set GIT_TERMINAL_PROMPT=0
    git pull --ff-only 1>&2 || echo start.bat: git pull --ff-only failed; starting the code already checked out 1>&2
)

set "RELEASE_DIR=target\release"
if defined CARGO_TARGET_DIR set "RELEASE_DIR=%CARGO_TARGET_DIR%\release"
set "BUILT_BINARY=%RELEASE_DIR%\agentcom-sidecar.exe"
set "GOOD_BINARY=%RELEASE_DIR%\agentcom-sidecar.last-good.exe"
set "STAMP=%RELEASE_DIR%\.agentcom-built-rev"
if not defined SIDECAR_CONFIG set "SIDECAR_CONFIG=config.json"

set "HEAD_REV="
for /f "delims=" %%r in ('git rev-parse HEAD') do set "HEAD_REV=%%r"
set "BUILT_REV="
if exist "%STAMP%" set /p BUILT_REV=<"%STAMP%"

if not exist "%GOOD_BINARY%" goto build
if not defined HEAD_REV goto run
if "%HEAD_REV%"=="%BUILT_REV%" (
    echo start.bat: binary is up to date with %HEAD_REV%; not rebuilding 1>&2
    goto run
)

:build
echo start.bat: building %HEAD_REV% (last good build: %BUILT_REV%) 1>&2
cargo build --release --locked 1>&2
if errorlevel 1 goto build_failed
copy /y "%BUILT_BINARY%" "%GOOD_BINARY%.tmp" >nul || goto build_failed
move /y "%GOOD_BINARY%.tmp" "%GOOD_BINARY%" >nul || goto build_failed
rem Redirection first, because in "echo %HEAD_REV%>file" a trailing digit
rem would be read as a handle number; "echo(" stays quiet if HEAD_REV is empty.
>"%STAMP%" echo(%HEAD_REV%
echo start.bat: built %HEAD_REV% 1>&2
goto run

:build_failed
if not exist "%GOOD_BINARY%" (
    echo start.bat: build failed and there is no previous binary to fall back on; not starting 1>&2
    exit /b 1
)
echo start.bat: build failed; keeping the last good binary (rev %BUILT_REV%) 1>&2

:run
"%GOOD_BINARY%" --config "%SIDECAR_CONFIG%" %*
exit /b %errorlevel%
