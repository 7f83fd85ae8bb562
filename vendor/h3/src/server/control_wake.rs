//! Tether patch (see vendor/README.md at the repository root): a waker for the control
//! path alone, so the accept loop polls the peer's control and unidirectional streams
//! only when one of them woke it.
//!
//! Every poll of [`super::connection::Connection::accept`] used to poll the control
//! stream and the unidirectional-stream acceptor first, though they carry a handful of
//! frames in a connection's life: two empty polls per request (the one that accepts
//! it, and the one after that registers for the next), each a stream lookup and a waker
//! registration inside quinn. The control path is now polled with a waker of its own,
//! which marks it woken before waking the task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;

/// Whether anything polled on the control path has woken since it was last polled,
/// and the task to wake.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The control path's flag; its waker is made from it.
pub(crate) struct ControlWake {
    flag: Arc<Flag>,
}

impl ControlWake {
    /// Starts woken: the first poll always looks at the control path.
    pub(crate) fn new() -> Self {
        ControlWake {
            flag: Arc::new(Flag {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }

    /// Registers `task` to be woken through [`Self::waker`], and tells whether the
    /// control path was woken since the last call (clearing that). Registering first
    /// means a wake-up in between is never lost: it sets the flag and wakes `task`.
    pub(crate) fn take_woken(&self, task: &Waker) -> bool {
        self.flag.task.register(task);
        self.flag.woken.swap(false, Ordering::AcqRel)
    }

    /// Marks the control path to be polled next time whatever woke the task.
    pub(crate) fn set_woken(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }

    /// The waker to poll the control path with.
    pub(crate) fn waker(&self) -> Waker {
        Waker::from(self.flag.clone())
    }
}

impl std::fmt::Debug for ControlWake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlWake")
            .field("woken", &self.flag.woken.load(Ordering::Relaxed))
            .finish()
    }
}
