//! The bounded queue between a stream's GStreamer thread and its consumer (the engine),
//! over a `crossbeam` channel. The producer never blocks the streaming thread for long:
//! with [`Overflow::DropOldest`] a full queue loses its oldest frame (counted); with
//! [`Overflow::Block`] (files, where every frame matters) it waits, but in slices, so
//! that a shutdown still gets through.

use std::time::Duration;

use crossbeam::channel::{self, Receiver, SendTimeoutError, Sender, TrySendError};

/// What a full queue does with a new frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop the oldest queued frame to make room (live sources: stay current).
    #[default]
    DropOldest,
    /// Wait for room (files: lose nothing, let the file be read at the consumer's pace).
    Block,
}

/// Producer side. Holds a receiver clone only to drop the oldest item.
pub struct QueueSender<T> {
    tx: Sender<T>,
    rx: Receiver<T>,
    overflow: Overflow,
}

/// Outcome of [`QueueSender::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued after dropping this many older items.
    DroppedOldest(usize),
    /// The consumer is gone, or `keep_waiting` said stop while blocked.
    Closed,
}

/// A bounded queue of `capacity` items (≥ 1).
pub fn bounded<T>(capacity: usize, overflow: Overflow) -> (QueueSender<T>, Receiver<T>) {
    let (tx, rx) = channel::bounded(capacity.max(1));
    (
        QueueSender {
            tx,
            rx: rx.clone(),
            overflow,
        },
        rx,
    )
}

impl<T> QueueSender<T> {
    /// Queues `item`; with `Overflow::Block`, waits while `keep_waiting()` is true.
    pub fn push(&self, mut item: T, keep_waiting: impl Fn() -> bool) -> Pushed {
        let mut dropped = 0;
        loop {
            match self.overflow {
                Overflow::DropOldest => match self.tx.try_send(item) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        item = back;
                        if self.rx.try_recv().is_ok() {
                            dropped += 1;
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => return Pushed::Closed,
                },
                Overflow::Block => match self.tx.send_timeout(item, Duration::from_millis(100)) {
                    Ok(()) => break,
                    Err(SendTimeoutError::Timeout(back)) => {
                        if !keep_waiting() {
                            return Pushed::Closed;
                        }
                        item = back;
                    }
                    Err(SendTimeoutError::Disconnected(_)) => return Pushed::Closed,
                },
            }
        }
        if dropped == 0 {
            Pushed::Queued
        } else {
            Pushed::DroppedOldest(dropped)
        }
    }

    /// Another handle on the same queue (the appsink callback keeps one).
    pub fn clone_sender(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
            overflow: self.overflow,
        }
    }

    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let (tx, rx) = bounded(3, Overflow::DropOldest);
        for i in 0..3 {
            assert_eq!(tx.push(i, || true), Pushed::Queued);
        }
        assert_eq!(tx.push(3, || true), Pushed::DroppedOldest(1));
        assert_eq!(tx.push(4, || true), Pushed::DroppedOldest(1));
        let got: Vec<i32> = rx.try_iter().collect();
        assert_eq!(got, vec![2, 3, 4]);
    }

    #[test]
    fn block_waits_then_gives_up_when_told() {
        let (tx, rx) = bounded(1, Overflow::Block);
        assert_eq!(tx.push(1, || true), Pushed::Queued);
        assert_eq!(tx.push(2, || false), Pushed::Closed);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(tx.push(3, || true), Pushed::Queued);
        drop(rx);
        // The sender's own receiver clone keeps the channel open; a full queue with a
        // consumer gone is ended by keep_waiting.
        assert_eq!(tx.push(4, || false), Pushed::Closed);
    }
}
