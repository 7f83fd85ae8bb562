//! A log line in the configured format, made without `tracing`, for an event that
//! happens once per request (the relay's access line), and made by the log writer's
//! thread rather than on the request path.
//!
//! Why: through `tracing`, that one line cost the relay about 3,700 instructions per
//! request (callgrind, one caller), 7 % of all its work on a small request: a dynamic
//! call per field into the field visitor, the span-context lookups, the formatter's
//! thread-local buffers and the writer's indirection. Written directly on the request
//! path it still cost about 2,000 and a wall-clock read, with the caches cold from the
//! request's other work. With [`defer`] the caller hands over the line's fields (an
//! allocation and a lock); the log writer makes the text of a whole batch of lines back
//! to back ([`crate::log_writer::Deferred`]), stamped with the time each event happened.
//!
//! The bytes are exactly what the `tracing` path writes for the same event outside any
//! span, in both formats; tests hold the two together. So callers keep their `tracing`
//! event as the fallback, and [`defer`] gives the fields back for it whenever the direct
//! line could differ: when a span is current (its name and fields belong in the line),
//! or when [`crate::logging::init`] has not installed direct output (tests, other
//! subscribers). Filtering stays with `tracing`: ask `tracing::enabled!` first.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use tracing::Level;

use crate::log_fields::{
    push_f64_value, push_message_str, push_str_value, push_thousandths, thousandths,
};
use crate::log_format::level_text;
use crate::log_time::CachedSecondTime;
use crate::log_writer::{BatchClock, BatchWriter, Deferred};
use crate::logging::LogFormat;

/// Where direct lines go and how they look: set once by [`crate::logging::init`].
struct Output {
    format: LogFormat,
    writer: BatchWriter,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Makes [`defer`] available, writing through `writer` (the subscriber's own writer).
pub(crate) fn install(format: LogFormat, writer: BatchWriter) {
    let _ = OUTPUT.set(Output { format, writer });
}

/// The fields of a line that the log writer's thread makes (see [`defer`]).
pub trait DeferredFields: Send + 'static {
    /// When the event happened: the line's timestamp.
    fn at(&self) -> Instant;
    /// Pushes the fields in the order the `tracing` event records them.
    fn fields(&self, line: &mut Line);
}

/// Hands the line to the log writer, which makes its text later in its batch. Gives
/// `fields` back when the caller must log through `tracing` instead: no direct output
/// installed, or a span current.
pub fn defer<F: DeferredFields>(
    level: Level,
    target: &'static str,
    message: &'static str,
    fields: F,
) -> Result<(), F> {
    let Some(out) = OUTPUT.get() else {
        return Err(fields);
    };
    if in_span() {
        return Err(fields);
    }
    out.writer.defer(Box::new(DeferredLine {
        format: out.format,
        level,
        target,
        message,
        fields,
    }));
    Ok(())
}

/// A deferred line as the log writer holds it.
struct DeferredLine<F> {
    format: LogFormat,
    level: Level,
    target: &'static str,
    message: &'static str,
    fields: F,
}

impl<F: DeferredFields> Deferred for DeferredLine<F> {
    fn render(&self, clock: &BatchClock, out: &mut String) {
        let time = clock.wall(self.fields.at());
        let buf = std::mem::take(out);
        let mut line = Line::start(
            buf,
            self.format,
            self.level,
            self.target,
            self.message,
            Some(time),
        );
        self.fields.fields(&mut line);
        *out = line.into_text();
    }
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
        Line::start(String::new(), format, level, target, message, None)
    }

    /// A line appended to `buf`, stamped `time` (now when `None`).
    fn start(
        mut buf: String,
        format: LogFormat,
        level: Level,
        target: &'static str,
        message: &str,
        time: Option<SystemTime>,
    ) -> Line {
        buf.reserve(256);
        let push_time = |buf: &mut String| match time {
            Some(t) => CachedSecondTime::push_time(buf, t),
            None => CachedSecondTime::push_now(buf),
        };
        let json = format == LogFormat::Json;
        if json {
            buf.push_str("{\"timestamp\":\"");
            // The timestamp has no character that JSON escapes.
            push_time(&mut buf);
            buf.push_str("\",\"level\":\"");
            buf.push_str(level.as_str());
            buf.push_str("\",\"message\":");
            json_str(&mut buf, message);
        } else {
            push_time(&mut buf);
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
}

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

    /// Fields of a deferred line, as a caller keeps them.
    struct Fixed {
        at: Instant,
    }

    impl DeferredFields for Fixed {
        fn at(&self) -> Instant {
            self.at
        }
        fn fields(&self, l: &mut Line) {
            l.str("node", "edge-1")
                .str("path", "/a b")
                .u64("status", 200)
                .f64("duration_ms", 0.412);
        }
    }

    #[test]
    fn a_deferred_line_is_the_direct_line_stamped_with_its_own_time() {
        for format in [LogFormat::Pretty, LogFormat::Json] {
            let at = Instant::now();
            let d = DeferredLine {
                format,
                level: Level::INFO,
                target: TARGET,
                message: "request",
                fields: Fixed { at },
            };
            std::thread::sleep(std::time::Duration::from_millis(5));
            let clock = BatchClock::now();
            let mut out = String::new();
            d.render(&clock, &mut out);
            let mut direct = Line::new(format, Level::INFO, TARGET, "request");
            d.fields.fields(&mut direct);
            assert_eq!(untimed(&out), untimed(&direct.into_text()), "{format:?}");
            // Stamped when the event happened, not when the writer rendered it.
            let mut stamp = String::new();
            CachedSecondTime::push_time(&mut stamp, clock.wall(at));
            assert!(out.contains(&stamp), "{out} lacks {stamp}");
            let mut rendered_at = String::new();
            CachedSecondTime::push_time(&mut rendered_at, clock.wall(clock.mono()));
            assert_ne!(stamp, rendered_at);
        }
    }

    #[test]
    fn no_deferred_line_without_output() {
        // Not installed in unit tests: the fields come back for the tracing path.
        let back = defer(Level::INFO, TARGET, "x", Fixed { at: Instant::now() });
        assert!(back.is_err());
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
    fn no_direct_line_inside_a_span() {
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
