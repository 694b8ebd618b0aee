//! The update against a loopback HTTP server serving good and bad releases.
//! After every refusal the binary on disk is the old one and nothing else
//! is left beside it.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::testserver::{Reply, TestServer};
use super::*;

const OLD: &[u8] = b"the old binary";
const TARGET_KEY: &str = "x86_64-unknown-linux-musl";

struct Fixture {
    server: TestServer,
    keys: minisign::KeyPair,
    dir: tempfile::TempDir,
    exe: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("agentcom-sidecar");
    fs::write(&exe, OLD).unwrap();
    let keys = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    Fixture { server: TestServer::start(), keys, dir, exe }
}

fn sign(keys: &minisign::KeyPair, bytes: &[u8]) -> String {
    minisign::sign(Some(&keys.pk), &keys.sk, bytes, Some("test"), None).unwrap().into_string()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn entry(bytes: &[u8]) -> Value {
    json!({ "file": "agentcom-sidecar-new", "size": bytes.len(), "sha256": sha256(bytes) })
}

impl Fixture {
    fn settings(&self) -> Settings {
        Settings {
            url: Url::parse(&self.server.url("/r/manifest.json")).unwrap(),
            public_key: self.keys.pk.to_base64(),
            timeout: Duration::from_millis(5_000),
            connect_timeout: Duration::from_millis(5_000),
            tls_ca_file: None,
            config_path: None,
            exe: self.exe.clone(),
            current_version: "0.1.0".into(),
            target: TARGET_KEY.into(),
        }
    }

    /// Serves `manifest` signed by our key, and `binary` as its file.
    fn publish(&self, manifest: &Value, binary: Reply) {
        let text = serde_json::to_vec(manifest).unwrap();
        self.server.set("/r/manifest.json.minisig", Reply::Body(sign(&self.keys, &text).into_bytes()));
        self.server.set("/r/manifest.json", Reply::Body(text));
        self.server.set("/r/agentcom-sidecar-new", binary);
    }

    fn publish_good(&self, version: &str, binary: &[u8]) {
        let manifest =
            json!({ "version": version, "git_revision": "abc", "files": { TARGET_KEY: entry(binary) } });
        self.publish(&manifest, Reply::Body(binary.to_vec()));
    }

    /// Runs the update, expects it refused with `needle` in the error, and
    /// the old binary alone in its directory.
    fn refused(&self, settings: &Settings, needle: &str) -> String {
        let error = update(settings, false, false).expect_err("the update is refused");
        assert!(error.contains(needle), "expected {needle:?} in: {error}");
        self.assert_untouched();
        error
    }

    fn assert_untouched(&self) {
        assert_eq!(fs::read(&self.exe).unwrap(), OLD, "the binary on disk changed");
        let names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names, ["agentcom-sidecar"], "left beside the binary");
    }

    fn binary_requested(&self) -> bool {
        self.server.requests().iter().any(|p| p == "/r/agentcom-sidecar-new")
    }
}

#[test]
fn a_manifest_signed_by_another_key_is_refused_before_any_download() {
    let f = fixture();
    f.publish_good("0.2.0", b"new");
    let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let settings = Settings { public_key: other.pk.to_base64(), ..f.settings() };
    f.refused(&settings, "does not verify with update_public_key");
    assert!(!f.binary_requested());
}

#[test]
fn a_tampered_manifest_is_refused() {
    let f = fixture();
    let binary = b"new";
    let manifest =
        json!({ "version": "0.2.0", "git_revision": "abc", "files": { TARGET_KEY: entry(binary) } });
    let text = serde_json::to_vec(&manifest).unwrap();
    f.server.set("/r/manifest.json.minisig", Reply::Body(sign(&f.keys, &text).into_bytes()));
    let tampered = String::from_utf8(text).unwrap().replace("0.2.0", "9.2.0");
    f.server.set("/r/manifest.json", Reply::Body(tampered.into_bytes()));
    f.refused(&f.settings(), "does not verify");
    assert!(!f.binary_requested());
}

#[test]
fn a_binary_whose_hash_or_size_differs_is_refused() {
    let f = fixture();
    let manifest =
        json!({ "version": "0.2.0", "git_revision": "abc", "files": { TARGET_KEY: entry(b"good") } });
    f.publish(&manifest, Reply::Body(b"evil".to_vec()));
    f.refused(&f.settings(), "SHA-256 is");
    f.publish(&manifest, Reply::Body(b"good and more".to_vec()));
    f.refused(&f.settings(), "larger than the manifest's 4 bytes");
    f.publish(&manifest, Reply::Body(b"goo".to_vec()));
    f.refused(&f.settings(), "truncated: 3 of the manifest's 4 bytes");
}

#[test]
fn a_download_cut_short_is_refused() {
    let f = fixture();
    let binary = vec![7u8; 100_000];
    let manifest =
        json!({ "version": "0.2.0", "git_revision": "abc", "files": { TARGET_KEY: entry(&binary) } });
    f.publish(&manifest, Reply::Truncated { body: binary, sent: 60_000 });
    f.refused(&f.settings(), "cannot download agentcom-sidecar-new");
}

