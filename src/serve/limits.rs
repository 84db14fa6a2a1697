//! Request limits: concurrent asks overall and per client (RESOURCE_EXHAUSTED beyond,
//! never queued without bound), and request deadlines (the client's `grpc-timeout`,
//! capped by the server's maximum).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::auth::ClientId;
use crate::metrics as names;

/// Counts asks in flight overall and per client.
pub struct AskLimiter {
    total: Arc<Semaphore>,
    total_max: usize,
    per_client_max: usize,
    /// A client's semaphore exists while it has asks in flight (removed by the last
    /// permit's drop), so the map holds active clients only.
    per_client: Mutex<HashMap<ClientId, Arc<Semaphore>>>,
}

/// One ask's place; dropping it frees the place.
pub struct AskPermit {
    _total: OwnedSemaphorePermit,
    client: Option<OwnedSemaphorePermit>,
    key: ClientId,
    limiter: Arc<AskLimiter>,
}

impl Drop for AskPermit {
    fn drop(&mut self) {
        drop(self.client.take());
        if let Ok(mut map) = self.limiter.per_client.lock() {
            let idle = map
                .get(&self.key)
                .is_some_and(|s| s.available_permits() == self.limiter.per_client_max);
            if idle {
                map.remove(&self.key);
            }
        }
    }
}

impl AskLimiter {
    pub fn new(total: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            total_max: total,
            per_client_max: per_client,
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// A place for `client`'s ask, or RESOURCE_EXHAUSTED.
    pub fn try_acquire(self: &Arc<Self>, client: &ClientId) -> Result<AskPermit, Status> {
        let exhausted = |what: String| {
            metrics::counter!(names::GRPC_REJECTED, "reason" => "resource_exhausted").increment(1);
            Status::resource_exhausted(what)
        };
        let client_sem = {
            let mut map = self
                .per_client
                .lock()
                .map_err(|_| Status::internal("ask limiter poisoned"))?;
            map.entry(client.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_client_max)))
                .clone()
        };
        let client_permit = client_sem.try_acquire_owned().map_err(|_| {
            exhausted(format!(
                "{} asks in flight for this client, the limit is {}",
                self.per_client_max, self.per_client_max
            ))
        })?;
        let total = self.total.clone().try_acquire_owned().map_err(|_| {
            exhausted(format!(
                "{} asks in flight, the server's limit",
                self.total_max
            ))
        })?;
        Ok(AskPermit {
            _total: total,
            client: Some(client_permit),
            key: client.clone(),
            limiter: self.clone(),
        })
    }

    /// Asks in flight now.
    pub fn in_flight(&self) -> usize {
        self.total_max - self.total.available_permits()
    }
}

/// The client's `grpc-timeout` capped at `max`; `max` when the client sets none.
pub fn deadline(metadata: &MetadataMap, max: Duration) -> Result<Duration, Status> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(max);
    };
    let text = value
        .to_str()
        .map_err(|_| super::bounds::invalid("grpc-timeout is not ASCII"))?;
    parse_grpc_timeout(text).map(|d| d.min(max)).ok_or_else(|| {
        super::bounds::invalid(format!(
            "bad grpc-timeout `{}`",
            crate::error::excerpt(text)
        ))
    })
}

/// `grpc-timeout` per the gRPC HTTP/2 spec: up to 8 digits and a unit (H M S m u n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        let mut md = MetadataMap::new();
        let max = Duration::from_secs(60);
        assert_eq!(deadline(&md, max).unwrap(), max);
        md.insert("grpc-timeout", "100S".parse().unwrap());
        assert_eq!(deadline(&md, max).unwrap(), max);
        md.insert("grpc-timeout", "100m".parse().unwrap());
        assert_eq!(deadline(&md, max).unwrap(), Duration::from_millis(100));
    }

    #[test]
    fn limits_are_per_client_and_overall() {
        let limiter = AskLimiter::new(3, 2);
        let a = ClientId("a".into());
        let b = ClientId("b".into());
        let a1 = limiter.try_acquire(&a).unwrap();
        let _a2 = limiter.try_acquire(&a).unwrap();
        let e = limiter.try_acquire(&a).err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let _b1 = limiter.try_acquire(&b).unwrap();
        assert_eq!(limiter.in_flight(), 3);
        let e = limiter.try_acquire(&b).err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        drop(a1);
        let _b2 = limiter.try_acquire(&b).unwrap();
        assert_eq!(limiter.in_flight(), 3);
    }

    #[test]
    fn idle_clients_leave_the_map() {
        let limiter = AskLimiter::new(4, 1);
        for i in 0..100 {
            let c = ClientId(format!("c{i}"));
            drop(limiter.try_acquire(&c).unwrap());
        }
        assert!(limiter.per_client.lock().unwrap().is_empty());
    }
}
