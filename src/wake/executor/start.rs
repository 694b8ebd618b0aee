//! Starting an attempt's child: the task file, the command (gated or not),
//! its output files and its exit waiter.

use std::io::{self, PipeWriter, Write};
use std::thread;

use crossbeam_channel::{bounded, Receiver};

use super::super::capture::{bound_while_alive, fresh_output_file};
use super::super::render::{absolute, render_command, task_environment, write_task_file};
use super::super::{run, sys, WakeRequest};
use super::ending::{absolute_path, mark_started};
use super::{kill_tree, ChildExited};

/// A started child: its pid, process tree and identity, and the waiter's
/// channel.
pub(super) struct Running {
    pub(super) pid: u32,
    pub(super) tree: sys::ProcessTree,
    pub(super) identity: super::super::WakeIdentity,
    pub(super) exit_rx: Receiver<ChildExited>,
    /// The write end of a gated command's gate, until it is opened.
    pub(super) gate: Option<PipeWriter>,
}

/// Writes the task file and starts the wake command with its output files
/// and exit waiter. An error is the text for [`WakeStatus::SpawnFailed`].
pub(super) fn start_child(request: &WakeRequest, gated: bool) -> Result<Running, String> {
    write_task_file(&request.task_file, &request.task_json)
        .map_err(|error| format!("cannot write task file {}: {error}", request.task_file.display()))?;
    // A cancel marker of an earlier hold of this task id is old news.
    let _ = std::fs::remove_file(run::cancel_marker(&request.results_dir, &request.task_id));
    let exit_file = run::exit_file(&request.results_dir, &request.task_id);
    if let Some(dir) = exit_file.parent() {
        std::fs::create_dir_all(dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    }
    match std::fs::remove_file(&exit_file) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot remove the old {}: {error}", exit_file.display())),
    }
    let (mut command, gate) =
        sys::shell_command(&render_command(&request.command_template), gated, &absolute_path(&exit_file))
            .map_err(|error| format!("cannot make the wake command's gate: {error}"))?;
    // A launch command's output files, kept bounded once it runs.
    let mut to_bound = Vec::new();
    let (stdout, stderr) = (
        run::stdout_file(&request.results_dir, &request.task_id),
        run::stderr_file(&request.results_dir, &request.task_id),
    );
    if request.mode.is_launch() {
        // Files, so that a command that outlives the sidecar (a synchronous
        // script at work) can keep writing; only logged, so kept bounded.
        let open = |path: &std::path::Path| {
            fresh_output_file(path).map_err(|error| format!("cannot create {}: {error}", path.display()))
        };
        let (out, out_ours) = open(&stdout)?;
        let (err, err_ours) = open(&stderr)?;
        command.stdout(out).stderr(err);
        to_bound = vec![out_ours, err_ours];
    } else {
        // Run mode: the agent's output goes to files, never into memory,
        // and outlives the sidecar (no pipe to break).
        let open = |path: &std::path::Path| {
            std::fs::File::create(path).map_err(|error| format!("cannot create {}: {error}", path.display()))
        };
        command.stdout(open(&stdout)?);
        command.stderr(open(&stderr)?);
    }
    command.envs(task_environment(request));
    // An empty path means the sidecar's own working directory.
    if !request.work_dir.as_os_str().is_empty() {
        if !request.work_dir.is_dir() {
            return Err(format!("the working directory {} is not a directory", request.work_dir.display()));
        }
        command.current_dir(absolute(&request.work_dir));
    }
    sys::isolate(&mut command);
    let mut child = command.spawn().map_err(|error| error.to_string())?;
    let pid = child.id();
    // At once, before the command can start much: on Windows this puts it
    // in its job object.
    let tree = match sys::ProcessTree::track(&child) {
        Ok(tree) => tree,
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot track the wake command's processes: {error}"));
        }
    };
    let identity = sys::identity(&child);
    if !to_bound.is_empty() {
        bound_while_alive(to_bound, identity.clone(), request.output_check);
    }

    let (exit_tx, exit_rx) = bounded::<ChildExited>(1);
    thread::Builder::new()
        .name("wake-waiter".to_string())
        .spawn(move || {
            let result = sys::wait_until_exited(&mut child);
            if let Err(crossbeam_channel::SendError((mut child, _))) = exit_tx.send((child, result)) {
                // The executor gave up on us (KILL_FAILSAFE); reap the child
                // so it does not stay a zombie.
                let _ = child.wait();
            }
        })
        .map_err(|error| {
            // The child went down with the closure; we can still kill its
            // tree, but not reap it.
            kill_tree(pid, &tree);
            format!("cannot start the wake waiter thread: {error}")
        })?;
    // Our copy of the gate's read end went with `command`.
    drop(command);
    Ok(Running { pid, tree, identity, exit_rx, gate })
}

/// Lets a gated command run: one line on its gate, then the pipe closes. A
/// command that has already exited (a write error) is reported by its
/// waiter as usual.
pub(super) fn open_gate(gate: &mut Option<PipeWriter>, request: &WakeRequest) {
    mark_started(request);
    if let Some(mut writer) = gate.take() {
        if let Err(error) = writer.write_all(b"go\n") {
            log::debug!("cannot release the wake command of task {}: {error}", request.task_id);
        }
    }
}
