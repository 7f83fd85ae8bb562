//! Log output shared by both binaries: `pretty` for people, `json` for log pipelines.
//! The level comes from `RUST_LOG` when set, else from the config.

use tracing_subscriber::fmt::MakeWriter;
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
pub type LogGuard = crate::log_writer::FlushGuard;

/// Installs the global subscriber. Logs go to stderr (stdout stays for program output)
/// through [`crate::log_writer`]: a request's log line is a copy into a buffer, never a
/// wait on stderr nor a wake-up of another thread. Lines written directly
/// ([`crate::log_direct`]) go through the same writer, in the same format.
pub fn init(cfg: &LogConfig) -> LogGuard {
    use tracing_subscriber::util::SubscriberInitExt;
    let (writer, guard) = crate::log_writer::spawn(std::io::stderr());
    crate::log_direct::install(cfg.format, writer.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    subscriber(cfg.format, filter, writer).init();
    guard
}

/// The subscriber [`init`] installs, with `filter`, writing through `writer`: tests build
/// it too, to hold other output to the same bytes.
pub fn subscriber<W>(format: LogFormat, filter: EnvFilter, writer: W) -> tracing::Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(crate::log_time::CachedSecondTime);
    match format {
        LogFormat::Pretty => builder
            .fmt_fields(crate::log_fields::LogfmtFields)
            .with_ansi(false)
            .event_format(crate::log_format::CompactLine)
            .into(),
        LogFormat::Json => builder.json().flatten_event(true).into(),
    }
}
