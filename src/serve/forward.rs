//! Forwarding an engine answer to a client: tokens onto the response stream until the
//! answer, the deadline, the client leaving, or the daemon cancelling everything. Ask,
//! Summarize ([`super::service`]) and Watch ([`super::watch`]) share it.

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use super::convert;
use crate::engine::{AskEvent, AskHandle};

/// Why forwarding an answer ended.
pub(super) enum Forwarded {
    Answer(crate::engine::Answer),
    /// Ended with this status (already sent to the client when it could be).
    Status(Status),
}

/// Forwards `handle`'s events: tokens to `tx` (made by `token`, when set), until the
/// answer, the deadline, the client leaving, or the daemon cancelling everything.
pub(super) async fn forward<T>(
    mut handle: AskHandle,
    tx: &mpsc::Sender<Result<T, Status>>,
    token: Option<fn(i64, String) -> T>,
    deadline: Instant,
    mut cancel_all: watch::Receiver<bool>,
) -> Forwarded {
    let mut cancelling = *cancel_all.borrow();
    if cancelling {
        handle.cancel();
    }
    loop {
        tokio::select! {
            event = handle.events.recv() => match event {
                Some(AskEvent::Token { id, text }) => {
                    let Some(make) = token else {
                        continue;
                    };
                    if tx.send(Ok(make(id, text))).await.is_err() {
                        handle.cancel();
                        return Forwarded::Status(Status::cancelled("the client went away"));
                    }
                }
                Some(AskEvent::Done(answer)) => return Forwarded::Answer(answer),
                Some(AskEvent::Failed(e)) => return Forwarded::Status(convert::status(&e)),
                None => return Forwarded::Status(Status::unavailable("the engine stopped")),
            },
            _ = tokio::time::sleep_until(deadline) => {
                handle.cancel();
                return Forwarded::Status(Status::deadline_exceeded("the deadline passed; generation stopped"));
            }
            _ = tx.closed() => {
                handle.cancel();
                return Forwarded::Status(Status::cancelled("the client went away"));
            }
            changed = cancel_all.changed(), if !cancelling => {
                // The daemon is stopping: the engine ends the answer at its next token
                // and sends it (finish CANCELLED) as the final event.
                if changed.is_err() || *cancel_all.borrow() {
                    cancelling = true;
                    handle.cancel();
                }
            }
        }
    }
}
