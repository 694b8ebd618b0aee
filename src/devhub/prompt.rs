//! The devhub's command prompt: what a person types at `agentcom-devhub`,
//! parsed, and carried out on a running hub. A plain line pushes a task; a
//! line starting with `/` is a command, so agent authors and operators can
//! rehearse every frame a hub sends a sidecar.

use serde_json::{json, Value};

use super::{DevHub, TaskStatus};

pub const HELP: &str = "\
Type a task description and press Enter to push it to the agent. Commands:
  /second DESCRIPTION    push a task now even if the agent is busy (a second push)
  /cancel [TASK_ID]      cancel a task (default: the agent's current one): task_cancelled
  /restart [REASON]      send restart_sidecar
  /ratelimit TYPE [MS]   drop the next TYPE frame and answer rate_limited (default 1000 ms)
  /warn [REMAINING]      send rate_limit_warning (tier normal, capacity 60; default 5)
  /send JSON             send any frame as it is (task_reassign, task_continue, ...)
  /drop                  drop the agent's connection (no close frame)
  /close CODE [REASON]   close the agent's connection with CODE
  /silent on|off         stop or resume answering (a half-open hub)
  /state                 print the agent's state machine and every task
  /help                  print this help
";

/// One line typed at the prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Task(String),
    Second(String),
    Cancel(Option<String>),
    Restart(String),
    RateLimit { frame_type: String, retry_after_ms: u64 },
    Warn(u64),
    Send(Value),
    Drop,
    Close { code: u16, reason: String },
    Silent(bool),
    State,
    Help,
}

/// Parses one line; `Ok(None)` for a blank one.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Some(Command::Task(line.to_string())));
    };
    let (name, rest) = match command.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (command, ""),
    };
    let mut words = rest.split_whitespace();
    let number = |text: Option<&str>, what: &str| -> Result<Option<u64>, String> {
        text.map(|text| text.parse::<u64>().map_err(|_| format!("{what} wants a number, not {text:?}")))
            .transpose()
    };
    let command = match name {
        "second" if rest.is_empty() => return Err("/second needs a description".to_string()),
        "second" => Command::Second(rest.to_string()),
        "cancel" => Command::Cancel(words.next().map(str::to_string)),
        "restart" if rest.is_empty() => Command::Restart("admin_commanded".to_string()),
        "restart" => Command::Restart(rest.to_string()),
        "ratelimit" => {
            let Some(frame_type) = words.next() else {
                return Err("/ratelimit needs a frame type, e.g. /ratelimit task_complete".to_string());
            };
            let retry_after_ms = number(words.next(), "/ratelimit")?.unwrap_or(1000);
            Command::RateLimit { frame_type: frame_type.to_string(), retry_after_ms }
        }
        "warn" => Command::Warn(number(words.next(), "/warn")?.unwrap_or(5)),
        "send" => match serde_json::from_str::<Value>(rest) {
            Ok(frame) if frame.get("type").is_some_and(Value::is_string) => Command::Send(frame),
            Ok(_) => return Err("/send wants a JSON object with a \"type\"".to_string()),
            Err(err) => return Err(format!("/send wants JSON: {err}")),
        },
        "drop" => Command::Drop,
        "close" => {
            let code = number(words.next(), "/close")?.ok_or("/close needs a code, e.g. /close 1008")?;
            let code = u16::try_from(code).map_err(|_| format!("/close: {code} is not a close code"))?;
            let reason = rest.split_once(char::is_whitespace).map_or("", |(_, reason)| reason.trim());
            Command::Close { code, reason: reason.to_string() }
        }
        "silent" => match rest {
            "on" => Command::Silent(true),
            "off" => Command::Silent(false),
            _ => return Err("/silent wants on or off".to_string()),
        },
        "state" => Command::State,
        "help" | "h" | "?" => Command::Help,
        other => return Err(format!("unknown command /{other}; /help lists them")),
    };
    Ok(Some(command))
}

