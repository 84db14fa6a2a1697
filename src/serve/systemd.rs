//! systemd integration (`Type=notify`): READY once serving, STATUS lines with progress,
//! RELOADING/STOPPING, and watchdog pings that stop when the engine loop stops turning,
//! so a hung engine gets restarted. Outside systemd (no `NOTIFY_SOCKET`) all of it is a
//! no-op.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sd_notify::NotifyState;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

pub fn reloading() {
    notify(&[
        NotifyState::Reloading,
        NotifyState::Status("reloading streams"),
    ]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// The watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog every half interval while `heartbeat_ms()` (Unix milliseconds of
/// the engine's last progress: a loop turn, a decode step, a stream's prefill) is
/// younger than the interval; before the engine exists
/// (`heartbeat_ms` returns `None`, e.g. while the model loads) it pings unconditionally.
pub async fn watchdog(
    interval: Duration,
    heartbeat_ms: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
) {
    let mut tick = tokio::time::interval(interval / 2);
    let mut warned = false;
    loop {
        tick.tick().await;
        let fresh = match heartbeat_ms() {
            None => true,
            Some(beat) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                now.saturating_sub(beat) < interval.as_millis() as u64
            }
        };
        if fresh {
            notify(&[NotifyState::Watchdog]);
            warned = false;
        } else if !warned {
            tracing::error!("the engine has made no progress for a watchdog interval; not pinging");
            warned = true;
        }
    }
}
