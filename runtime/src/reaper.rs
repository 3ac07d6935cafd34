//! The reaper: one long-lived thread that tears down large finished
//! instances. Returning many megabytes of linear memory to the pool takes
//! long enough to stall the requests queued behind it on an async worker,
//! and a thread per teardown would churn threads and allocator arenas.

use std::sync::mpsc;
use std::thread::JoinHandle;

/// Owns the reaper thread; the thread drains its queue and exits when this
/// is dropped.
pub struct Reaper {
    queue: Option<mpsc::Sender<Box<dyn Send>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> Reaper {
        let (queue, items) = mpsc::channel::<Box<dyn Send>>();
        let thread = std::thread::Builder::new()
            .name("skiff-reaper".into())
            .spawn(move || {
                for item in items {
                    drop(item);
                }
            })
            .expect("spawning the reaper thread");
        Reaper {
            queue: Some(queue),
            thread: Some(thread),
        }
    }

    /// A handle that hands items to the reaper.
    pub fn handle(&self) -> ReaperHandle {
        ReaperHandle(self.queue.clone().expect("the reaper is running"))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends items to the reaper to be dropped there.
#[derive(Clone)]
pub struct ReaperHandle(mpsc::Sender<Box<dyn Send>>);

impl ReaperHandle {
    /// Drops `item` on the reaper thread (or here, if the reaper is gone).
    pub fn reap(&self, item: impl Send + 'static) {
        if let Err(mpsc::SendError(item)) = self.0.send(Box::new(item)) {
            drop(item);
        }
    }
}

impl std::fmt::Debug for ReaperHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaperHandle")
    }
}
