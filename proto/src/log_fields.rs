//! How the `pretty` log format writes an event's fields: `name=value` pairs, logfmt style.
//!
//! Why not tracing-subscriber's default: it formats every field through `write!` with
//! a `{:?}` of the value, about 1,000 instructions a field (measured with callgrind on
//! the relay's one access-log line per request: 12,800 instructions for its fields, the
//! largest single cost of a request in the relay). Here integers, booleans, floats and
//! plain strings are written directly; only other values go through `Debug`.
//!
//! Strings are written bare when they are plain (printable ASCII without spaces, quotes,
//! backslashes or `=`), quoted and escaped otherwise, so a line always splits back into
//! its fields. Terminal control characters never reach the output, in messages or in
//! values.

use std::cell::RefCell;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// The `FormatFields` for the `pretty` format.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogfmtFields;

/// The most a thread's field buffer keeps between lines: one huge field must not pin its
/// memory to the thread for good.
const KEEP_BUFFER: usize = 16 * 1024;

impl<'w> FormatFields<'w> for LogfmtFields {
    /// A line's fields are rendered into a per-thread buffer and handed to the
    /// subscriber's writer in one piece: that writer is a `&mut dyn fmt::Write`, and
    /// writing a dozen fields straight into it took four dynamic calls a field (about
    /// 1,100 instructions of the relay's access line, measured with callgrind).
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        thread_local! {
            static FIELDS: RefCell<String> = const { RefCell::new(String::new()) };
        }
        FIELDS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                let r = render(&mut buf, fields).and_then(|()| writer.write_str(&buf));
                buf.clear();
                buf.shrink_to(KEEP_BUFFER);
                r
            }
            // Re-entered: a field's `Debug` logged an event of its own. That one gets a
            // buffer of its own.
            Err(_) => {
                let mut buf = String::new();
                render(&mut buf, fields)?;
                writer.write_str(&buf)
            }
        })
    }
}

fn render<R: RecordFields>(buf: &mut String, fields: R) -> fmt::Result {
    let mut v = Visitor {
        w: buf,
        first: true,
        result: Ok(()),
    };
    fields.record(&mut v);
    v.result
}

/// `Some(m)` when `value` is the double nearest to `m / 1000` for a whole `m` (the access
/// line's `duration_ms` is whole microseconds over 1,000), so that [`push_thousandths`]
/// can write it as `ryu` would (`0.412`, `64.8`, `3.0`): the shortest text that reads back
/// as that double is the decimal itself while it has at most 15 significant digits. `ryu`'s
/// general algorithm cost about 300 instructions a line; this is a division and an
/// `itoa`. A test checks the two against each other.
pub(crate) fn thousandths(value: f64) -> Option<u64> {
    // Below 1e12, `m` has at most 15 digits.
    if !(0.0..1e12).contains(&value) || value.is_sign_negative() {
        return None; // out of range, NaN, or -0.0 (which `ryu` writes with its sign)
    }
    let m = (value * 1000.0).round();
    (m / 1000.0 == value).then_some(m as u64)
}

/// Writes `m / 1000` with its trailing zeros cut, keeping one place (`3.0`).
pub(crate) fn push_thousandths(w: &mut String, m: u64) {
    w.push_str(itoa::Buffer::new().format(m / 1000));
    w.push('.');
    let frac = m % 1000;
    let digits = [frac / 100, frac / 10 % 10, frac % 10].map(|d| char::from(b'0' + d as u8));
    let zeros = digits.iter().rev().take_while(|&&d| d == '0').count();
    w.extend(&digits[..3 - zeros.min(2)]);
}

struct Visitor<'b> {
    w: &'b mut String,
    first: bool,
    /// The first error a value's `Debug` returned; what follows it is not written.
    result: fmt::Result,
}

/// True if `s` can be written without quotes and still be read back as one value.
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'='))
}

/// Writes a string value as the `pretty` format does: bare when plain, else quoted and
/// escaped (with terminal control characters escaped too).
pub(crate) fn push_str_value(w: &mut String, value: &str) -> fmt::Result {
    if is_plain(value) {
        w.push_str(value);
        Ok(())
    } else {
        Sanitize(w).write_fmt(format_args!("{value:?}"))
    }
}

/// Writes a float value as the `pretty` format does (as `ryu` writes it).
pub(crate) fn push_f64_value(w: &mut String, value: f64) {
    match thousandths(value) {
        Some(m) => push_thousandths(w, m),
        None => w.push_str(ryu::Buffer::new().format(value)),
    }
}

/// Writes a message as the `pretty` format does: bare, control characters escaped.
pub(crate) fn push_message(w: &mut String, message: fmt::Arguments<'_>) -> fmt::Result {
    Sanitize(w).write_fmt(message)
}

/// [`push_message`] for a message that is already text (no formatting pass).
pub(crate) fn push_message_str(w: &mut String, message: &str) {
    // Writing into a `String` cannot fail.
    let _ = Sanitize(w).write_str(message);
}

