//! Log output shared by both binaries: `pretty` for people, `json` for log pipelines.
//! The level comes from `RUST_LOG` when set, else from the config.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Default filter when `RUST_LOG` is unset, e.g. `info` or `tether_relay=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// Keeps the log writer running; logs still buffered are written when it drops, so hold
/// it until the process ends.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber. Logs go to stderr (stdout stays for program output)
/// through a background writer: a request's log line is a queue push, never a wait on
/// the stderr lock shared by every request.
pub fn init(cfg: &LogConfig) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    // Buffered: the writer thread drains every queued line into the buffer and flushes
    // once the queue is empty, so a burst of requests costs one write(2), not one each.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match cfg.format {
        LogFormat::Pretty => builder.with_ansi(false).compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
