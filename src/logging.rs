//! The log format, shared by the console run (stderr/stdout, for pm2 and
//! systemd's journal) and the Windows service (a file).

/// Levelled lines. Only this crate's records pass: dependencies
/// (tungstenite at trace level) could otherwise print frame payloads, and
/// the identify frame carries the token.
///
/// Every line starts with the one timestamp it carries (pm2's own `time`
/// prefix is off in scripts/ecosystem.config.js), in UTC with milliseconds,
/// always 24 characters: `2026-12-01T21:16:24.180Z [INFO] ...`.
pub fn config() -> simplelog::Config {
    simplelog::ConfigBuilder::new()
        .add_filter_allow_str("agentcom_sidecar")
        .set_thread_mode(simplelog::ThreadLogMode::Names)
        .set_thread_level(log::LevelFilter::Error)
        .set_target_level(log::LevelFilter::Off)
        .set_time_format_custom(simplelog::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .build()
}