/// Carries a command out for `agent_id`; returns what to print.
pub fn run(hub: &DevHub, agent_id: &str, command: Command) -> String {
    let not_connected = || format!("** {agent_id} has no identified connection: nothing sent");
    match command {
        Command::Task(description) => {
            let task_id = hub.push_task(agent_id, &description, json!({}));
            match hub.task(&task_id) {
                Some(task) if task.status == TaskStatus::Assigned => {
                    format!("** task {task_id} assigned, generation {}", task.generation)
                }
                _ => format!("** task {task_id} queued until {agent_id} is identified and idle"),
            }
        }
        Command::Second(description) => {
            if hub.agent(agent_id).is_none() {
                return not_connected();
            }
            let task_id = hub.new_task_id();
            let generation = hub.push_task_now(agent_id, &task_id, &description, json!({}));
            format!("** task {task_id} pushed now, generation {generation}")
        }
        Command::Cancel(task_id) => {
            let task_id = task_id.or_else(|| hub.agent(agent_id).and_then(|agent| agent.current_task));
            match task_id {
                Some(task_id) if hub.cancel_task(&task_id) => format!("** task {task_id} cancelled"),
                Some(task_id) => format!("** task {task_id} is unknown or already finished"),
                None => format!("** {agent_id} has no current task; name one: /cancel TASK_ID"),
            }
        }
        Command::Restart(reason) => {
            if hub.restart_sidecar(agent_id, &reason) {
                format!("** restart_sidecar sent ({reason})")
            } else {
                not_connected()
            }
        }
        Command::RateLimit { frame_type, retry_after_ms } => {
            hub.rate_limit_next(&frame_type, retry_after_ms);
            format!("** the next {frame_type} frame will be dropped and answered rate_limited ({retry_after_ms} ms)")
        }
        Command::Warn(remaining) => {
            let frame = json!({"type": "rate_limit_warning", "tier": "normal", "remaining": remaining, "capacity": 60});
            if hub.send_raw(agent_id, frame) {
                "** rate_limit_warning sent".to_string()
            } else {
                not_connected()
            }
        }
        Command::Send(frame) => {
            if hub.send_raw(agent_id, frame) {
                "** sent".to_string()
            } else {
                not_connected()
            }
        }
        Command::Drop => {
            hub.drop_connection(agent_id);
            "** connection dropped".to_string()
        }
        Command::Close { code, reason } => {
            hub.close_connection(agent_id, code, &reason);
            format!("** closing with {code}")
        }
        Command::Silent(silent) => {
            hub.set_silent(silent);
            format!("** silent {}", if silent { "on" } else { "off" })
        }
        Command::State => describe_state(hub, agent_id),
        Command::Help => HELP.trim_end().to_string(),
    }
}

fn describe_state(hub: &DevHub, agent_id: &str) -> String {
    let mut lines = vec![format!("** hub {}", hub.version())];
    match hub.agent(agent_id) {
        Some(agent) => lines.push(format!(
            "** agent {agent_id}: {:?}, current task {}, violations {} (total {}), rate limited {}",
            agent.state,
            agent.current_task.as_deref().unwrap_or("none"),
            agent.violations,
            hub.violations(agent_id),
            agent.rate_limited,
        )),
        None => lines.push(format!("** agent {agent_id}: not connected")),
    }
    for task in hub.tasks() {
        lines.push(format!(
            "** task {} gen {} {:?}{}",
            task.task_id,
            task.generation,
            task.status,
            task.assigned_to.map(|agent| format!(" to {agent}")).unwrap_or_default()
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).expect("parses").expect("not blank")
    }

    #[test]
    fn lines_parse_into_commands() {
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(ok(" fix the bug "), Command::Task("fix the bug".to_string()));
        assert_eq!(ok("/second another one"), Command::Second("another one".to_string()));
        assert_eq!(ok("/cancel"), Command::Cancel(None));
        assert_eq!(ok("/cancel task-1"), Command::Cancel(Some("task-1".to_string())));
        assert_eq!(ok("/restart"), Command::Restart("admin_commanded".to_string()));
        assert_eq!(ok("/restart new build"), Command::Restart("new build".to_string()));
        assert_eq!(
            ok("/ratelimit task_complete"),
            Command::RateLimit { frame_type: "task_complete".to_string(), retry_after_ms: 1000 }
        );
        assert_eq!(
            ok("/ratelimit ping 250"),
            Command::RateLimit { frame_type: "ping".to_string(), retry_after_ms: 250 }
        );
        assert_eq!(ok("/warn"), Command::Warn(5));
        assert_eq!(ok("/warn 2"), Command::Warn(2));
        assert_eq!(
            ok(r#"/send {"type":"task_reassign","task_id":"t"}"#),
            Command::Send(json!({"type": "task_reassign", "task_id": "t"}))
        );
        assert_eq!(ok("/drop"), Command::Drop);
        assert_eq!(
            ok("/close 1008 cooldown active: retry in 5s"),
            Command::Close { code: 1008, reason: "cooldown active: retry in 5s".to_string() }
        );
        assert_eq!(ok("/close 1011"), Command::Close { code: 1011, reason: String::new() });
        assert_eq!(ok("/silent on"), Command::Silent(true));
        assert_eq!(ok("/state"), Command::State);
        assert_eq!(ok("/help"), Command::Help);
    }

    #[test]
    fn mistakes_are_explained() {
        for (line, expected) in [
            ("/second", "needs a description"),
            ("/ratelimit", "needs a frame type"),
            ("/ratelimit ping soon", "wants a number"),
            ("/send {", "wants JSON"),
            ("/send [1]", "with a \"type\""),
            ("/close", "needs a code"),
            ("/close 70000", "not a close code"),
            ("/silent maybe", "on or off"),
            ("/teleport", "unknown command"),
        ] {
            let err = parse(line).expect_err(line);
            assert!(err.contains(expected), "{line}: {err}");
        }
    }
}
