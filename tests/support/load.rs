//! A bounded load loop: clients sending requests back to back to a set of
//! URLs (in turn) until stopped or a time limit passes, recording each
//! answer, for tests that check what clients saw while something changed.

use super::http;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one request got: its status (0 when no answer came), its body,
/// and when the answer came.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub at: Instant,
}

/// Clients sending requests until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `threads` clients, each sending GETs to `urls` in turn, for at
    /// most `limit`.
    pub fn start(threads: usize, urls: &[String], limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, answers, urls) = (stop.clone(), answers.clone(), urls.to_vec());
                std::thread::spawn(move || {
                    let agent = http();
                    let deadline = Instant::now() + limit;
                    let mut next = t;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let url = &urls[next % urls.len()];
                        next += 1;
                        let answer = match agent.get(url).call() {
                            Ok(mut response) => Answer {
                                status: response.status().as_u16(),
                                body: response.body_mut().read_to_string().unwrap_or_default(),
                                at: Instant::now(),
                            },
                            Err(_) => Answer {
                                status: 0,
                                body: String::new(),
                                at: Instant::now(),
                            },
                        };
                        answers.lock().unwrap().push(answer);
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            threads,
        }
    }

    /// How many answers came so far.
    pub fn count(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Stops the clients; what they got, in order of arrival.
    pub fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        Arc::try_unwrap(self.answers).unwrap().into_inner().unwrap()
    }
}
