//! The `pretty` format's event line: exactly what tracing-subscriber's `compact` format
//! writes with ANSI colours off, written directly.
//!
//! Why not `compact` itself: it writes the level, the span list and the target through
//! `write!` and `Display` wrappers that exist for colours, which are off here. That was
//! about 1,000 instructions of the relay's access line (callgrind, one line per request),
//! a fifth of what the whole line cost. A test holds the two formats to the same bytes.
//!
//! The line: `<time> <level> [<span>:…: ]<target>: <message> <fields>[ <span fields>…]`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, Scope};

use crate::log_time::CachedSecondTime;

/// The `FormatEvent` of the `pretty` format (fields by [`crate::log_fields`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct CompactLine;

/// The level as `compact` pads it (`{:>5}`), with the space that follows it.
pub(crate) fn level_text(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        Level::ERROR => "ERROR ",
    }
}

impl<S, N> FormatEvent<S, N> for CompactLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events from the `log` crate carry their real target and level here.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

        if CachedSecondTime.format_time(&mut w).is_err() {
            w.write_str("<unknown time>")?;
        }
        w.write_char(' ')?;
        w.write_str(level_text(meta.level()))?;

        // The names of the spans the event is in, outermost first.
        let leaf = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(leaf) = leaf {
            for span in leaf.scope().from_root() {
                w.write_str(span.metadata().name())?;
                w.write_char(':')?;
            }
            w.write_char(' ')?;
        }

        w.write_str(meta.target())?;
        w.write_str(": ")?;
        ctx.format_fields(w.by_ref(), event)?;

        // Then the fields of those spans, outermost first.
        for span in ctx.event_scope().into_iter().flat_map(Scope::from_root) {
            let exts = span.extensions();
            if let Some(fields) = exts.get::<FormattedFields<N>>() {
                if !fields.is_empty() {
                    w.write_char(' ')?;
                    w.write_str(&fields.fields)?;
                }
            }
        }
        w.write_char('\n')
    }
}

#[cfg(test)]
mod tests {
    use tracing::{debug_span, info, info_span, warn};

    use super::*;
    use crate::log_capture::Capture;
    use crate::log_fields::LogfmtFields;

    /// Events of every shape the binaries log: bare, with fields, in nested spans with
    /// and without fields, with an explicit parent, and at several levels.
    fn log_everything() {
        info!("plain");
        info!(node = "a", status = 200u64, ok = true, ms = 0.5, "request");
        warn!(error = "x y", "quoted value");
        let outer = info_span!("tunnel", slot = 0u64, relay = "127.0.0.1:1");
        let _o = outer.enter();
        info!("in one span");
        let inner = info_span!("control");
        let _i = inner.enter();
        info!(n = 3u64, "in two spans");
        let hidden = debug_span!("request", stream = 4u64);
        let _h = hidden.enter();
        tracing::error!("under a disabled span");
        drop(_h);
        drop(_i);
        info!(parent: &inner, "explicit parent");
        info!(parent: None, "explicit root");
    }

    /// The lines `log_everything` produces through `event_format`, with the timestamps
    /// cut off (they differ between runs).
    fn lines<E>(event_format: E) -> Vec<String>
    where
        E: for<'w> FormatEvent<tracing_subscriber::Registry, LogfmtFields> + Send + Sync + 'static,
    {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_max_level(Level::INFO)
            .fmt_fields(LogfmtFields)
            .event_format(event_format)
            .finish();
        tracing::subscriber::with_default(subscriber, log_everything);
        let text = out.text();
        text.lines()
            .map(|l| {
                let (time, rest) = l.split_once(' ').unwrap();
                assert_eq!(time.len(), "2026-11-27T06:59:12.123456Z".len(), "{l}");
                rest.to_owned()
            })
            .collect()
    }

    #[test]
    fn lines_match_tracing_subscribers_compact_format() {
        let ours = lines(CompactLine);
        let theirs = lines(
            tracing_subscriber::fmt::format()
                .with_ansi(false)
                .with_timer(CachedSecondTime)
                .compact(),
        );
        assert_eq!(ours.len(), 8, "{ours:#?}");
        assert_eq!(ours, theirs);
        assert_eq!(ours[0], " INFO tether_proto::log_format::tests: plain");
        assert_eq!(
            ours[4],
            " INFO tunnel:control: tether_proto::log_format::tests: in two spans n=3 \
             slot=0 relay=127.0.0.1:1"
        );
    }
}