#[test]
fn a_server_that_stalls_mid_body_is_given_up_after_the_timeout() {
    let f = fixture();
    let binary = vec![7u8; 100_000];
    let manifest =
        json!({ "version": "0.2.0", "git_revision": "abc", "files": { TARGET_KEY: entry(&binary) } });
    f.publish(&manifest, Reply::Stall { body: binary, sent: 30_000 });
    let settings = Settings { timeout: Duration::from_millis(300), ..f.settings() };
    f.refused(&settings, "no data for 300 ms (update_timeout_ms)");
}

#[test]
fn a_manifest_without_this_platform_garbage_or_unsafe_is_refused() {
    let f = fixture();
    let manifest =
        json!({ "version": "0.2.0", "git_revision": "abc", "files": { "sparc-sun-solaris": entry(b"x") } });
    f.publish(&manifest, Reply::Body(b"x".to_vec()));
    f.refused(&f.settings(), "has no file for this platform (x86_64-unknown-linux-musl)");

    let text = b"{ not json".to_vec();
    f.server.set("/r/manifest.json.minisig", Reply::Body(sign(&f.keys, &text).into_bytes()));
    f.server.set("/r/manifest.json", Reply::Body(text));
    f.refused(&f.settings(), "the signed manifest is not valid");

    let mut bad = entry(b"x");
    bad["file"] = json!("../agentcom-sidecar");
    f.publish(
        &json!({ "version": "0.2.0", "git_revision": "abc", "files": { TARGET_KEY: bad } }),
        Reply::Status(404),
    );
    f.refused(&f.settings(), "is not a plain file name");

    f.server.set("/r/manifest.json.minisig", Reply::Body(b"not a signature".to_vec()));
    f.refused(&f.settings(), "is not a minisign signature");
}

#[test]
fn an_older_or_equal_version_is_not_installed_unless_forced() {
    let f = fixture();
    f.publish_good("0.0.9", b"old-new");
    assert_eq!(update(&f.settings(), false, false), Ok(Outcome::UpToDate { version: "0.0.9".into() }));
    f.publish_good("0.1.0", b"same");
    assert_eq!(update(&f.settings(), true, false), Ok(Outcome::UpToDate { version: "0.1.0".into() }));
    f.assert_untouched();
    assert!(!f.binary_requested());
    f.publish_good("0.2.0", b"newer");
    assert_eq!(update(&f.settings(), true, false), Ok(Outcome::Available { version: "0.2.0".into() }));
    // Forced, the older one is downloaded and checked (and refused here as
    // it does not run).
    f.publish_good("0.0.9", b"old-new");
    let error = update(&f.settings(), false, true).unwrap_err();
    assert!(error.contains("the new binary does not run here"), "{error}");
    f.assert_untouched();
}

#[test]
fn http_errors_are_refused_with_their_status() {
    let f = fixture();
    f.refused(&f.settings(), "cannot fetch the manifest: http://127.0.0.1");
    f.refused(&f.settings(), "HTTP 404");
    f.publish_good("0.2.0", b"new");
    f.server.set("/r/agentcom-sidecar-new", Reply::Status(500));
    f.refused(&f.settings(), "cannot download agentcom-sidecar-new: http://127.0.0.1");
    f.refused(&f.settings(), "HTTP 500");
    f.server.set("/r/manifest.json.minisig", Reply::Status(404));
    f.refused(&f.settings(), "cannot fetch the manifest's signature");
}

#[test]
fn a_redirect_to_another_host_is_refused_and_one_on_the_same_host_followed() {
    let f = fixture();
    f.publish_good("0.2.0", b"new");
    let elsewhere = format!("http://localhost:{}/r/agentcom-sidecar-new", f.server.port);
    f.server.set("/moved", Reply::Redirect(elsewhere));
    let settings = Settings { url: Url::parse(&f.server.url("/moved")).unwrap(), ..f.settings() };
    f.refused(&settings, "redirect to another host (http://localhost:");
    f.server.set("/moved", Reply::Redirect("/r/manifest.json".into()));
    let error = update(&settings, true, false).unwrap_err();
    // Followed: the manifest came; its signature is looked for beside the
    // URL asked for.
    assert!(error.contains("cannot fetch the manifest's signature"), "{error}");
}

#[test]
fn a_new_binary_that_does_not_run_is_refused() {
    let f = fixture();
    // Left by an update killed half-way: removed by the next one.
    fs::write(f.dir.path().join(".agentcom-sidecar-new-x1y2z3"), b"half").unwrap();
    f.publish_good("0.2.0", b"\x7fELF but not really a program");
    f.refused(&f.settings(), "the new binary does not run here");
}

