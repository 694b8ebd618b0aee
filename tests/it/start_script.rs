//! The operations scripts, run for real. `scripts/start.sh` is driven against
//! a local bare "upstream" repository holding a toy crate named
//! `agentcom-sidecar` (it prints its version and arguments, and builds in about
//! a second) plus a copy of the real start.sh, cloned into a "box" checkout as
//! an agent machine would have it. Also: the wrapper `scripts/ecosystem.config.js`
//! names for each platform, and `scripts/example-agent.sh`.
//!
//! git, cargo, bash and node must be installed: a missing tool fails the test
//! with a message saying so rather than skipping it. Everything is local
//! (`git pull` from a path, `cargo --offline`) and nothing waits on a clock:
//! each script run is awaited until it exits.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::DevHubEvent;
use serde_json::{json, Value};
use tempfile::TempDir;

const REPO_ROOT: &str = env!("CARGO_MANIFEST_DIR");

// The bash and sh scripts, run where they are meant to run. start.bat runs
// under Wine's cmd in the Windows test run (windows_scripts.rs).
#[cfg(unix)]
mod unix_scripts {
    use super::*;

    #[test]
    fn first_start_builds_and_runs_the_checkout() {
        let fleet = Fleet::new(&toy_main("1"));
        let run = fleet.start(&["--extra", "two words"], &[]);
        run.assert_success();
        assert!(
            run.stdout.contains(r#"toy version 1 args ["--config", "config.json", "--extra", "two words"]"#),
            "{run}"
        );
        assert!(run.stderr.contains("start.sh: building "), "{run}");
        assert_eq!(fleet.cargo_invocations(), 1);
        assert_eq!(fleet.built_rev(), fleet.box_head());

        // SIDECAR_CONFIG names the config.
        let run = fleet.start(&[], &[("SIDECAR_CONFIG", "/etc/agentcom/sidecar.json")]);
        run.assert_success();
        assert!(run.stdout.contains(r#"args ["--config", "/etc/agentcom/sidecar.json"]"#), "{run}");
    }

    #[test]
    fn an_update_is_pulled_and_built_once() {
        let fleet = Fleet::new(&toy_main("1"));
        fleet.start(&[], &[]).assert_success();
        assert_eq!(fleet.cargo_invocations(), 1);

        let v2 = fleet.publish(&toy_main("2"), "version 2");
        let run = fleet.start(&[], &[]);
        run.assert_success();
        assert!(run.stdout.contains("toy version 2 "), "{run}");
        assert_eq!(fleet.box_head(), v2);
        assert_eq!(fleet.built_rev(), v2);
        assert_eq!(fleet.cargo_invocations(), 2);

        // Nothing new upstream: cargo is not run and the binary is untouched.
        let good_binary_mtime = fleet.good_binary_mtime();
        let run = fleet.start(&[], &[]);
        run.assert_success();
        assert!(run.stdout.contains("toy version 2 "), "{run}");
        assert!(run.stderr.contains("not rebuilding"), "{run}");
        assert_eq!(fleet.cargo_invocations(), 2, "cargo ran although HEAD did not move");
        assert_eq!(fleet.good_binary_mtime(), good_binary_mtime);

        // Building never dirties the checkout, which would block later pulls.
        assert_eq!(git(&fleet.box_dir, &["status", "--porcelain"]), "");
    }

    #[test]
    fn a_broken_update_keeps_running_the_last_good_binary() {
        let fleet = Fleet::new(&toy_main("1"));
        fleet.start(&[], &[]).assert_success();
        let v2 = fleet.publish(&toy_main("2"), "version 2");
        fleet.start(&[], &[]).assert_success();

        let broken = fleet.publish("fn main() { this is not rust }\n", "broken");
        let run = fleet.start(&[], &[]);
        run.assert_success();
        assert!(run.stdout.contains("toy version 2 "), "{run}");
        assert!(
            run.stderr.contains(&format!("start.sh: build failed; keeping the last good binary (rev {v2})")),
            "{run}"
        );
        assert_eq!(fleet.box_head(), broken, "the broken commit was pulled");
        assert_eq!(fleet.built_rev(), v2);

        // The failed revision is remembered: the next start does not build
        // it again, unless told to.
        assert_eq!(fleet.cargo_invocations(), 3);
        let run = fleet.start(&[], &[]);
        run.assert_success();
        assert!(run.stdout.contains("toy version 2 "), "{run}");
        assert!(run.stderr.contains(&format!("{broken} failed to build before; not retrying")), "{run}");
        assert_eq!(fleet.cargo_invocations(), 3, "a failed revision was built again");
        let run = fleet.start(&[], &[("AGENTCOM_FORCE_BUILD", "1")]);
        run.assert_success();
        assert!(run.stderr.contains("build failed; keeping the last good binary"), "{run}");
        assert_eq!(fleet.cargo_invocations(), 4);

        // Once HEAD moves, a fix is picked up.
        let v3 = fleet.publish(&toy_main("3"), "version 3");
        let run = fleet.start(&[], &[]);
        run.assert_success();
        assert!(run.stdout.contains("toy version 3 "), "{run}");
        assert_eq!(fleet.built_rev(), v3);
        assert!(!fleet.release_dir().join(".agentcom-failed-rev").exists());
    }

    #[test]
    fn update_builds_then_restarts_only_with_a_binary_for_head() {
        let fleet = Fleet::new(&toy_main("1"));
        fleet.start(&[], &[]).assert_success();
        let marker = fleet.dir.path().join("restarted");
        let restart = format!("echo restart >> {}", shell_quote(&marker));
        let restarts = || fs::read_to_string(&marker).unwrap_or_default().lines().count();
        let restart_env = [("AGENTCOM_RESTART_COMMAND", restart.as_str())];

        // Nothing new, --if-changed: the sidecar already runs HEAD.
        let run = fleet.update(&["--if-changed"], &restart_env);
        run.assert_success();
        assert!(run.stderr.contains("already runs"), "{run}");
        assert_eq!(restarts(), 0);

        // A new revision: built first (the old binary is still the one that
        // would start), then restarted, and the next start neither pulls
        // nor builds.
        let v2 = fleet.publish(&toy_main("2"), "version 2");
        let run = fleet.update(&["--if-changed"], &restart_env);
        run.assert_success();
        assert_eq!(run.stdout, "", "update.sh does not start the sidecar itself: {run}");
        assert!(run.stderr.contains(&format!("binary for {v2} is ready; restarting")), "{run}");
        assert_eq!((restarts(), fleet.built_rev(), fleet.cargo_invocations()), (1, v2.clone(), 2));
        let run = fleet.start(&[], &[]);
        run.assert_success();
        assert!(run.stderr.contains(&format!("update.sh prepared {v2}: not pulling")), "{run}");
        assert!(run.stdout.contains("toy version 2 "), "{run}");
        assert_eq!(fleet.cargo_invocations(), 2);

        // A broken revision: no restart, the last good binary stays.
        let broken = fleet.publish("fn main() { this is not rust }\n", "broken");
        let run = fleet.update(&[], &restart_env);
        assert_eq!(run.output.status.code(), Some(1), "{run}");
        assert!(run.stderr.contains("not restarting: the running sidecar stays"), "{run}");
        assert_eq!((restarts(), fleet.built_rev()), (1, v2.clone()));
        // ... and is not built again by the next update.
        let run = fleet.update(&[], &restart_env);
        assert_eq!(run.output.status.code(), Some(1), "{run}");
        assert!(run.stderr.contains(&format!("{broken} failed to build before")), "{run}");
        assert_eq!((restarts(), fleet.cargo_invocations()), (1, 3));

        // The restart command failing is reported.
        fleet.publish(&toy_main("3"), "version 3");
        let run = fleet.update(&["--restart-command", "exit 7"], &[]);
        assert_eq!(run.output.status.code(), Some(3), "{run}");
        assert!(!fleet.release_dir().join(".agentcom-prepared-rev").exists());
    }

    /// The upgrade that issue 12 measured as a 21.5 s outage: the new
    /// revision is built while the old sidecar stays connected to the hub,
    /// and the switch costs only a stop and a start. The sidecar binary is
    /// the real one; the toy crate in the fleet is a launcher that execs it,
    /// so builds stay quick. The supervisor is a shell loop that starts
    /// start.sh again as soon as it exits (what pm2 does, without its
    /// restart delay); update.sh restarts through it with SIGTERM.
    #[test]
    fn an_update_is_built_while_the_old_sidecar_stays_connected() {
        let hub = crate::support::start_hub();
        let fleet = Fleet::new(&launcher_main("1"));
        let agent_dir = fleet.dir.path().join("agent");
        fs::create_dir_all(&agent_dir).unwrap();
        let config = crate::support::config(&agent_dir, &hub.url());
        let config_path = agent_dir.join("config.json");
        fs::write(&config_path, config.to_string()).unwrap();
        let supervisor = Supervisor::start(&fleet, &config_path);

        // Events, timestamped as the hub emits them.
        let (tx, events) = crossbeam_channel::unbounded();
        let source = hub.events();
        std::thread::spawn(move || {
            for event in source.iter() {
                if tx.send((Instant::now(), event)).is_err() {
                    break;
                }
            }
        });
        let next = |what: &str, pred: &dyn Fn(&DevHubEvent) -> bool| -> (Instant, DevHubEvent) {
            let deadline = Instant::now() + BUILD_DEADLINE;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match events.recv_timeout(left) {
                    Ok((at, event)) if pred(&event) => return (at, event),
                    Ok(_) => {}
                    Err(_) => {
                        panic!("timed out waiting for {what}; supervisor output:\n{}", supervisor.output())
                    }
                }
            }
        };
        let identified = |e: &DevHubEvent| matches!(e, DevHubEvent::Identified { .. });
        let (_, first) = next("the first sidecar to identify", &identified);
        let DevHubEvent::Identified { conn: old_conn, .. } = first else { unreachable!() };
        assert!(supervisor.output().contains("toy version 1 "));

        let v2 = fleet.publish(&launcher_main("2"), "version 2");
        fleet.close_gate();
        let mut update = fleet.script_command("update.sh");
        let restart = format!("kill -TERM \"$(cat {})\"", shell_quote(&supervisor.pid_file()));
        update.env("AGENTCOM_RESTART_COMMAND", restart);
        let update = update.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        wait_deadline("update.sh to start building", || fleet.build_started().then_some(()));

        // The build is under way (held in the cargo shim): the old sidecar
        // is still connected and identified.
        assert!(hub.send_raw(crate::support::AGENT, json!({"type": "agentcom_test_probe"})));
        while let Ok((_, event)) = events.try_recv() {
            assert!(
                !matches!(event, DevHubEvent::Disconnected { .. } | DevHubEvent::Connected { .. }),
                "the connection changed during the build: {event:?}"
            );
        }
        fleet.open_gate();
        let output = update.wait_with_output().unwrap();
        assert!(output.status.success(), "update.sh failed: {output:?}");

        let (down_at, _) = next(
            "the old connection to close",
            &|e| matches!(e, DevHubEvent::Disconnected { conn, .. } if *conn == old_conn),
        );
        let (up_at, _) = next("the new sidecar to identify", &identified);
        let gap = up_at.duration_since(down_at);
        println!("upgrade: the devhub had no identified sidecar for {} ms", gap.as_millis());
        let out = supervisor.output();
        assert!(out.contains("toy version 2 "), "{out}");
        assert!(out.contains(&format!("update.sh prepared {v2}: not pulling")), "{out}");
        assert_eq!(fleet.cargo_invocations(), 2, "the restart built again");
    }

    /// pm2 (treekill off) and the systemd unit (KillMode=process) signal
    /// start.sh alone, so that an agent at work outlives a restart: a stop
    /// while it builds (SIGINT from pm2, SIGTERM from systemd) must end the
    /// build too, not leave cargo building without it, and start nothing.
    #[test]
    fn a_stop_while_building_ends_the_build() {
        for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
            let fleet = Fleet::new(&toy_main("1"));
            fleet.close_gate();
            // Files, not pipes: a build left running would hold pipes open.
            let out = fleet.dir.path().join("start.out");
            let mut start = fleet
                .script_command("start.sh")
                .stdout(fs::File::create(&out).unwrap())
                .stderr(fs::File::create(fleet.dir.path().join("start.err")).unwrap())
                .spawn()
                .unwrap();
            let cargo: i32 = wait_deadline("start.sh to start building", || {
                fs::read_to_string(fleet.dir.path().join("build-started")).ok()?.trim().parse().ok()
            });
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            assert_eq!(unsafe { libc::kill(start.id() as i32, signal) }, 0);
            let status = wait_deadline("start.sh to exit", || start.try_wait().unwrap());
            let stat = fs::read_to_string(format!("/proc/{cargo}/stat")).unwrap_or_default();
            let left = !(stat.is_empty() || stat.contains(") Z "));
            if left {
                // SAFETY: as above; the shim is ours, left waiting at its gate.
                unsafe { libc::kill(cargo, libc::SIGKILL) };
            }
            assert!(!left, "the build ({cargo}) outlived start.sh: {stat}");
            assert_eq!(status.code(), Some(code), "{status:?}");
            assert!(!fs::read_to_string(&out).unwrap().contains("toy version"), "something started");
        }
    }

    #[test]
    fn a_diverged_checkout_logs_the_failed_pull_and_still_starts() {
        let fleet = Fleet::new(&toy_main("1"));
        fleet.start(&[], &[]).assert_success();

        // Someone committed on the box, and upstream changed the same file.
        fs::write(fleet.box_dir.join("NOTES.txt"), "edited on the box\n").unwrap();
        git(&fleet.box_dir, &["commit", "-q", "-am", "local edit"]);
        let local_head = fleet.box_head();
        fs::write(fleet.dev.join("NOTES.txt"), "edited upstream\n").unwrap();
        fleet.publish(&toy_main("2"), "version 2 and notes");

        let run = fleet.start(&[], &[]);
        run.assert_success();
        assert!(
            run.stderr.contains("start.sh: git pull --ff-only failed; starting the code already checked out"),
            "{run}"
        );
        assert!(run.stdout.contains("toy version 1 "), "{run}");
        assert_eq!(fleet.box_head(), local_head);
    }

    #[test]
    fn a_failed_first_build_refuses_to_start() {
        let fleet = Fleet::new("fn main() { this is not rust }\n");
        let run = fleet.start(&[], &[]);
        assert!(!run.output.status.success(), "{run}");
        assert!(run.stderr.contains("build failed and there is no previous binary to fall back on"), "{run}");
        assert_eq!(run.stdout, "");
    }

    #[test]
    fn skip_pull_starts_without_pulling() {
        let fleet = Fleet::new(&toy_main("1"));
        fleet.publish(&toy_main("2"), "version 2");
        let run = fleet.start(&[], &[("AGENTCOM_SKIP_PULL", "1")]);
        run.assert_success();
        assert!(run.stderr.contains("AGENTCOM_SKIP_PULL=1: not pulling"), "{run}");
        assert!(run.stdout.contains("toy version 1 "), "{run}");
    }

    /// With update_url in the config, start.sh runs the release binary in
    /// bin/ (no pull, no build) and update.sh installs the signed release
    /// with `agentcom-sidecar update`, restarting only when it did.
    #[test]
    fn with_update_url_start_runs_the_release_binary_and_update_installs_the_release() {
        use agentcom_sidecar::selfupdate::testserver::{Reply, TestServer};
        use sha2::{Digest, Sha256};

        let fleet = Fleet::new(&toy_main("1"));
        let server = TestServer::start();
        let keys = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let mut cfg = crate::support::config(&fleet.box_dir, "ws://127.0.0.1:9/ws");
        cfg["update_url"] = json!(server.url("/manifest.json"));
        cfg["update_public_key"] = json!(keys.pk.to_base64());
        fs::write(fleet.box_dir.join("config.json"), cfg.to_string()).unwrap();

        let run = fleet.start(&["--version"], &[]);
        assert_eq!(run.output.status.code(), Some(1), "{run}");
        assert!(run.stderr.contains("there is no release binary at bin/agentcom-sidecar"), "{run}");

        let real = fs::read(env!("CARGO_BIN_EXE_agentcom-sidecar")).unwrap();
        let binary = fleet.box_dir.join("bin/agentcom-sidecar");
        fs::create_dir_all(binary.parent().unwrap()).unwrap();
        fs::write(&binary, &real).unwrap();
        make_executable(&binary);
        let run = fleet.start(&["--version"], &[]);
        run.assert_success();
        assert!(run.stdout.starts_with("agentcom-sidecar "), "{run}");
        assert!(
            run.stderr.contains("update_url is set: running the release binary bin/agentcom-sidecar"),
            "{run}"
        );
        assert_eq!(fleet.cargo_invocations(), 0, "nothing built");

        let new = [real.as_slice(), b"\nnew build\n"].concat();
        let publish = |version: &str| {
            let sha: String = Sha256::digest(&new).iter().map(|b| format!("{b:02x}")).collect();
            let target = agentcom_sidecar::selfupdate::TARGET.unwrap();
            let manifest = json!({"version": version, "git_revision": "x",
                "files": {target: {"file": "new", "size": new.len(), "sha256": sha}}});
            let text = serde_json::to_vec(&manifest).unwrap();
            let sig = minisign::sign(Some(&keys.pk), &keys.sk, text.as_slice(), None, None).unwrap();
            server.set("/manifest.json.minisig", Reply::Body(sig.into_string().into_bytes()));
            server.set("/manifest.json", Reply::Body(text));
            server.set("/new", Reply::Body(new.clone()));
        };
        let restarted = fleet.dir.path().join("restarted");
        let restart = format!("echo restarted >> {}", shell_quote(&restarted));
        let env = [("AGENTCOM_RESTART_COMMAND", restart.as_str())];
        publish("0.0.1");
        let run = fleet.update(&[], &env);
        run.assert_success();
        assert!(run.stderr.contains("nothing newer; not restarting"), "{run}");
        assert!(!restarted.exists());
        publish("99.0.0");
        let run = fleet.update(&[], &env);
        run.assert_success();
        assert!(run.stderr.contains("the new binary is in place; restarting"), "{run}");
        assert_eq!(fs::read_to_string(&restarted).unwrap(), "restarted\n");
        assert!(fs::read(&binary).unwrap() == new, "the release is in place");
        server.set("/new", Reply::Status(500));
        let run = fleet.update(&[], &env);
        assert_eq!(run.output.status.code(), Some(1), "{run}");
        assert!(run.stderr.contains("HTTP 500"), "{run}");
        assert_eq!(fs::read_to_string(&restarted).unwrap(), "restarted\n", "no restart after a failure");
        assert_eq!(fleet.cargo_invocations(), 0, "nothing built");
    }

    #[test]
    fn example_agent_writes_started_progress_and_an_escaped_result() {
        let dir = TempDir::new().unwrap();
        let results_dir = dir.path().join("results");
        fs::create_dir(&results_dir).unwrap();
        let marker = dir.path().join("pwned");
        let description = format!(
            "quote \" backslash \\ tab \t cr \r bell \u{7} unicode \u{e9}\u{2713}\n\
             $(touch {m}) `touch {m}` ; touch {m} '\n",
            m = marker.display()
        );
        let output = Command::new("sh")
            .arg(Path::new(REPO_ROOT).join("scripts/example-agent.sh"))
            .env("AGENTCOM_TASK_ID", "task-42")
            .env("AGENTCOM_RESULTS_DIR", &results_dir)
            .env("AGENTCOM_TASK_DESCRIPTION", &description)
            .env("AGENTCOM_SIDECAR", env!("CARGO_BIN_EXE_agentcom-sidecar"))
            .output()
            .expect("sh is required to run scripts/example-agent.sh");
        assert!(output.status.success(), "{output:?}");

        assert!(results_dir.join("task-42.started").is_file());
        let progress: Value =
            serde_json::from_str(&fs::read_to_string(results_dir.join("task-42.progress")).unwrap()).unwrap();
        assert_eq!(progress, serde_json::json!({"progress": 50, "message": "halfway"}));
        let result: Value =
            serde_json::from_str(&fs::read_to_string(results_dir.join("task-42.json")).unwrap()).unwrap();
        assert_eq!(result, serde_json::json!({"status": "success", "output": description}));
        assert_eq!(fs::read_dir(&results_dir).unwrap().count(), 3, "no temporary file left");
        assert!(!marker.exists(), "the description was executed");

        let refused = Command::new("sh")
            .arg(Path::new(REPO_ROOT).join("scripts/example-agent.sh"))
            .env("AGENTCOM_TASK_ID", "../escaped")
            .env("AGENTCOM_RESULTS_DIR", &results_dir)
            .env("AGENTCOM_SIDECAR", env!("CARGO_BIN_EXE_agentcom-sidecar"))
            .output()
            .unwrap();
        assert!(!refused.status.success());
        assert!(!dir.path().join("escaped.started").exists());
    }

    /// An upstream bare repository, a developer checkout that publishes to
    /// it, and the box checkout that start.sh updates. `cargo` on the
    /// script's PATH is a shim that counts its invocations, then runs the
    /// real cargo.
    struct Fleet {
        dir: TempDir,
        dev: PathBuf,
        box_dir: PathBuf,
        tools_dir: PathBuf,
        cargo_log: PathBuf,
    }

    impl Fleet {
        fn new(main_rs: &str) -> Fleet {
            require_tools();
            let dir = TempDir::new().unwrap();
            let root = dir.path();
            let upstream = root.join("upstream.git");
            let dev = root.join("dev");
            let box_dir = root.join("box");
            let tools_dir = root.join("tools");
            let cargo_log = root.join("cargo-invocations");
            fs::write(root.join("gitconfig"), "").unwrap();

            fs::create_dir(&tools_dir).unwrap();
            let shim = tools_dir.join("cargo");
            // While the fifo `gate` exists, a build announces itself in
            // `build-started` and waits until the test writes a line to it.
            fs::write(
                &shim,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' \"$*\" >>{log}\n\
                     if [ \"$1\" = build ] && [ -p {gate} ]; then echo $$ >{started}; read -r _ <{gate}; fi\n\
                     exec {cargo} \"$@\"\n",
                    log = shell_quote(&cargo_log),
                    gate = shell_quote(&root.join("gate")),
                    started = shell_quote(&root.join("build-started")),
                    cargo = shell_quote(Path::new(env!("CARGO"))),
                ),
            )
            .unwrap();
            make_executable(&shim);

            run_ok(git_command(root).args(["init", "-q", "--bare", "-b", "main", "upstream.git"]));
            run_ok(git_command(root).args(["init", "-q", "-b", "main", "dev"]));
            fs::create_dir_all(dev.join("src")).unwrap();
            fs::create_dir_all(dev.join("scripts")).unwrap();
            fs::write(
                dev.join("Cargo.toml"),
                "[package]\nname = \"agentcom-sidecar\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
            )
            .unwrap();
            fs::write(dev.join(".gitignore"), "/target\n").unwrap();
            fs::write(dev.join("NOTES.txt"), "notes\n").unwrap();
            fs::write(dev.join("src/main.rs"), main_rs).unwrap();
            for script in ["start.sh", "update.sh"] {
                let copy = dev.join("scripts").join(script);
                fs::copy(Path::new(REPO_ROOT).join("scripts").join(script), &copy).unwrap();
                make_executable(&copy);
            }
            let mut lockfile = Command::new(env!("CARGO"));
            lockfile.args(["generate-lockfile", "--offline"]).current_dir(&dev);
            sanitize_env(&mut lockfile, root);
            run_ok(&mut lockfile);

            git(&dev, &["add", "-A"]);
            git(&dev, &["commit", "-q", "-m", "version 1"]);
            git(&dev, &["remote", "add", "origin", upstream.to_str().unwrap()]);
            git(&dev, &["push", "-q", "-u", "origin", "main"]);
            run_ok(git_command(root).args(["clone", "-q", "upstream.git", "box"]));

            Fleet { dir, dev, box_dir, tools_dir, cargo_log }
        }

        /// Commits `main_rs` (and any other change in the dev checkout),
        /// pushes it, and returns the new revision.
        fn publish(&self, main_rs: &str, message: &str) -> String {
            fs::write(self.dev.join("src/main.rs"), main_rs).unwrap();
            git(&self.dev, &["commit", "-q", "-am", message]);
            git(&self.dev, &["push", "-q"]);
            git(&self.dev, &["rev-parse", "HEAD"])
        }

        /// Runs the box's start.sh to completion, from outside the checkout
        /// (the script must find its repository by itself).
        fn start(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
            self.run_script("start.sh", args, envs)
        }

        fn update(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
            self.run_script("update.sh", args, envs)
        }

        fn run_script(&self, script: &str, args: &[&str], envs: &[(&str, &str)]) -> Run {
            let mut command = self.script_command(script);
            command.args(args).envs(envs.iter().copied());
            let output = command.output().expect("bash is required to run the scripts");
            Run {
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                output,
            }
        }

        /// `bash box/scripts/<script>`, run from outside the checkout (the
        /// scripts must find their repository by themselves), with the
        /// cargo shim first on PATH.
        fn script_command(&self, script: &str) -> Command {
            let mut command = Command::new("bash");
            command.arg(self.box_dir.join("scripts").join(script)).current_dir(self.dir.path());
            sanitize_env(&mut command, self.dir.path());
            command.env_remove("pm_id").env_remove("AGENTCOM_RESTART_COMMAND");
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![self.tools_dir.clone()];
            paths.extend(std::env::split_paths(&path));
            command.env("PATH", std::env::join_paths(paths).unwrap());
            command
        }

        /// From now on every build waits in the cargo shim until
        /// [`Fleet::open_gate`].
        fn close_gate(&self) {
            run_ok(Command::new("mkfifo").arg(self.dir.path().join("gate")));
        }

        fn build_started(&self) -> bool {
            self.dir.path().join("build-started").exists()
        }

        /// Lets the waiting build go on; later builds no longer wait.
        fn open_gate(&self) {
            let gate = self.dir.path().join("gate");
            // Opening a fifo for writing waits for its reader, the shim.
            fs::write(&gate, "go\n").unwrap();
            fs::remove_file(&gate).unwrap();
        }

        fn cargo_invocations(&self) -> usize {
            match fs::read_to_string(&self.cargo_log) {
                Ok(text) => text.lines().filter(|line| line.starts_with("build")).count(),
                Err(_) => 0,
            }
        }

        fn box_head(&self) -> String {
            git(&self.box_dir, &["rev-parse", "HEAD"])
        }

        fn release_dir(&self) -> PathBuf {
            self.box_dir.join("target/release")
        }

        fn built_rev(&self) -> String {
            let stamp = self.release_dir().join(".agentcom-built-rev");
            fs::read_to_string(stamp).unwrap().trim().to_owned()
        }

        fn good_binary_mtime(&self) -> std::time::SystemTime {
            let good = self.release_dir().join("agentcom-sidecar.last-good");
            fs::metadata(good).unwrap().modified().unwrap()
        }
    }

