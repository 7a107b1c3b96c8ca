//! Streamed file reads (protocol 2, `ReadStream`): a read's flow control
//! and the agent-wide budget of chunk buffers.
//!
//! A read sends its file in chunks of at most [`READ_CHUNK_BYTES`]. Two
//! bounds keep its memory small whatever the client does:
//! - per read, a [`Flow`]: a chunk is read only with a credit, and the
//!   daemon grants one per chunk it consumed (`ReadAck`), starting from the
//!   request's `window`; a read whose consumer is slow waits here, holding
//!   no buffer, and a cancel (`CancelRead`, or its connection closing) ends
//!   it;
//! - across all reads, a [`Budget`] of [`READ_BUFFERS`] chunk buffers: a
//!   chunk is read into a buffer only while holding a slot, until its frame
//!   is written. A chunk costs its buffer and its encoded frame, so the
//!   chunk memory of any number of concurrent reads stays below
//!   `2 * READ_BUFFERS * READ_CHUNK_BYTES` (4 MiB).
//!
//! Without them (protocol 1) a read was one frame of the whole file: 16
//! concurrent reads of a 64 MiB file needed over 1 GiB and the sandbox's
//! memory limit killed the agent, PID 1, and with it the sandbox.

use sandkasten_protocol::{MAX_READ_WINDOW, READ_CHUNK_BYTES};
use std::io::{self, Read};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Chunk buffers all reads of the agent share.
pub const READ_BUFFERS: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The credits of one read.
pub struct Flow {
    state: Mutex<FlowState>,
    changed: Condvar,
}

struct FlowState {
    credits: u32,
    cancelled: bool,
}

