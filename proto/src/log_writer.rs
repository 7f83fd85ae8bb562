//! Where log lines go: appended to a shared buffer that a background thread writes out
//! in one `write(2)` per batch.
//!
//! Why not a queue with a writer thread per line (`tracing-appender`)? On the request
//! path that costs a cross-thread wake-up per line: measured on the relay at one request
//! at a time, its writer thread spinning in `sched_yield` and futex wake-ups took about
//! 14 % of the relay's CPU, for one access-log line per request. Here a line costs an
//! uncontended lock and a copy; the writer wakes once when the buffer goes from empty to
//! non-empty, lets lines gather for [`FLUSH_INTERVAL`], and writes them all. Idle, it
//! sleeps. A line is on stderr at most [`FLUSH_INTERVAL`] after it is logged (sooner
//! when [`FLUSH_AT`] bytes pile up), and every buffered line is written when the
//! [`FlushGuard`] drops at exit.
//!
//! Nothing waits on a slow stderr: if the writer falls [`MAX_BUFFERED`] behind, new
//! lines are dropped and counted, and the count is logged once output catches up.
//!
//! A line can also be handed over unformatted, as a [`Deferred`]: its fields are kept
//! and the writer thread makes its text, in the batch. That is for the one line per
//! request (the relay's access line): made on the request path it ran with cold caches
//! between the request's other work, about 2,000 instructions and a wall-clock read;
//! the writer makes a batch of them back to back.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Buffered bytes that make the writer flush before the interval is up.
pub const FLUSH_AT: usize = 256 * 1024;
/// Buffered bytes beyond which new lines are dropped (the writer is stuck).
pub const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// Bytes a [`Deferred`] line is counted as while it waits (for [`FLUSH_AT`] and
/// [`MAX_BUFFERED`]): about an access line's length.
const DEFERRED_BYTES: usize = 256;

/// A line whose text the writer thread makes when it writes the batch.
pub trait Deferred: Send {
    /// Appends the whole line, newline included. `clock` turns the monotonic instants
    /// the line was given into wall-clock time.
    fn render(&self, clock: &BatchClock, out: &mut String);
}

/// Wall-clock time for the instants of one batch: both clocks read once, when the
/// writer takes the batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchClock {
    wall: SystemTime,
    mono: Instant,
}