    struct Run {
        output: Output,
        stdout: String,
        stderr: String,
    }

    impl Run {
        fn assert_success(&self) {
            assert!(self.output.status.success(), "{self}");
        }
    }

    impl std::fmt::Display for Run {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "start.sh exited with {}\n--- stdout\n{}--- stderr\n{}",
                self.output.status, self.stdout, self.stderr
            )
        }
    }

    /// Bounds waits that include a cargo build on a loaded machine.
    const BUILD_DEADLINE: Duration = Duration::from_secs(180);

    fn wait_deadline<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + BUILD_DEADLINE;
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }

    /// A minimal supervisor: runs the box's start.sh again as soon as it
    /// exits, until dropped. start.sh execs the sidecar, so the pid it
    /// records is the sidecar's.
    struct Supervisor {
        child: std::process::Child,
        dir: PathBuf,
    }

    impl Supervisor {
        fn start(fleet: &Fleet, config_path: &Path) -> Supervisor {
            let dir = fleet.dir.path().join("supervisor");
            fs::create_dir_all(&dir).unwrap();
            let script = dir.join("supervise.sh");
            fs::write(
                &script,
                "while [ ! -e \"$1/stop\" ]; do bash \"$2\" & echo $! >\"$1/sidecar.pid\"; wait $!; done\n",
            )
            .unwrap();
            let mut command = fleet.script_command("start.sh");
            command.env("SIDECAR_CONFIG", config_path);
            // Reuse the environment, run the loop instead of start.sh.
            let start_sh = fleet.box_dir.join("scripts/start.sh");
            let mut supervise = Command::new("bash");
            supervise.arg(&script).arg(&dir).arg(&start_sh).current_dir(fleet.dir.path());
            for (key, value) in command.get_envs() {
                match value {
                    Some(value) => supervise.env(key, value),
                    None => supervise.env_remove(key),
                };
            }
            let open = |name: &str| fs::File::create(dir.join(name)).unwrap();
            let child =
                supervise.stdin(Stdio::null()).stdout(open("out")).stderr(open("err")).spawn().unwrap();
            Supervisor { child, dir }
        }

        fn pid_file(&self) -> PathBuf {
            self.dir.join("sidecar.pid")
        }

        fn output(&self) -> String {
            let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            format!("{}{}", read("out"), read("err"))
        }
    }

    impl Drop for Supervisor {
        fn drop(&mut self) {
            let _ = fs::write(self.dir.join("stop"), "");
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Ok(pid) = fs::read_to_string(self.pid_file()) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
            }
        }
    }

    /// A toy `agentcom-sidecar` that execs the real sidecar binary.
    fn launcher_main(version: &str) -> String {
        format!(
            "use std::os::unix::process::CommandExt;\n\
             const VERSION: &str = {version:?};\n\
             fn main() {{\n    \
                 eprintln!(\"toy version {{VERSION}} execs the sidecar\");\n    \
                 let error = std::process::Command::new({sidecar:?}).args(std::env::args_os().skip(1)).exec();\n    \
                 eprintln!(\"cannot exec the sidecar: {{error}}\");\n    \
                 std::process::exit(1);\n\
             }}\n",
            sidecar = env!("CARGO_BIN_EXE_agentcom-sidecar"),
        )
    }

    fn toy_main(version: &str) -> String {
        format!(
            "const VERSION: &str = {version:?};\n\
             fn main() {{\n    \
                 let args: Vec<String> = std::env::args().skip(1).collect();\n    \
                 println!(\"toy version {{VERSION}} args {{args:?}}\");\n\
             }}\n"
        )
    }

    fn require_tools() {
        for (tool, why) in [("git", "git"), ("bash", "bash")] {
            let found = Command::new(tool).arg("--version").output();
            assert!(
                found.is_ok_and(|o| o.status.success()),
                "{why} is required by the start.sh tests and was not found on PATH"
            );
        }
    }

    /// Isolates git and cargo from the machine's and the outer build's
    /// settings: no global or system git config, and none of the variables
    /// through which the `cargo test` running us would redirect the toy
    /// build (its target dir above all).
    fn sanitize_env(command: &mut Command, root: &Path) {
        for name in [
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET_DIR",
            "CARGO_MAKEFLAGS",
            "MAKEFLAGS",
            "MFLAGS",
            "SIDECAR_CONFIG",
            "AGENTCOM_SKIP_PULL",
            "AGENTCOM_BUILD_ONLY",
            "AGENTCOM_FORCE_BUILD",
        ] {
            command.env_remove(name);
        }
        command
            .env("GIT_CONFIG_GLOBAL", root.join("gitconfig"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("CARGO_NET_OFFLINE", "true");
    }

    fn git_command(dir: &Path) -> Command {
        let mut command = Command::new("git");
        command.current_dir(dir).args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ]);
        // Every fleet keeps its empty gitconfig at the tempdir root, which
        // is an ancestor of every directory git runs in here.
        let root = dir
            .ancestors()
            .find(|d| d.join("gitconfig").is_file())
            .expect("git runs inside a fleet directory");
        sanitize_env(&mut command, root);
        command
    }

    /// Runs git in `dir`, asserts success, returns stdout without the
    /// trailing newline.
    fn git(dir: &Path, args: &[&str]) -> String {
        let output = run_ok(git_command(dir).args(args));
        String::from_utf8(output.stdout).unwrap().trim_end().to_owned()
    }

    fn run_ok(command: &mut Command) -> Output {
        let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        assert!(output.status.success(), "{command:?} failed: {output:?}");
        output
    }

    fn shell_quote(path: &Path) -> String {
        format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
    }

    fn make_executable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// What the pm2 file exports, evaluated by node for each platform.
