//! Serving-side telemetry: per-RPC metrics ([`RpcTimer`]: requests by method and final
//! code, duration, in flight) and the Prometheus scrape endpoint on its own port
//! (`GET /metrics`: the recorder's text plus process metrics collected at scrape time).

use std::future::Future;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tonic::Code;

use crate::metrics as names;

/// Canonical upper-case name of a gRPC code (the `code` label).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One RPC's metrics. Dropped without [`RpcTimer::finish`], it counts as CANCELLED (the
/// client went away, or the handler's future was dropped by a deadline).
pub struct RpcTimer {
    method: &'static str,
    start: Instant,
    finished: bool,
}

impl RpcTimer {
    pub fn start(method: &'static str) -> Self {
        metrics::gauge!(names::GRPC_IN_FLIGHT, "method" => method).increment(1.0);
        Self {
            method,
            start: Instant::now(),
            finished: false,
        }
    }

    pub fn finish(mut self, code: Code) {
        self.record(code);
    }

    /// Records the outcome of a unary call (or of a streaming call refused before its
    /// stream began) and passes it through, its message bounded.
    pub fn unary<T>(self, result: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
        self.finish(result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok));
        result.map_err(super::bounds::bounded)
    }

    fn record(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        metrics::gauge!(names::GRPC_IN_FLIGHT, "method" => self.method).decrement(1.0);
        metrics::counter!(names::GRPC_REQUESTS, "method" => self.method, "code" => code_label(code))
            .increment(1);
        metrics::histogram!(names::GRPC_REQUEST_SECONDS, "method" => self.method)
            .record(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let process = metrics_process::Collector::default();
    process.describe();
    let upkeep = handle.clone();
    // Histograms are drained by upkeep; without the HTTP listener feature it is ours to run.
    let upkeep_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            let process = process.clone();
            async move {
                process.collect();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    upkeep_task.abort();
    result
}
