//! The shell's side of [`crate::supervisor`]: the watchdog beat from the loop
//! itself, and the status line.

use std::time::Instant;

use super::Shell;
use crate::supervisor::status_line;

impl Shell {
    /// Beats the supervisor's watchdog when due, and gives it the status
    /// line when that changed. Called once per loop turn and when the loop
    /// wakes for the beat alone.
    pub(super) fn supervise(&mut self, now: Instant) {
        if self.supervisor.beat(now) {
            self.beats += 1;
            // Test hook, like `crate::failpoint`'s `hang:` points:
            // `AGENTCOM_FAILPOINT=hang:main_loop` hangs the loop for good
            // after its third watchdog ping (the process lives on), saying
            // so in the status line first.
            #[cfg(feature = "failpoints")]
            if self.beats == 3 && self.failpoint.as_deref() == Some("hang:main_loop") {
                log::error!("failpoint hang:main_loop reached: the loop hangs");
                self.supervisor.status("failpoint hang:main_loop: the loop hangs");
                loop {
                    std::thread::park();
                }
            }
        }
        let line =
            status_line(self.state.is_shutting_down(), self.state.hub_ready(), self.state.held_task_id());
        if line != self.supervisor_status {
            self.supervisor.status(&line);
            self.supervisor_status = line;
        }
    }
}
