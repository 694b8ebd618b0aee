//! The binary channel end to end: a copy of the real binary updates itself
//! from a signed release served on loopback (`update`, `update --rollback`,
//! and the hub's `restart_sidecar` with `update_url`). The "new" release is
//! the same program with a marker appended (an executable runs with
//! trailing bytes), so the tests can tell which binary is on disk.
//! Under Wine this is the swap of a running `.exe`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use agentcom_sidecar::devhub::DevHubEvent;
use agentcom_sidecar::selfupdate::testserver::{Reply, TestServer};
use agentcom_sidecar::selfupdate::{swap, TARGET};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::*;

const EXE: &str = if cfg!(windows) { "agentcom-sidecar.exe" } else { "agentcom-sidecar" };
/// An update copies, hashes and runs the whole (debug, tens of MB) binary:
/// under Wine on a busy machine that takes longer than FAILSAFE allows.
const UPDATE_FAILSAFE: std::time::Duration = std::time::Duration::from_secs(180);

/// Waits, up to UPDATE_FAILSAFE, for `needle` in the sidecar's output.
fn wait_output_long(sidecar: &Sidecar, needle: &str) {
    let deadline = Instant::now() + UPDATE_FAILSAFE;
    while !sidecar.output().contains(needle) {
        assert!(Instant::now() < deadline, "timed out waiting for {needle:?}: {}", sidecar.output());
        std::thread::park_timeout(std::time::Duration::from_millis(20));
    }
}

struct Release {
    server: TestServer,
    keys: minisign::KeyPair,
    dir: tempfile::TempDir,
    exe: PathBuf,
    old: Vec<u8>,
    new: Vec<u8>,
}