/// Passes text through with terminal control characters escaped (as tracing-subscriber
/// does for messages), so a log line cannot drive the terminal that displays it.
struct Sanitize<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Sanitize<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Printable ASCII (nearly every message) needs no per-character look.
        let printable = |b: u8| (b' '..=b'~').contains(&b) || b == b'\t';
        if s.bytes().all(printable) || !s.chars().any(is_control) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            if is_control(c) {
                write!(self.0, "\\u{{{:x}}}", c as u32)?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

fn is_control(c: char) -> bool {
    (c.is_control() && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

impl Visitor<'_> {
    /// What goes before the next field: nothing before the first, a space otherwise.
    fn sep(&mut self) -> &'static str {
        if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        }
    }

    fn key(&mut self, field: &Field) -> bool {
        if self.result.is_err() || field.name().starts_with("log.") {
            // Failed already, or `log` crate metadata that the event format has shown.
            return false;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        // One copy per key: the separator and `=` are single bytes.
        self.w.reserve(name.len() + 2);
        if !std::mem::take(&mut self.first) {
            self.w.push(' ');
        }
        self.w.push_str(name);
        self.w.push('=');
        true
    }

    /// The message goes first and bare, without `message=`.
    fn message(&mut self, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let sep = self.sep();
        self.w.push_str(sep);
        self.result = push_message(self.w, value);
    }

    fn raw(&mut self, field: &Field, s: &str) {
        if self.key(field) {
            self.w.push_str(s);
        }
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.message(format_args!("{value}"));
        }
        if self.key(field) {
            self.result = push_str_value(self.w, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            push_f64_value(self.w, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &crate::error_chain::error_chain(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            return self.message(format_args!("{value:?}"));
        }
        if self.key(field) {
            self.result = Sanitize(&mut *self.w).write_fmt(format_args!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_capture::Capture;

    /// The fields part of the line one event produces.
    fn line(f: impl FnOnce()) -> String {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .fmt_fields(LogfmtFields)
            .compact()
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = out.text();
        text.trim_end().to_owned()
    }

    #[test]
    fn values_are_written_bare_when_plain() {
        let l = line(|| {
            tracing::info!(
                node = "edge-1",
                conn = 7u64,
                delta = -3i64,
                status = 200u16,
                duration_ms = 1.5f64,
                complete = true,
                missing = None::<&str>,
                addr = %"127.0.0.1:80",
                "request"
            )
        });
        assert_eq!(
            l,
            "request node=edge-1 conn=7 delta=-3 status=200 duration_ms=1.5 complete=true addr=127.0.0.1:80"
        );
    }

    #[test]
    fn other_strings_are_quoted_so_the_line_still_splits() {
        let l = line(|| tracing::info!(path = "/a b", detail = "x=\"y\"", empty = "", "m"));
        assert_eq!(l, r#"m path="/a b" detail="x=\"y\"" empty="""#);
    }

    #[test]
    fn control_characters_never_reach_the_output() {
        let l = line(|| {
            tracing::info!(
                shown = %"a\u{1b}[31mred",
                quoted = "b\u{1b}[0m",
                "hi \u{1b}]0;title\u{7}"
            )
        });
        assert!(!l.contains('\u{1b}') && !l.contains('\u{7}'), "{l:?}");
        assert!(
            l.starts_with("hi \\u{1b}]0;title\\u{7} shown=a\\u{1b}[31mred"),
            "{l:?}"
        );
    }

    #[test]
    fn errors_carry_their_sources() {
        let inner = std::io::Error::other("refused");
        let outer = std::io::Error::other(Wrapped(inner));
        let l = line(|| tracing::info!(error = &outer as &(dyn std::error::Error + 'static), "x"));
        assert_eq!(l, r#"x error="wrapped: refused""#);
    }

    #[test]
    fn a_field_that_logs_while_it_is_formatted_leaves_the_line_whole() {
        struct Loud;
        impl fmt::Debug for Loud {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                tracing::info!(inner = 1u64, "nested");
                f.write_str("loud")
            }
        }
        let l = line(|| tracing::info!(a = 1u64, x = ?Loud, b = "z", "outer"));
        assert!(l.ends_with("outer a=1 x=loud b=z"), "{l:?}");
    }

    #[test]
    fn consecutive_lines_do_not_share_leftovers() {
        let l = line(|| {
            tracing::info!(long = "a".repeat(20_000).as_str(), "first");
            tracing::info!(n = 2u64, "second");
        });
        let lines: Vec<&str> = l.lines().collect();
        assert_eq!(lines.len(), 2, "{l:?}");
        assert_eq!(lines[1], "second n=2");
    }

    #[test]
    fn millisecond_floats_read_as_ryu_writes_them() {
        let mut values: Vec<f64> = (0..200_000u64).map(|us| us as f64 / 1e3).collect();
        values.extend((0..2_000u64).map(|i| (i * 7_919_993) as f64 / 1e3));
        values.extend([
            1e11 + 0.125,
            0.1 + 0.2,
            1.0 / 3.0,
            2.5e-4,
            1e12,
            f64::NAN,
            -1.5,
            -0.0,
        ]);
        let text = |v: f64| {
            let mut s = String::new();
            push_thousandths(&mut s, thousandths(v)?);
            Some(s)
        };
        for v in values {
            let ryu = ryu::Buffer::new().format(v).to_owned();
            if let Some(ours) = text(v) {
                assert_eq!(ours, ryu, "{v:e}");
            } else {
                // Only values that are not whole thousandths, or out of range, go to ryu.
                assert!(
                    !(0.0..1e12).contains(&v)
                        || (v * 1000.0).fract() != 0.0
                        || v.is_sign_negative(),
                    "{v:e} should have taken the fast path"
                );
            }
        }
        assert_eq!(text(64.819).unwrap(), "64.819");
        assert_eq!(text(3.0).unwrap(), "3.0");
        assert_eq!(text(0.05).unwrap(), "0.05");
        assert!(text(0.1 + 0.2).is_none());
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
