//! The binary channel: install a signed release in place of this binary
//! (`update_url`, `update_public_key`).
//!
//! `update_url` names the release's `manifest.json`, signed with minisign in
//! `manifest.json.minisig` beside it; the files it lists are beside it too.
//! An update fetches and verifies the manifest, picks this platform's file,
//! downloads it to a temporary file beside the binary while hashing it,
//! checks its size and SHA-256, runs it once (`--version`, and `check` on
//! the config), and only then puts it in place, keeping the binary it
//! replaces for `update --rollback` (see [`swap`]). Every failure leaves the
//! binary as it was and says what failed.
//!
//! Used by the `update` subcommand and by the hub's `restart_sidecar` when
//! `update_url` is set (src/main_loop: download while still connected, then
//! exit for the supervisor to start the new binary).

pub mod fetch;
mod restart;
pub mod swap;
#[cfg(test)]
mod tests;
/// Test support: a loopback HTTP server with faulty replies.
#[cfg(any(test, feature = "failpoints"))]
#[doc(hidden)]
pub mod testserver;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::config::Config;
pub use restart::start_for_restart;

/// The manifest's key for the file this binary updates from.
pub const TARGET: Option<&str> = if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
    Some("x86_64-unknown-linux-musl")
} else if cfg!(all(target_os = "linux", target_arch = "aarch64")) {
    Some("aarch64-unknown-linux-musl")
} else if cfg!(all(windows, target_arch = "x86_64")) {
    Some("x86_64-pc-windows-gnu")
} else {
    None
};

const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
const MAX_SIGNATURE_BYTES: u64 = 4 * 1024;

/// The release manifest (scripts/release.sh writes it).
#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub git_revision: String,
    /// By target triple.
    pub files: BTreeMap<String, Artifact>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Artifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// What an update needs, from the config and the process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: Url,
    pub public_key: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub tls_ca_file: Option<PathBuf>,
    /// Passed to the new binary's `check`.
    pub config_path: Option<PathBuf>,
    /// The binary to replace.
    pub exe: PathBuf,
    /// This binary's version.
    pub current_version: String,
    /// The manifest key to install from.
    pub target: String,
}

impl Settings {
    /// From the config; `Ok(None)` without `update_url`.
    pub fn from_config(config: &Config) -> Result<Option<Settings>, String> {
        let (Some(url), Some(key)) = (&config.update_url, &config.update_public_key) else {
            return Ok(None);
        };
        let exe = current_exe()?;
        let target = TARGET.ok_or("there is no release for this platform")?;
        Ok(Some(Settings {
            url: Url::parse(url).map_err(|e| format!("update_url: {e}"))?,
            public_key: key.clone(),
            timeout: config.update_timeout,
            connect_timeout: config.settings.link.connect_timeout,
            tls_ca_file: config.tls_ca_file.clone(),
            config_path: Some(config.config_path.clone()),
            exe,
            current_version: env!("CARGO_PKG_VERSION").to_owned(),
            target: target.to_owned(),
        }))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The manifest's version is newer (`--check`).
    Available { version: String },
    /// The manifest's version is not newer; nothing done.
    UpToDate { version: String },
    /// The new binary is in place.
    Installed { from: String, to: String },
}

/// This binary's path: the system's answer, else (no /proc, as in an empty
/// root) the path it was started by, when that has a directory in it.
pub fn current_exe() -> Result<PathBuf, String> {
    std::env::current_exe().or_else(|e| {
        std::env::args_os()
            .next()
            .map(PathBuf::from)
            .filter(|p| p.components().count() > 1)
            .and_then(|p| std::path::absolute(p).ok())
            .ok_or_else(|| format!("cannot find this binary's path: {e}"))
    })
}

/// For config validation.
pub fn check_update_url(text: &str) -> Result<(), String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    fetch::check_url(&url)
}

/// For config validation: the base64 line of a minisign public key.
pub fn check_public_key(text: &str) -> Result<(), String> {
    minisign_verify::PublicKey::from_base64(text)
        .map(|_| ())
        .map_err(|e| format!("not a minisign public key (the base64 line of the .pub file): {e}"))
}

