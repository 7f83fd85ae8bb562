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

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Buffered bytes that make the writer flush before the interval is up.
pub const FLUSH_AT: usize = 256 * 1024;
/// Buffered bytes beyond which new lines are dropped (the writer is stuck).
pub const MAX_BUFFERED: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    dropped: u64,
    closing: bool,
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
    loop {
        let mut s = shared.lock();
        while s.buf.is_empty() && !s.closing {
            s = shared.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        if s.buf.is_empty() && s.closing {
            return;
        }
        if !s.closing {
            // Let the lines of this burst gather; a flood or shutdown cuts it short.
            s = shared
                .wake
                .wait_timeout_while(s, FLUSH_INTERVAL, |s| !s.closing && s.buf.len() < FLUSH_AT)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut s.buf, &mut batch);
        let dropped = std::mem::take(&mut s.dropped);
        drop(s);
        if dropped > 0 {
            let _ = writeln!(
                batch,
                "tether: {dropped} log lines dropped: log output could not keep up"
            );
        }
        // Nothing useful to do if stderr itself fails; keep the process serving.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        batch.shrink_to(FLUSH_AT);
    }
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

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut s = self.shared.lock();
        let before = s.buf.len();
        if before + line.len() > self.shared.max_buffered {
            s.dropped += 1;
            return Ok(line.len());
        }
        s.buf.extend_from_slice(line);
        // Wake the writer only when it has to act: its first line, or a flood.
        let wake = before == 0 || (before < FLUSH_AT && s.buf.len() >= FLUSH_AT);
        drop(s);
        if wake {
            self.shared.wake.notify_one();
        }
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
}