#[test]
fn the_update_url_rules() {
    assert_eq!(check_update_url("https://example.com/r/manifest.json"), Ok(()));
    assert_eq!(check_update_url("http://127.0.0.1:8080/manifest.json"), Ok(()));
    assert_eq!(check_update_url("http://[::1]/manifest.json"), Ok(()));
    assert_eq!(check_update_url("http://localhost/manifest.json"), Ok(()));
    let file =
        if cfg!(windows) { "file:///C:/share/manifest.json" } else { "file:///srv/share/manifest.json" };
    assert_eq!(check_update_url(file), Ok(()));
    let error = check_update_url("http://example.com/manifest.json").unwrap_err();
    assert!(error.contains("only to loopback"), "{error}");
    let error = check_update_url("ftp://example.com/manifest.json").unwrap_err();
    assert!(error.contains("unsupported scheme ftp://"), "{error}");
    assert!(check_update_url("manifest.json").unwrap_err().starts_with("not a URL"));
    assert!(check_public_key("RWQ not a key").unwrap_err().starts_with("not a minisign public key"));
}

#[test]
fn versions_compare_numerically_with_prereleases_first() {
    assert_eq!(is_newer("0.10.0", "0.9.9"), Ok(true));
    assert_eq!(is_newer("0.1.0", "0.1.0"), Ok(false));
    assert_eq!(is_newer("0.1.0", "0.1.0-rc.1"), Ok(true));
    assert_eq!(is_newer("0.1.0-rc.1", "0.1.0"), Ok(false));
    assert!(is_newer("1.2", "0.1.0").unwrap_err().contains("not MAJOR.MINOR.PATCH"));
}

#[test]
fn the_previous_binary_keeps_the_extension() {
    assert_eq!(
        swap::previous_path(Path::new("/x/agentcom-sidecar")),
        Path::new("/x/agentcom-sidecar.previous")
    );
    assert_eq!(
        swap::previous_path(Path::new("/x/agentcom-sidecar.exe")),
        Path::new("/x/agentcom-sidecar.previous.exe")
    );
}

/// A stand-in new binary: a script that answers `--version` and `check`.
#[cfg(unix)]
fn script(version: &str, check_status: u8) -> Vec<u8> {
    format!(
        "#!/bin/sh\ncase \"$1\" in --version) echo agentcom-sidecar {version};; check) echo bad config >&2; exit {check_status};; esac\n"
    )
    .into_bytes()
}

#[cfg(unix)]
#[test]
fn a_verified_binary_is_installed_over_http_and_file_and_rolled_back() {
    let f = fixture();
    let new = script("0.2.0", 0);
    f.publish_good("0.2.0", &new);
    let config = f.dir.path().join("config.json");
    let settings = Settings { config_path: Some(config.clone()), ..f.settings() };
    assert_eq!(
        update(&settings, false, false),
        Ok(Outcome::Installed { from: "0.1.0".into(), to: "0.2.0".into() })
    );
    assert_eq!(fs::read(&f.exe).unwrap(), new);
    assert_eq!(fs::read(swap::previous_path(&f.exe)).unwrap(), OLD);

    // The old one does not run (it is text here): rollback refuses it.
    let error = rollback(&f.exe, Duration::from_secs(5)).unwrap_err();
    assert!(error.contains("does not run here"), "{error}");
    assert_eq!(fs::read(&f.exe).unwrap(), new);

    // From a share: file://, and a previous that runs is rolled back to
    // (the replaced one becomes the previous).
    let share = tempfile::tempdir().unwrap();
    let newer = script("0.3.0", 0);
    let manifest =
        json!({ "version": "0.3.0", "git_revision": "def", "files": { TARGET_KEY: entry(&newer) } });
    let text = serde_json::to_vec(&manifest).unwrap();
    fs::write(share.path().join("manifest.json"), &text).unwrap();
    fs::write(share.path().join("manifest.json.minisig"), sign(&f.keys, &text)).unwrap();
    fs::write(share.path().join("agentcom-sidecar-new"), &newer).unwrap();
    let url = Url::from_file_path(share.path().join("manifest.json")).unwrap();
    let settings = Settings { url, current_version: "0.2.0".into(), ..settings };
    assert_eq!(
        update(&settings, false, false),
        Ok(Outcome::Installed { from: "0.2.0".into(), to: "0.3.0".into() })
    );
    assert_eq!(rollback(&f.exe, Duration::from_secs(5)), Ok("0.2.0".into()));
    assert_eq!(fs::read(&f.exe).unwrap(), new);
    assert_eq!(fs::read(swap::previous_path(&f.exe)).unwrap(), newer);
}

#[cfg(unix)]
#[test]
fn a_new_binary_that_refuses_the_config_is_refused() {
    let f = fixture();
    f.publish_good("0.2.0", &script("0.2.0", 2));
    let settings = Settings { config_path: Some(f.dir.path().join("config.json")), ..f.settings() };
    let error = f.refused(&settings, "the new binary's check on");
    assert!(error.contains("bad config"), "{error}");
}