fn ecosystem(env: &[(&str, &str)]) -> Value {
    let config = Path::new(REPO_ROOT).join("scripts/ecosystem.config.js");
    let config = serde_json::to_string(config.to_str().unwrap()).unwrap();
    let script = format!(
        "const c = require({config});\n\
         console.log(JSON.stringify({{apps: c.apps, current: c.appFor(process.platform),\n\
             linux: c.appFor('linux'), darwin: c.appFor('darwin'), win32: c.appFor('win32')}}));"
    );
    let output = node(&script, env);
    serde_json::from_slice(&output.stdout).unwrap()
}

fn node(script: &str, env: &[(&str, &str)]) -> Output {
    let output = Command::new("node")
        .args(["-e", script])
        .env_remove("SIDECAR_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| {
            panic!("node is required to check scripts/ecosystem.config.js (CI installs it): {e}")
        });
    assert!(output.status.success(), "node failed: {output:?}");
    output
}

fn file_name(path: &Value) -> &str {
    let path = path.as_str().unwrap();
    path.rsplit(['/', '\\']).next().unwrap()
}

#[test]
fn the_pm2_file_loads_silently() {
    let config = Path::new(REPO_ROOT).join("scripts/ecosystem.config.js");
    let config = serde_json::to_string(config.to_str().unwrap()).unwrap();
    let output = node(&format!("require({config})"), &[]);
    assert!(output.stdout.is_empty() && output.stderr.is_empty(), "{output:?}");
}

