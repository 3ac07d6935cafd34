//! The reaper: one long-lived thread that tears down large finished
//! instances. Returning many megabytes of linear memory to the pool takes
//! long enough to stall the requests queued behind it on an async worker,
//! and a thread per teardown would churn threads and allocator arenas.

use std::sync::mpsc;
use std::thread::JoinHandle;

/// Owns the reaper thread; when this is dropped the thread drains what was
/// queued so far and exits, even if handles are still held elsewhere (their
/// later items are then dropped where they are reaped).
pub struct Reaper {
    queue: Option<mpsc::Sender<Option<Box<dyn Send>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> Reaper {
        let (queue, items) = mpsc::channel::<Option<Box<dyn Send>>>();
        let thread = std::thread::Builder::new()
            .name("skiff-reaper".into())
            // `None` is the stop message sent on drop.
            .spawn(move || {
                while let Ok(Some(item)) = items.recv() {
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
        if let Some(queue) = self.queue.take() {
            let _ = queue.send(None);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends items to the reaper to be dropped there.
#[derive(Clone)]
pub struct ReaperHandle(mpsc::Sender<Option<Box<dyn Send>>>);

impl ReaperHandle {
    /// Drops `item` on the reaper thread (or here, if the reaper is gone).
    pub fn reap(&self, item: impl Send + 'static) {
        // Once the reaper stopped, nothing receives: the item comes back
        // in the error and is dropped here.
        let _ = self.0.send(Some(Box::new(item)));
    }
}

impl std::fmt::Debug for ReaperHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaperHandle")
    }
}
