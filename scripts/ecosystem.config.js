// pm2 process file for agentcom-sidecar:
//
//   pm2 start scripts/ecosystem.config.js && pm2 save
//
// pm2 runs a wrapper script, not the binary: scripts/start.sh (Linux, macOS)
// or scripts/start.bat (Windows) pulls, rebuilds when HEAD moved, and starts
// the last good binary. So `pm2 restart agentcom-sidecar` also updates it,
// offline while it builds; scripts/update.sh builds first, while the old
// sidecar runs, and then restarts it through pm2 (under a second offline).
//
// SIDECAR_CONFIG is read from the environment of `pm2 start` (default:
// config.json in the repository root). pm2 keeps the value it started with;
// after changing it use `pm2 restart agentcom-sidecar --update-env`.
'use strict';

const path = require('path');

const repoRoot = path.resolve(__dirname, '..');

// The pm2 app for `platform` (a `process.platform` value). Exported so a test
// can check the wrapper chosen for each platform without being on it.
function appFor(platform) {
  const windows = platform === 'win32';
  return {
    name: 'agentcom-sidecar',
    script: path.join(repoRoot, 'scripts', windows ? 'start.bat' : 'start.sh'),
    // pm2 spawns `interpreter interpreter_args script args` without a shell.
    // A .bat file cannot be spawned directly (Node refuses, and pm2 would
    // otherwise run it with node), so Windows goes through `cmd /c`.
    interpreter: windows ? 'cmd' : 'bash',
    interpreter_args: windows ? ['/c'] : [],
    cwd: repoRoot,
    autorestart: true,
    // pm2 waits restart_delay before a restart; with exp_backoff_restart_delay
    // set too, current pm2 uses the growing delay instead (5 s, 7.5 s, ...
    // capped at 15 s, back to 5 s once the app has stayed up), so a sidecar
    // that cannot start does not spin.
    restart_delay: 5000,
    exp_backoff_restart_delay: 5000,
    max_memory_restart: '100M',
    // Stop (`pm2 stop`, `pm2 restart`, an update): pm2 sends SIGINT, then
    // SIGKILL after kill_timeout. start.sh execs the sidecar, so the sidecar
    // itself gets the SIGINT and shuts down cleanly in well under a second
    // (its hub close waits at most shutdown_grace_ms, 500 ms by default; it
    // ends a running launch-mode wake command itself); 5 s leaves room for a
    // busy disk. Keep kill_timeout above shutdown_grace_ms + 1 s: a SIGKILL
    // ends the sidecar as a crash would (the next start recovers it).
    // treekill off (Unix): pm2's default signals every descendant too
    // (SIGINT, then SIGKILL after kill_timeout), which would end a run-mode
    // agent (wake_mode "run") at every restart. Off, only the sidecar gets
    // the signal; the agent works on and the next sidecar reports it
    // (docs/protocol.md 8.7; tests/it/pm2.rs runs it through a real
    // `pm2 restart` and `pm2 stop`).
    // On (Windows): pm2 runs `cmd /c start.bat`, and without treekill it
    // ends only that cmd (Node's process.kill is TerminateProcess there),
    // leaving the sidecar running unsupervised, holding the queue lock that
    // every restarted sidecar then stops on. With it, pm2 ends the whole
    // tree with taskkill /F: no clean stop, and a run-mode agent ends too
    // (the next sidecar fails its task once; the Windows service keeps it).
    kill_timeout: 5000,
    treekill: windows,
    // No `time` prefix from pm2: every line the sidecar and the scripts print
    // already starts with its own UTC timestamp (milliseconds, fixed width),
    // and a second one only made the lines longer.
    time: false,
    out_file: path.join(repoRoot, 'logs', 'agentcom-sidecar.out.log'),
    error_file: path.join(repoRoot, 'logs', 'agentcom-sidecar.err.log'),
    merge_logs: true,
    env: {
      SIDECAR_CONFIG: process.env.SIDECAR_CONFIG || path.join(repoRoot, 'config.json'),
    },
  };
}

module.exports = {
  apps: [appFor(process.platform)],
};

// Not enumerable, so pm2 (which reads `apps`) never sees a function among
// the file's keys.
Object.defineProperty(module.exports, 'appFor', { value: appFor, enumerable: false });