/// Fetches and verifies the manifest and picks this platform's file.
pub fn fetch_manifest(settings: &Settings, fetcher: &fetch::Fetcher) -> Result<(Manifest, Artifact), String> {
    let manifest_url = &settings.url;
    let signature_url = Url::parse(&format!("{manifest_url}.minisig")).map_err(|e| e.to_string())?;
    let bytes = fetcher
        .read_small(manifest_url, MAX_MANIFEST_BYTES)
        .map_err(|e| format!("cannot fetch the manifest: {e}"))?;
    let signature = fetcher
        .read_small(&signature_url, MAX_SIGNATURE_BYTES)
        .map_err(|e| format!("cannot fetch the manifest's signature: {e}"))?;
    let public_key = minisign_verify::PublicKey::from_base64(&settings.public_key)
        .map_err(|e| format!("update_public_key: {e}"))?;
    let signature = std::str::from_utf8(&signature)
        .ok()
        .and_then(|text| minisign_verify::Signature::decode(text).ok())
        .ok_or("the manifest's signature is not a minisign signature")?;
    public_key
        .verify(&bytes, &signature, false)
        .map_err(|e| format!("the manifest's signature does not verify with update_public_key: {e}"))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("the signed manifest is not valid: {e}"))?;
    let artifact = manifest.files.get(&settings.target).cloned().ok_or_else(|| {
        format!(
            "the manifest (version {}) has no file for this platform ({})",
            manifest.version, settings.target
        )
    })?;
    let plain = !artifact.file.is_empty()
        && !artifact.file.contains(['/', '\\', ':'])
        && artifact.file != "."
        && artifact.file != "..";
    if !plain {
        return Err(format!("the manifest's file name {:?} is not a plain file name", artifact.file));
    }
    if artifact.sha256.len() != 64 || !artifact.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("the manifest's sha256 for {} is not 64 hex digits", artifact.file));
    }
    Ok((manifest, artifact))
}

/// `a` newer than `b`, both `MAJOR.MINOR.PATCH` with an optional
/// `-prerelease` (older than the same version without one).
pub fn is_newer(a: &str, b: &str) -> Result<bool, String> {
    fn parse(v: &str) -> Option<([u64; 3], bool)> {
        let (core, pre) = match v.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (v, None),
        };
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let numbers = [parts.next()??, parts.next()??, parts.next()??];
        parts.next().is_none().then_some((numbers, pre.is_none()))
    }
    let pa = parse(a).ok_or_else(|| format!("version {a:?} is not MAJOR.MINOR.PATCH"))?;
    let pb = parse(b).ok_or_else(|| format!("version {b:?} is not MAJOR.MINOR.PATCH"))?;
    Ok(pa > pb)
}

/// `update` (and `restart_sidecar`): installs the manifest's version when it
/// is newer (or `force`); with `check_only`, only says whether it is.
pub fn update(settings: &Settings, check_only: bool, force: bool) -> Result<Outcome, String> {
    let fetcher =
        fetch::Fetcher::new(settings.timeout, settings.connect_timeout, settings.tls_ca_file.as_ref())?;
    let (manifest, artifact) = fetch_manifest(settings, &fetcher)?;
    let newer = is_newer(&manifest.version, &settings.current_version)?;
    if !newer && !force {
        return Ok(Outcome::UpToDate { version: manifest.version });
    }
    if check_only {
        return Ok(Outcome::Available { version: manifest.version });
    }
    let file_url = settings
        .url
        .join(&artifact.file)
        .map_err(|e| format!("cannot resolve {} against update_url: {e}", artifact.file))?;
    let dir = settings.exe.parent().unwrap_or(Path::new("."));
    remove_leftovers(dir);
    let new = download(&fetcher, &file_url, &artifact, dir)?;
    swap::run_once(&new, settings.config_path.as_deref(), settings.timeout)?;
    swap::replace(&settings.exe, &new, &swap::previous_path(&settings.exe))?;
    // Renamed into place: nothing left to delete.
    let _ = new.keep();
    Ok(Outcome::Installed { from: settings.current_version.clone(), to: manifest.version })
}

/// Temporary files an update killed half-way left beside the binary. (One
/// still in use by another update makes that one fail, harmlessly.)
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(".agentcom-sidecar-new-") || name.starts_with(".agentcom-sidecar-old-");
        if ours && std::fs::remove_file(entry.path()).is_ok() {
            log::info!("removed {}, left by an interrupted update", entry.path().display());
        }
    }
}