#[test]
fn the_pm2_file_names_start_sh_on_unix_and_start_bat_on_windows() {
    let exported = ecosystem(&[]);
    for platform in ["linux", "darwin"] {
        let app = &exported[platform];
        assert_eq!(file_name(&app["script"]), "start.sh", "{platform}: {app}");
        assert_eq!(app["interpreter"], "bash", "{platform}");
    }
    let windows = &exported["win32"];
    assert_eq!(file_name(&windows["script"]), "start.bat", "{windows}");
    // pm2 would end only `cmd /c start.bat`, orphaning the sidecar.
    assert_eq!(windows["treekill"], true, "Windows: pm2 ends the whole tree");
    assert_eq!(exported["linux"]["treekill"], false, "Linux: pm2 signals the sidecar alone");
    assert_eq!(windows["interpreter"], "cmd");
    assert_eq!(windows["interpreter_args"], serde_json::json!(["/c"]));

    let apps = exported["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 1);
    let app = &apps[0];
    assert_eq!(*app, exported["current"], "apps[0] is the app for this platform");
    assert_eq!(app["name"], "agentcom-sidecar");
    let repo_root = fs::canonicalize(REPO_ROOT).unwrap();
    assert_eq!(fs::canonicalize(app["cwd"].as_str().unwrap()).unwrap(), repo_root);
    assert_eq!(
        fs::canonicalize(app["script"].as_str().unwrap()).unwrap().parent(),
        Some(repo_root.join("scripts").as_path()),
        "the wrapper named is one of ours, and exists"
    );
    assert_eq!(app["autorestart"], true);
    assert_eq!(app["restart_delay"], 5000);
    assert!(app["kill_timeout"].as_u64().unwrap() > 1000, "longer than the sidecar's own shutdown");
    let unix = cfg!(unix);
    assert_eq!(app["treekill"], !unix, "Unix: pm2 signals the sidecar alone, a run-mode agent works on");
    assert_eq!(app["time"], false, "one timestamp per line: the sidecar's own");
    assert_eq!(app["max_memory_restart"], "100M");
    assert_eq!(
        PathBuf::from(app["env"]["SIDECAR_CONFIG"].as_str().unwrap()),
        Path::new(app["cwd"].as_str().unwrap()).join("config.json")
    );
}

#[test]
fn the_pm2_file_takes_sidecar_config_from_the_environment() {
    let exported = ecosystem(&[("SIDECAR_CONFIG", "/etc/agentcom/sidecar.json")]);
    assert_eq!(exported["apps"][0]["env"]["SIDECAR_CONFIG"], "/etc/agentcom/sidecar.json");
}