impl BatchClock {
    /// Both clocks, read now.
    pub fn now() -> Self {
        BatchClock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// The monotonic instant this clock's wall time was read at.
    pub fn mono(&self) -> Instant {
        self.mono
    }

    /// The wall-clock time of `at` (an instant before the batch was taken). A line waits
    /// about [`FLUSH_INTERVAL`]: a slewing wall clock moves its time by microseconds, and
    /// only a step of the wall clock in that window moves it more.
    pub fn wall(&self, at: Instant) -> SystemTime {
        let ago = self.mono.saturating_duration_since(at);
        self.wall.checked_sub(ago).unwrap_or(self.wall)
    }
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// Lines to render, each with the length `buf` had when it came: its place in order.
    deferred: Vec<(usize, Box<dyn Deferred>)>,
    dropped: u64,
    closing: bool,
}

impl State {
    /// Bytes waiting, counting each deferred line as [`DEFERRED_BYTES`].
    fn pending(&self) -> usize {
        self.buf.len() + self.deferred.len() * DEFERRED_BYTES
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    max_buffered: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst a partial line; keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to `tracing_subscriber`; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes what is still buffered and stops the writer thread when dropped: hold it
/// until the process ends.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `out`.
pub fn spawn<W: Write + Send + 'static>(out: W) -> (BatchWriter, FlushGuard) {
    spawn_with(out, MAX_BUFFERED)
}

fn spawn_with<W: Write + Send + 'static>(out: W, max_buffered: usize) -> (BatchWriter, FlushGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        max_buffered,
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("tether-log".into())
        .spawn(move || run(&s, out))
        .expect("spawning the log writer thread");
    (
        BatchWriter {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    )
}

fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    let mut deferred = Vec::new();
    let mut rendered = Vec::new();
    loop {
        let mut s = shared.lock();
        while s.pending() == 0 && !s.closing {
            s = shared.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        if s.pending() == 0 && s.closing {
            return;
        }
        if !s.closing {
            // Let the lines of this burst gather; a flood or shutdown cuts it short.
            s = shared
                .wake
                .wait_timeout_while(s, FLUSH_INTERVAL, |s| !s.closing && s.pending() < FLUSH_AT)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut s.buf, &mut batch);
        std::mem::swap(&mut s.deferred, &mut deferred);
        let dropped = std::mem::take(&mut s.dropped);
        drop(s);
        let text = if deferred.is_empty() {
            &mut batch
        } else {
            render(&batch, &mut deferred, &mut rendered);
            &mut rendered
        };
        if dropped > 0 {
            let _ = writeln!(
                text,
                "tether: {dropped} log lines dropped: log output could not keep up"
            );
        }
        // Nothing useful to do if stderr itself fails; keep the process serving.
        let _ = out.write_all(text).and_then(|()| out.flush());
        for b in [&mut batch, &mut rendered] {
            b.clear();
            b.shrink_to(FLUSH_AT);
        }
        // `render` drained it; keep no more room than a flush's worth.
        deferred.shrink_to(FLUSH_AT / DEFERRED_BYTES);
    }
}

/// `batch`'s lines with the deferred ones rendered in their places, into `out`.
fn render(batch: &[u8], deferred: &mut Vec<(usize, Box<dyn Deferred>)>, out: &mut Vec<u8>) {
    let clock = BatchClock::now();
    let mut line = String::new();
    let mut from = 0;
    for (at, d) in deferred.drain(..) {
        out.extend_from_slice(&batch[from..at]);
        from = at;
        line.clear();
        d.render(&clock, &mut line);
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(&batch[from..]);
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One event's output; `tracing_subscriber` formats a whole line and writes it at once.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Shared {
    /// Adds a line of `len` bytes with `add`, unless that would go past the limit.
    fn push(&self, len: usize, add: impl FnOnce(&mut State)) {
        let mut s = self.lock();
        let before = s.pending();
        if before + len > self.max_buffered {
            s.dropped += 1;
            return;
        }
        add(&mut s);
        // Wake the writer only when it has to act: its first line, or a flood.
        let wake = before == 0 || (before < FLUSH_AT && before + len >= FLUSH_AT);
        drop(s);
        if wake {
            self.wake.notify_one();
        }
    }
}

impl BatchWriter {
    /// Queues a line for the writer thread to render (see [`Deferred`]).
    pub fn defer(&self, line: Box<dyn Deferred>) {
        self.shared.push(DEFERRED_BYTES, |s| {
            let at = s.buf.len();
            s.deferred.push((at, line));
        });
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared
            .push(line.len(), |s| s.buf.extend_from_slice(line));
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read after the writer thread is done with it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Blocks until the test lets it go, like a stuck pipe.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Sink);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.0;
            let _g = c.wait_while(m.lock().unwrap(), |go| !*go).unwrap();
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// As `tracing_subscriber` does: the whole line in one `write_all`.
    fn log(w: &BatchWriter, line: &str) {
        w.make_writer()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (w, guard) = spawn(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        log(&w, &format!("t{t} line {i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = sink.text();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let want: Vec<String> = (0..1000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, want, "thread {t}'s lines out of order or missing");
        }
    }

    /// A deferred line that renders as its tag.
    struct Tag(&'static str);

    impl Deferred for Tag {
        fn render(&self, _: &BatchClock, out: &mut String) {
            out.push_str(self.0);
            out.push('\n');
        }
    }

    #[test]
    fn deferred_lines_are_rendered_in_their_place() {
        let sink = Sink::default();
        let (w, guard) = spawn(sink.clone());
        log(&w, "one");
        w.defer(Box::new(Tag("two")));
        log(&w, "three");
        w.defer(Box::new(Tag("four")));
        w.defer(Box::new(Tag("five")));
        drop(guard);
        assert_eq!(sink.text(), "one\ntwo\nthree\nfour\nfive\n");
    }

    #[test]
    fn the_batch_clock_gives_an_instant_its_wall_time() {
        let at = Instant::now();
        let wall_at = SystemTime::now();
        std::thread::sleep(Duration::from_millis(20));
        let w = BatchClock::now().wall(at);
        // Read a few microseconds apart: the same time well within a millisecond.
        let diff = w.duration_since(wall_at).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(1), "{diff:?}");
        // An instant after the clock was read (not given by callers) maps to the clock.
        let c = BatchClock::now();
        assert_eq!(
            c.wall(Instant::now() + Duration::from_secs(1)),
            c.wall(c.mono())
        );
    }

    #[test]
    fn a_line_reaches_the_output_within_the_flush_interval() {
        let sink = Sink::default();
        let (w, _guard) = spawn(sink.clone());
        log(&w, "hello");
        // Bounded: 100 polls of 10 ms, far above FLUSH_INTERVAL.
        for _ in 0..100 {
            if sink.text() == "hello\n" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("line not written within 1 s: {:?}", sink.text());
    }

    #[test]
    fn overflow_drops_lines_and_says_how_many() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (w, guard) = spawn_with(Stuck(gate.clone(), sink.clone()), 100);
        log(&w, "first");
        // Wait (bounded) until the writer has taken "first" and is stuck writing it.
        for _ in 0..200 {
            if w.shared.lock().buf.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 0..50 {
            log(&w, &format!("line {i:04}")); // 10 bytes each
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let text = sink.text();
        assert!(text.starts_with("first\n"), "{text}");
        assert_eq!(text.matches("line ").count(), 10, "{text}");
        assert!(text.contains("40 log lines dropped"), "{text}");
    }

    #[test]
    fn deferred_lines_count_against_the_limit() {
        // Room for two deferred lines and nothing more while nothing is written out.
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (w, guard) = spawn_with(Stuck(gate.clone(), sink.clone()), 2 * DEFERRED_BYTES);
        log(&w, "first");
        for _ in 0..200 {
            if w.shared.lock().pending() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for _ in 0..5 {
            w.defer(Box::new(Tag("later")));
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let text = sink.text();
        assert_eq!(text.matches("later").count(), 2, "{text}");
        assert!(text.contains("3 log lines dropped"), "{text}");
    }
}