/// Downloads `url` into a temporary file in `dir`, checking its size and
/// SHA-256 against `artifact`. The file is removed on any failure.
fn download(
    fetcher: &fetch::Fetcher,
    url: &Url,
    artifact: &Artifact,
    dir: &Path,
) -> Result<tempfile::TempPath, String> {
    let name = &artifact.file;
    let mut file = tempfile::Builder::new()
        .prefix(".agentcom-sidecar-new-")
        .suffix(std::env::consts::EXE_SUFFIX)
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temporary file beside the binary in {}: {e}", dir.display()))?;
    let mut body =
        fetcher.open(url).map_err(|e| format!("cannot download {name}: {e}"))?.take(artifact.size + 1);
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(format!(
                    "cannot download {name}: {e} (after {received} of {} bytes)",
                    artifact.size
                ))
            }
        };
        received += n as u64;
        if received > artifact.size {
            return Err(format!("{name} is larger than the manifest's {} bytes", artifact.size));
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| format!("cannot write {} in {}: {e}", name, dir.display()))?;
    }
    if received < artifact.size {
        return Err(format!("{name} is truncated: {received} of the manifest's {} bytes", artifact.size));
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if !digest.eq_ignore_ascii_case(&artifact.sha256) {
        return Err(format!("{name}'s SHA-256 is {digest}, the manifest says {}", artifact.sha256));
    }
    file.as_file().sync_all().map_err(|e| format!("cannot write {} in {}: {e}", name, dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make {name} executable: {e}"))?;
    }
    // Closed before it is run (a file open for writing cannot be executed).
    Ok(file.into_temp_path())
}

/// `update --rollback`: puts the previous binary back (after running its
/// `--version`), keeping the current one as the previous.
pub fn rollback(exe: &Path, timeout: Duration) -> Result<String, String> {
    let previous = swap::previous_path(exe);
    if !previous.is_file() {
        return Err(format!("no previous binary at {} to roll back to", previous.display()));
    }
    let version = swap::run_once(&previous, None, timeout)
        .map_err(|e| format!("the previous binary {}: {e}", previous.display()))?;
    let staged = exe.with_file_name(format!(".agentcom-sidecar-rollback-{}", std::process::id()));
    std::fs::rename(&previous, &staged)
        .map_err(|e| format!("cannot move {} to {}: {e}", previous.display(), staged.display()))?;
    if let Err(e) = swap::replace(exe, &staged, &previous) {
        let _ = std::fs::rename(&staged, &previous);
        return Err(e);
    }
    Ok(version)
}

/// Exit code of `update` when there is nothing newer (and of `--check`).
pub const EXIT_UP_TO_DATE: u8 = 3;

/// The `update` subcommand. Exit 0: installed (`--check`: a newer version
/// is available); 3: nothing newer; 1: failed (the binary is unchanged);
/// 2: no `update_url` configured.
pub fn command(config: &Config, check_only: bool, force: bool) -> u8 {
    let settings = match Settings::from_config(config) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            eprintln!("agentcom-sidecar: update: no update_url in {}", config.config_path.display());
            return 2;
        }
        Err(e) => {
            eprintln!("agentcom-sidecar: update: {e}");
            return 1;
        }
    };
    match update(&settings, check_only, force) {
        Ok(Outcome::Available { version }) => {
            crate::outln!("version {version} is available (this is {})", settings.current_version);
            0
        }
        Ok(Outcome::UpToDate { version }) => {
            crate::outln!(
                "the release ({version}) is not newer than this binary ({}); nothing to do (--force installs it)",
                settings.current_version
            );
            EXIT_UP_TO_DATE
        }
        Ok(Outcome::Installed { from, to }) => {
            crate::outln!(
                "installed version {to} at {} (was {from}; `update --rollback` puts it back); restart the sidecar to run it",
                settings.exe.display()
            );
            0
        }
        Err(e) => {
            eprintln!("agentcom-sidecar: update failed, the binary is unchanged: {e}");
            1
        }
    }
}

/// `update --rollback`.
pub fn rollback_command(timeout: Duration) -> u8 {
    let result = current_exe().and_then(|exe| rollback(&exe, timeout).map(|version| (exe, version)));
    match result {
        Ok((exe, version)) => {
            crate::outln!(
                "rolled back to version {version} at {}; restart the sidecar to run it",
                exe.display()
            );
            0
        }
        Err(e) => {
            eprintln!("agentcom-sidecar: rollback failed, the binary is unchanged: {e}");
            1
        }
    }
}