impl Flow {
    /// A read that may send `window` chunks ahead (at least 1, at most
    /// [`MAX_READ_WINDOW`]).
    pub fn new(window: u32) -> Flow {
        Flow {
            state: Mutex::new(FlowState {
                credits: window.clamp(1, MAX_READ_WINDOW),
                cancelled: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// The consumer took `chunks` more chunks. Credits never exceed the
    /// largest window, whatever the daemon sends.
    pub fn grant(&self, chunks: u32) {
        let mut s = lock(&self.state);
        s.credits = s.credits.saturating_add(chunks).min(MAX_READ_WINDOW);
        self.changed.notify_all();
    }

    /// Ends the read at its next chunk.
    pub fn cancel(&self) {
        lock(&self.state).cancelled = true;
        self.changed.notify_all();
    }

    /// Whether the read (or attached stream) was cancelled.
    pub fn is_cancelled(&self) -> bool {
        lock(&self.state).cancelled
    }

    /// Waits for a credit and takes it; `false` once cancelled.
    pub fn take(&self) -> bool {
        let mut s = lock(&self.state);
        loop {
            if s.cancelled {
                return false;
            }
            if s.credits > 0 {
                s.credits -= 1;
                return true;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Slots for chunk buffers, shared by every read of the agent.
pub struct Budget {
    state: Mutex<BudgetState>,
    freed: Condvar,
}

struct BudgetState {
    free: usize,
}

/// A held slot; released when dropped.
pub struct Slot<'a>(&'a Budget);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).free += 1;
        self.0.freed.notify_one();
    }
}

impl Budget {
    pub fn new(slots: usize) -> Budget {
        let slots = slots.max(1);
        Budget {
            state: Mutex::new(BudgetState { free: slots }),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot. A slot is held only while a chunk is read and
    /// written, which needs nothing but the connection, so it comes back.
    fn acquire(&self) -> Slot<'_> {
        let mut s = lock(&self.state);
        while s.free == 0 {
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.free -= 1;
        Slot(self)
    }
}

/// How a streamed read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Everything up to the cap was sent; `truncated`: the file goes on.
    Done { truncated: bool },
    /// Cancelled: nothing more may be sent.
    Cancelled,
}

/// Sends `file` in chunks through `send`, at most `max_bytes`, each chunk
/// with a credit of `flow` and a slot of `budget` (held until `send`
/// returns). Reads to EOF rather than trusting the size (procfs files say
/// 0). An I/O error ends the read with it.
pub fn stream(
    file: &mut impl Read,
    max_bytes: Option<u64>,
    flow: &Flow,
    budget: &Budget,
    send: &mut dyn FnMut(Vec<u8>),
) -> io::Result<Ended> {
    let mut remaining = max_bytes.unwrap_or(u64::MAX);
    while remaining > 0 {
        if !flow.take() {
            return Ok(Ended::Cancelled);
        }
        let _slot = budget.acquire();
        let want = remaining.min(READ_CHUNK_BYTES as u64) as usize;
        let mut chunk = Vec::with_capacity(want);
        // Take + read_to_end stops at `want` bytes or at EOF, and never
        // grows the buffer beyond `want`.
        (&mut *file).take(want as u64).read_to_end(&mut chunk)?;
        let n = chunk.len();
        if n == 0 {
            return Ok(Ended::Done { truncated: false });
        }
        remaining -= n as u64;
        send(chunk);
        if n < want {
            return Ok(Ended::Done { truncated: false });
        }
    }
    let mut one = [0u8; 1];
    Ok(Ended::Done {
        truncated: file.read(&mut one)? > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    fn collect(data: &[u8], max: Option<u64>) -> (Vec<Vec<u8>>, Ended) {
        let (flow, budget) = (Flow::new(MAX_READ_WINDOW), Budget::new(1));
        let mut chunks = Vec::new();
        let mut send = |c: Vec<u8>| {
            chunks.push(c);
            // The consumer takes each chunk at once.
            flow.grant(1);
        };
        let ended = stream(&mut &data[..], max, &flow, &budget, &mut send).unwrap();
        (chunks, ended)
    }

    #[test]
    fn a_file_is_sent_in_chunks_up_to_its_cap() {
        let c = READ_CHUNK_BYTES;
        let data: Vec<u8> = (0..=255u8).cycle().take(2 * c + 5).collect();
        let (chunks, ended) = collect(&data, None);
        assert_eq!(ended, Ended::Done { truncated: false });
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [c, c, 5]);
        assert_eq!(chunks.concat(), data);

        let (chunks, ended) = collect(&data, Some(c as u64 + 1));
        assert_eq!(ended, Ended::Done { truncated: true });
        assert_eq!(chunks.concat(), &data[..c + 1]);

        // Exactly the file's size: not truncated; exactly a chunk: no
        // empty chunk after it.
        let (chunks, ended) = collect(&data[..c], Some(c as u64));
        assert_eq!((chunks.len(), ended), (1, Ended::Done { truncated: false }));
        let (chunks, ended) = collect(&data[..c], None);
        assert_eq!((chunks.len(), ended), (1, Ended::Done { truncated: false }));
        let (chunks, ended) = collect(b"", None);
        assert_eq!((chunks.len(), ended), (0, Ended::Done { truncated: false }));
        let (chunks, ended) = collect(b"x", Some(0));
        assert_eq!((chunks.len(), ended), (0, Ended::Done { truncated: true }));
    }

    #[test]
    fn a_read_sends_no_more_than_its_window_until_acknowledged_and_stops_when_cancelled() {
        let data = vec![1u8; 10 * READ_CHUNK_BYTES];
        let flow = Arc::new(Flow::new(3));
        let budget = Arc::new(Budget::new(READ_BUFFERS));
        let (tx, rx) = mpsc::channel::<usize>();
        let reader = {
            let (flow, budget) = (flow.clone(), budget.clone());
            std::thread::spawn(move || {
                let mut send = |c: Vec<u8>| tx.send(c.len()).unwrap();
                stream(&mut &data[..], None, &flow, &budget, &mut send).unwrap()
            })
        };
        // Three chunks come without any acknowledgement...
        for _ in 0..3 {
            rx.recv().unwrap();
        }
        // ...and the fourth only after one: the reader waits on the flow
        // (an event), so it sent nothing more before the grant. Once the
        // grant's chunk arrived, nothing else can have been sent.
        flow.grant(1);
        rx.recv().unwrap();
        assert!(rx.try_recv().is_err(), "a chunk beyond the window was sent");
        flow.cancel();
        assert_eq!(reader.join().unwrap(), Ended::Cancelled);
        assert!(rx.try_recv().is_err(), "a chunk was sent after the cancel");
    }

    #[test]
    fn credits_never_exceed_the_largest_window() {
        let flow = Flow::new(u32::MAX);
        flow.grant(u32::MAX);
        let mut n = 0;
        while lock(&flow.state).credits > 0 {
            assert!(flow.take());
            n += 1;
        }
        assert_eq!(n, MAX_READ_WINDOW);
        assert_eq!(Flow::new(0).state.lock().unwrap().credits, 1);
    }

    #[test]
    fn concurrent_reads_share_the_budget() {
        let budget = Arc::new(Budget::new(2));
        let held = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..16)
            .map(|_| {
                let (budget, held, most) = (budget.clone(), held.clone(), most.clone());
                std::thread::spawn(move || {
                    let data = vec![0u8; 4 * READ_CHUNK_BYTES];
                    let flow = Flow::new(MAX_READ_WINDOW);
                    let mut send = |_: Vec<u8>| {
                        // Inside send the slot is held: count the holders.
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        held.fetch_sub(1, Ordering::SeqCst);
                        flow.grant(1);
                    };
                    stream(&mut &data[..], None, &flow, &budget, &mut send).unwrap()
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.join().unwrap(), Ended::Done { truncated: false });
        }
        assert!(most.load(Ordering::SeqCst) <= 2, "{most:?} slots at once");
        assert_eq!(lock(&budget.state).free, 2, "a slot was never returned");
    }
}
