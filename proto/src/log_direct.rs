//! A log line written straight into the log buffer, in the configured format, for an
//! event that happens once per request (the relay's access line).
//!
//! Why: through `tracing`, that one line cost the relay about 3,700 instructions per
//! request (callgrind, one caller), 7 % of all its work on a small request: a dynamic
//! call per field into the field visitor, the span-context lookups, the formatter's
//! thread-local buffers and the writer's indirection. Written directly it costs about
//! 2,400: a timestamp, the fields pushed onto a reused buffer, one copy into the log
//! writer's.
//!
//! The bytes are exactly what the `tracing` path writes for the same event outside any
//! span, in both formats; tests hold the two together. So callers keep their `tracing`
//! event as the fallback, and [`line`] sends them to it whenever the direct line could
//! differ: when a span is current (its name and fields belong in the line), or when
//! [`crate::logging::init`] has not installed direct output (tests, other subscribers).
//! Filtering stays with `tracing`: ask `tracing::enabled!` first.

use std::cell::Cell;
use std::io::Write as _;
use std::sync::OnceLock;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

use crate::log_fields::{
    push_f64_value, push_message_str, push_str_value, push_thousandths, thousandths,
};
use crate::log_format::level_text;
use crate::log_time::CachedSecondTime;
use crate::log_writer::BatchWriter;
use crate::logging::LogFormat;