fn release(hub_url: &str) -> (Release, Value) {
    let dir = tempfile::tempdir().unwrap();
    let real = fs::read(env!("CARGO_BIN_EXE_agentcom-sidecar")).unwrap();
    let marked = |marker: &str| [real.as_slice(), marker.as_bytes()].concat();
    let (old, new) = (marked("\nold build\n"), marked("\nnew build\n"));
    fs::create_dir_all(dir.path().join("bin")).unwrap();
    let exe = dir.path().join("bin").join(EXE);
    fs::write(&exe, &old).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let keys = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let server = TestServer::start();
    let mut cfg = config(dir.path(), hub_url);
    cfg["update_url"] = json!(server.url("/release/manifest.json"));
    cfg["update_public_key"] = json!(keys.pk.to_base64());
    cfg["update_timeout_ms"] = json!(10_000);
    fs::write(dir.path().join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    (Release { server, keys, dir, exe, old, new }, cfg)
}

impl Release {
    fn publish(&self, version: &str) {
        let file = format!("agentcom-sidecar-{version}");
        let sha: String = Sha256::digest(&self.new).iter().map(|b| format!("{b:02x}")).collect();
        let manifest = json!({
            "version": version,
            "git_revision": "0123456",
            "files": { TARGET.unwrap(): { "file": file, "size": self.new.len(), "sha256": sha } },
        });
        let text = serde_json::to_vec_pretty(&manifest).unwrap();
        let signature =
            minisign::sign(Some(&self.keys.pk), &self.keys.sk, text.as_slice(), None, None).unwrap();
        self.server.set("/release/manifest.json.minisig", Reply::Body(signature.into_string().into_bytes()));
        self.server.set("/release/manifest.json", Reply::Body(text));
        self.server.set(&format!("/release/{file}"), Reply::Body(self.new.clone()));
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.exe)
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join("config.json"))
            .output()
            .unwrap()
    }

    fn on_disk(&self) -> Vec<u8> {
        fs::read(&self.exe).unwrap()
    }

    fn previous(&self) -> Vec<u8> {
        fs::read(swap::previous_path(&self.exe)).unwrap_or_default()
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn update_installs_a_signed_release_and_rollback_puts_the_old_one_back() {
    let (r, _) = release("ws://127.0.0.1:9/ws");
    r.publish("0.0.1");
    let out = r.run(&["update"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("is not newer than this binary"), "{}", text(&out));
    assert!(r.on_disk() == r.old);

    r.publish("99.0.0");
    let out = r.run(&["update", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("version 99.0.0 is available"), "{}", text(&out));
    assert!(r.on_disk() == r.old, "--check changed the binary");

    let out = r.run(&["update"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("installed version 99.0.0"), "{}", text(&out));
    assert!(r.on_disk() == r.new, "the new binary is in place");
    assert!(r.previous() == r.old, "the old one is kept");

    let out = Command::new(&r.exe).args(["update", "--rollback"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("rolled back to version"), "{}", text(&out));
    assert!(r.on_disk() == r.old, "the old binary is back");
    assert!(r.previous() == r.new, "the replaced one is the previous now");
    let names: Vec<String> = fs::read_dir(r.exe.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "only the binary and the previous one: {names:?}");
}

#[test]
fn update_refuses_a_config_without_update_url_and_a_bad_one() {
    let (r, mut cfg) = release("ws://127.0.0.1:9/ws");
    cfg.as_object_mut().unwrap().remove("update_url");
    fs::write(r.dir.path().join("config.json"), cfg.to_string()).unwrap();
    let out = r.run(&["update"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("update: no update_url in"), "{}", text(&out));
    cfg["update_url"] = json!("http://example.com/manifest.json");
    fs::write(r.dir.path().join("config.json"), cfg.to_string()).unwrap();
    let out = r.run(&["update"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("key `update_url`: plain http:// is allowed only to loopback"),
        "{}",
        text(&out)
    );
    assert!(r.on_disk() == r.old);
}

/// Waits for the sidecar's connection to end at the hub, then for the
/// next identify; returns the time between the two as the hub saw them.
fn offline_ms(hub: &agentcom_sidecar::devhub::DevHub, restart: impl FnOnce()) -> u128 {
    hub.wait_for(FAILSAFE, |e| matches!(e, DevHubEvent::Disconnected { .. }))
        .expect("the sidecar disconnects");
    let gone = Instant::now();
    restart();
    hub.wait_for(FAILSAFE, |e| matches!(e, DevHubEvent::Identified { .. }))
        .expect("the new binary identifies");
    gone.elapsed().as_millis()
}

#[test]
fn restart_sidecar_installs_the_release_then_exits_and_the_new_binary_connects() {
    let hub = start_hub();
    let (r, cfg) = release(&hub.url());
    r.publish("99.0.0");
    let mut sidecar = Sidecar::start_binary(&r.exe, r.dir.path(), &cfg, &[]);
    expect_identified(&hub);
    assert!(hub.restart_sidecar(AGENT, "new release"));
    let status = sidecar.wait_exit(UPDATE_FAILSAFE).expect("the sidecar exits after the swap");
    assert!(status.success(), "{status:?}: {}", sidecar.output());
    let output = sidecar.output();
    assert!(output.contains("self-update: version 99.0.0 is in place"), "{output}");
    assert!(r.on_disk() == r.new && r.previous() == r.old);
    // The supervisor's part: start what is now on disk.
    let mut restarted = None;
    let offline =
        offline_ms(&hub, || restarted = Some(Sidecar::start_binary(&r.exe, r.dir.path(), &cfg, &[])));
    println!("hub-visible offline time during the update: {offline} ms (restart by the test itself)");
    assert!(sidecar.lifecycle().contains("restart requested by hub (version 99.0.0 installed)"));
}

#[test]
fn restart_sidecar_with_a_bad_release_stays_connected_on_the_old_binary() {
    let hub = start_hub();
    let (r, cfg) = release(&hub.url());
    r.publish("99.0.0");
    // The binary on the server is not the one signed for.
    r.server.set("/release/agentcom-sidecar-99.0.0", Reply::Body(r.old.clone()));
    let mut sidecar = Sidecar::start_binary(&r.exe, r.dir.path(), &cfg, &[]);
    expect_identified(&hub);
    assert!(hub.restart_sidecar(AGENT, "new release"));
    wait_output_long(&sidecar, "self-update failed, staying on version 0.1.0, connected");
    assert!(sidecar.output().contains("agentcom-sidecar-99.0.0's SHA-256 is"), "{}", sidecar.output());
    // Still connected on the same connection: no disconnect seen, and a
    // ping is answered.
    assert!(sidecar.wait_exit(std::time::Duration::ZERO).is_none(), "the sidecar exited");
    let events: Vec<DevHubEvent> = hub.events().try_iter().collect();
    assert!(!events.iter().any(|e| matches!(e, DevHubEvent::Disconnected { .. })), "{events:?}");
    assert!(r.on_disk() == r.old && !swap::previous_path(&r.exe).exists());
    assert!(leftovers(r.exe.parent().unwrap()).is_empty());
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".agentcom-sidecar"))
        .collect()
}

/// `restart_sidecar` while a wake runs, and while a result waits to be
/// reported (the hub rate-limited it): the update happens meanwhile, the
/// restarted binary wakes again and reports, and the hub records one
/// outcome. Unix: the wake waits on a gate file with sh.
#[cfg(unix)]
#[test]
fn restart_sidecar_during_a_wake_and_with_a_report_pending_loses_nothing() {
    use agentcom_sidecar::devhub::TaskStatus;

    let hub = start_hub();
    let (r, mut cfg) = release(&hub.url());
    r.publish("99.0.0");
    let dir = r.dir.path();
    let gate = dir.join("gate");
    cfg["wake_timeout_ms"] = json!(60_000);
    cfg["wake_command"] = json!(format!(
        "echo woken >> '{wakes}'; while [ ! -e '{gate}' ]; do sleep 0.02; done; : > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"",
        wakes = dir.join("wakes.txt").display(),
        gate = gate.display()
    ));
    let wakes = || fs::read_to_string(dir.join("wakes.txt")).unwrap_or_default().lines().count();
    let mut sidecar = Sidecar::start_binary(&r.exe, dir, &cfg, &[]);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    wait_until("the wake to run", || (wakes() == 1).then_some(()));

    // During the wake.
    assert!(hub.restart_sidecar(AGENT, "new release"));
    let status = sidecar.wait_exit(UPDATE_FAILSAFE).expect("the sidecar exits after the swap");
    assert!(status.success(), "{status:?}");
    assert!(r.on_disk() == r.new);
    let mut restarted = None;
    fs::write(&gate, "").unwrap();
    let offline = offline_ms(&hub, || restarted = Some(Sidecar::start_binary(&r.exe, dir, &cfg, &[])));
    println!("hub-visible offline time during the update (a wake running): {offline} ms");
    let sidecar = restarted.unwrap();
    let started = sidecar.results_dir().join(format!("{task_id}.started"));
    wait_until("the agent to confirm after the restart", || started.exists().then_some(()));
    assert_eq!(wakes(), 2, "the interrupted wake is run again once");

    // With the result waiting to be reported.
    hub.rate_limit_next("task_complete", 60_000);
    let results = sidecar.results_dir();
    fs::write(results.join("r.tmp"), json!({"status": "success", "output": "x"}).to_string()).unwrap();
    fs::rename(results.join("r.tmp"), results.join(format!("{task_id}.json"))).unwrap();
    expect_received(&hub, "task_complete");
    hub.wait_for(
        FAILSAFE,
        |e| matches!(e, DevHubEvent::Sent { frame, .. } if frame["type"] == "rate_limited"),
    )
    .expect("the hub rate-limits the report");
    r.publish("99.0.1");
    let mut sidecar = sidecar;
    assert!(hub.restart_sidecar(AGENT, "another release"));
    let status = sidecar.wait_exit(UPDATE_FAILSAFE).expect("the sidecar exits after the swap");
    assert!(status.success(), "{status:?}");
    let mut again = None;
    offline_ms(&hub, || again = Some(Sidecar::start_binary(&r.exe, dir, &cfg, &[])));
    wait_until("the hub to record the result", || {
        hub.task(&task_id).filter(|t| t.status == TaskStatus::Completed)
    });
    let task = hub.task(&task_id).unwrap();
    assert_eq!(task.outcomes.len(), 1, "one outcome: {:?}", task.outcomes);
    assert_eq!(wakes(), 2);
}

/// The binary's directory full, then read-only, while `update` runs: it
/// fails saying so, and the directory holds the old binary and nothing else.
/// Each case mounts a tmpfs over the directory in a mount namespace of its
/// own (Linux, root: run by .ci/release.sh).
#[cfg(target_os = "linux")]
#[test]
#[ignore = "needs root and mount namespaces (unshare, tmpfs): run by .ci/release.sh"]
fn a_full_or_read_only_directory_leaves_the_old_binary_alone() {
    let (r, _) = release("ws://127.0.0.1:9/ws");
    r.publish("99.0.0");
    let old_copy = r.dir.path().join("old-copy");
    fs::write(&old_copy, &r.old).unwrap();
    // Room for the old binary only; then room, but read-only.
    let full = format!(
        "mount -t tmpfs -o size={}k tmpfs \"$1\" && cp \"$2\" \"$1/{EXE}\" && chmod 755 \"$1/{EXE}\"",
        r.old.len() / 1024 + 256
    );
    let read_only =
        format!("mount -t tmpfs tmpfs \"$1\" && cp \"$2\" \"$1/{EXE}\" && chmod 755 \"$1/{EXE}\" && mount -o remount,ro \"$1\"");
    for (setup, needle) in [(full, "No space left on device"), (read_only, "Read-only file system")] {
        let script = format!(
            "{setup} || exit 99\n\"$1/{EXE}\" update --config \"$3\"; echo \"exit=$?\"\n\
             cmp -s \"$1/{EXE}\" \"$2\" && echo same-binary\nls -A \"$1\""
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(r.exe.parent().unwrap())
            .arg(&old_copy)
            .arg(r.dir.path().join("config.json"))
            .output()
            .expect("unshare runs");
        let text = text(&out);
        assert!(out.status.success(), "the mount failed: {text}");
        assert!(text.contains("update failed, the binary is unchanged"), "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
        assert!(text.contains("exit=1\n") && text.contains("same-binary\n"), "{text}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.ends_with(&format!("same-binary\n{EXE}\n")), "only the binary is left: {text}");
    }
}