/// Where direct lines go and how they look: set once by [`crate::logging::init`].
struct Output {
    format: LogFormat,
    writer: BatchWriter,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Makes [`line`] available, writing through `writer` (the subscriber's own writer).
pub(crate) fn install(format: LogFormat, writer: BatchWriter) {
    let _ = OUTPUT.set(Output { format, writer });
}

/// A line to fill in and [`Line::write`], or `None` when the caller must log through
/// `tracing` instead (no direct output installed, or a span is current).
pub fn line(level: Level, target: &'static str, message: &str) -> Option<Line> {
    let out = OUTPUT.get()?;
    if in_span() {
        return None;
    }
    Some(Line::new(out.format, level, target, message))
}

/// Whether an enabled span is current on this thread (a disabled one is never created).
fn in_span() -> bool {
    // Not `Current::is_known`: that says whether the subscriber tracks spans at all.
    tracing::dispatcher::get_default(|d| d.current_span().id().is_some())
}

/// One event's line, built field by field in the order the `tracing` event records them
/// (message first, then the fields as written in the macro).
pub struct Line {
    /// `Some(target)` in the `json` format, where the target comes last.
    json_target: Option<&'static str>,
    buf: String,
}

impl Line {
    /// Starts a line with its timestamp, level, target (`pretty`) and message.
    pub fn new(format: LogFormat, level: Level, target: &'static str, message: &str) -> Line {
        let mut buf = SPARE.take();
        buf.clear();
        buf.reserve(256);
        let json = format == LogFormat::Json;
        if json {
            buf.push_str("{\"timestamp\":\"");
            // The timestamp has no character that JSON escapes.
            CachedSecondTime::push_now(&mut buf);
            buf.push_str("\",\"level\":\"");
            buf.push_str(level.as_str());
            buf.push_str("\",\"message\":");
            json_str(&mut buf, message);
        } else {
            CachedSecondTime::push_now(&mut buf);
            buf.push(' ');
            buf.push_str(level_text(&level));
            buf.push_str(target);
            buf.push_str(": ");
            push_message_str(&mut buf, message);
        }
        Line {
            json_target: json.then_some(target),
            buf,
        }
    }

    /// ` key=` (`pretty`) or `,"key":` (`json`). Keys are field names: identifiers,
    /// which neither format quotes or escapes.
    fn key(&mut self, key: &str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if self.json_target.is_some() {
            self.buf.push_str(",\"");
            self.buf.push_str(key);
            self.buf.push_str("\":");
        } else {
            self.buf.push(' ');
            self.buf.push_str(key);
            self.buf.push('=');
        }
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        if self.json_target.is_some() {
            json_str(&mut self.buf, value);
        } else {
            let _ = push_str_value(&mut self.buf, value);
        }
        self
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        self.key(key);
        if self.json_target.is_some() {
            match thousandths(value) {
                // Plain decimals, which serde_json writes the same way.
                Some(m) => push_thousandths(&mut self.buf, m),
                None => {
                    // Exponents, NaN (`null`): serde_json's own text.
                    let text = serde_json::to_string(&value).unwrap_or_default();
                    self.buf.push_str(&text);
                }
            }
        } else {
            push_f64_value(&mut self.buf, value);
        }
        self
    }

    /// The whole line, newline included.
    pub fn into_text(mut self) -> String {
        if let Some(target) = self.json_target {
            self.buf.push_str(",\"target\":");
            json_str(&mut self.buf, target);
            self.buf.push('}');
        }
        self.buf.push('\n');
        self.buf
    }

    /// Hands the line to the log writer, as one write (like a `tracing` line).
    pub fn write(self) {
        let Some(out) = OUTPUT.get() else { return };
        let text = self.into_text();
        let _ = out.writer.make_writer().write_all(text.as_bytes());
        if text.capacity() <= KEEP_BUFFER {
            SPARE.set(text);
        }
    }
}

thread_local! {
    /// The last written line's buffer, reused by the next line on this thread.
    static SPARE: Cell<String> = const { Cell::new(String::new()) };
}

/// The largest line buffer kept for reuse: one huge line must not pin its memory.
const KEEP_BUFFER: usize = 4096;

/// A JSON string as serde_json writes it (the `json` format's values go through it).
fn json_str(buf: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push('"');
        buf.push_str(s);
        buf.push('"');
        return;
    }
    // Rare: let serde_json escape it.
    buf.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_capture::Capture;
    use crate::logging::subscriber;

    const TARGET: &str = "tether_proto::log_direct::tests";

    /// A line's text with its timestamp cut out (it differs between two lines).
    fn untimed(line: &str) -> String {
        let ts = "2026-11-27T06:59:12.123456Z".len();
        match line.strip_prefix("{\"timestamp\":\"") {
            Some(rest) => format!("{{\"timestamp\":\"{}", &rest[ts..]),
            None => line[ts..].to_owned(),
        }
    }

    fn through_tracing(format: LogFormat, emit: impl FnOnce()) -> String {
        let out = Capture::default();
        let info = tracing_subscriber::EnvFilter::new("info");
        tracing::dispatcher::with_default(&subscriber(format, info, out.clone()), emit);
        out.text()
    }

    #[test]
    fn lines_match_the_tracing_path_in_both_formats() {
        for format in [LogFormat::Pretty, LogFormat::Json] {
            let theirs = through_tracing(format, || {
                tracing::info!(
                    plain = "node-a",
                    spaced = "two words",
                    quoted = "say \"hi\"",
                    empty = "",
                    control = "bell\u{7}esc\u{1b}",
                    unicode = "grüße",
                    count = 42u64,
                    zero = 0u64,
                    ms = 0.412,
                    whole = 3.0,
                    huge = 1e300,
                    tiny = 1.5e-7,
                    nan = f64::NAN,
                    negative = -2.5,
                    yes = true,
                    no = false,
                    "request"
                )
            });
            let mut l = Line::new(format, Level::INFO, TARGET, "request");
            l.str("plain", "node-a")
                .str("spaced", "two words")
                .str("quoted", "say \"hi\"")
                .str("empty", "")
                .str("control", "bell\u{7}esc\u{1b}")
                .str("unicode", "grüße")
                .u64("count", 42)
                .u64("zero", 0)
                .f64("ms", 0.412)
                .f64("whole", 3.0)
                .f64("huge", 1e300)
                .f64("tiny", 1.5e-7)
                .f64("nan", f64::NAN)
                .f64("negative", -2.5)
                .bool("yes", true)
                .bool("no", false);
            let ours = l.into_text();
            assert_eq!(untimed(&ours), untimed(&theirs), "{format:?}");
        }
    }

    #[test]
    fn a_message_needing_escapes_matches_too() {
        for format in [LogFormat::Pretty, LogFormat::Json] {
            let theirs = through_tracing(format, || tracing::warn!("cut \"short\"\u{1b}"));
            let ours = Line::new(format, Level::WARN, TARGET, "cut \"short\"\u{1b}").into_text();
            assert_eq!(untimed(&ours), untimed(&theirs), "{format:?}");
        }
    }

    #[test]
    fn no_direct_line_inside_a_span_or_without_output() {
        // Not installed in unit tests: callers fall back to tracing.
        assert!(line(Level::INFO, TARGET, "x").is_none());
        let _ = through_tracing(LogFormat::Pretty, || {
            assert!(!in_span(), "no span entered");
            let hidden = tracing::debug_span!("hidden");
            let _h = hidden.enter();
            assert!(!in_span(), "a span below the level is not created");
            let shown = tracing::info_span!("shown");
            let _s = shown.enter();
            assert!(in_span(), "an enabled span is current");
        });
    }
}
