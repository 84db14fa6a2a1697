//! The `vstream.v1.VideoStreams` service: validation, limits and deadlines around the
//! engine. Handlers never touch tensors: they convert ([`super::convert`]), check, and
//! forward engine events to the client's stream from a task that also watches the
//! deadline, the client going away and the daemon stopping.
//!
//! Every handler runs in its own task ([`caught`]): a panic in one is an INTERNAL
//! status for that request (logged, counted), never a reset stream. Each request's
//! [`RpcTimer`] records the code the client receives, whichever way the handler ends.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::auth::client_of;
use super::bounds::{self, AskBounds};
use super::convert;
use super::forward::{forward, Forwarded};
use super::limits::{deadline, AskLimiter, AskPermit};
use super::proto as pb;
use super::registry::{KnownStreams, Registry};
use super::telemetry::RpcTimer;
use crate::engine::{AskHandle, AskRequest, Engine};

/// Events buffered per response stream before the engine's side waits for the client.
const STREAM_BUFFER: usize = 32;

/// What every handler shares.
pub struct Shared {
    /// Set once the model is loaded and the streams recovered; taken at shutdown.
    pub engine: RwLock<Option<Arc<Engine>>>,
    pub registry: Mutex<Option<Registry>>,
    pub known: KnownStreams,
    pub asks: Arc<AskLimiter>,
    pub watches: Arc<Semaphore>,
    /// Bounds of questions (question bytes, top_k, max_new_tokens).
    pub ask_bounds: AskBounds,
    pub max_request: Duration,
    /// True once the daemon is stopping: new requests get UNAVAILABLE.
    pub stopping: watch::Receiver<bool>,
    /// True once open asks must end now (cancelled at their next token).
    pub cancel_all: watch::Receiver<bool>,
}

impl Shared {
    fn engine(&self) -> Result<Arc<Engine>, Status> {
        if *self.stopping.borrow() {
            return Err(Status::unavailable("the daemon is stopping"));
        }
        self.engine
            .read()
            .map_err(|_| Status::internal("engine slot poisoned"))?
            .clone()
            .ok_or_else(|| Status::unavailable("the daemon is starting (model loading)"))
    }

    /// A well-formed id the daemon knows.
    fn check_stream(&self, id: &str) -> Result<(), Status> {
        bounds::stream_id(id, "stream")?;
        if self.known.contains(id) {
            Ok(())
        } else {
            Err(Status::not_found(format!("unknown stream `{id}`")))
        }
    }
}

#[derive(Clone)]
pub struct VideoStreamsService {
    pub shared: Arc<Shared>,
}

type EventStream<T> = ReceiverStream<Result<T, Status>>;

fn token_event(id: i64, text: String) -> pb::AskEvent {
    pb::AskEvent {
        event: Some(pb::ask_event::Event::Token(pb::Token { id, text })),
    }
}

/// Runs a handler's work in its own task: a panic there becomes INTERNAL (logged,
/// counted) instead of tearing down the client's stream.
pub(super) async fn caught<T: Send + 'static>(
    method: &'static str,
    work: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = crate::error::panic_message(payload.as_ref());
            tracing::error!(method, msg, "caught a panic in a request handler");
            crate::metrics::internal_error("serve", method);
            Err(Status::internal(format!("internal error in {method}")))
        }
        Err(_) => Err(Status::unavailable("the daemon is stopping")),
    }
}

/// An answer ready to stream: the engine has the question.
struct Started {
    handle: AskHandle,
    deadline: Duration,
    permit: AskPermit,
}

impl VideoStreamsService {
    /// Ask and Summarize: deadline, validation (`to_ask`), readiness, stream, limits,
    /// the question queued; then the answer streams. Any refusal is recorded with the
    /// code the client gets.
    async fn answer<T: Send + 'static>(
        &self,
        method: &'static str,
        request: Request<T>,
        to_ask: fn(&T, &AskBounds) -> Result<AskRequest, Status>,
    ) -> Result<Response<EventStream<pb::AskEvent>>, Status> {
        let rpc = RpcTimer::start(method);
        let shared = self.shared.clone();
        let started = caught(method, async move {
            let deadline = deadline(request.metadata(), shared.max_request)?;
            let req = to_ask(request.get_ref(), &shared.ask_bounds)?;
            let engine = shared.engine()?;
            shared.check_stream(&req.stream)?;
            let permit = shared.asks.try_acquire(&client_of(&request))?;
            let handle = engine.ask(req).map_err(|e| convert::status(&e))?;
            Ok(Started {
                handle,
                deadline,
                permit,
            })
        })
        .await;
        match started {
            Ok(started) => Ok(self.stream_answer(method, rpc, started)),
            Err(status) => rpc.unary(Err(status)),
        }
    }

    /// Streams an answer's events from a task that owns the request's timer and place.
    fn stream_answer(
        &self,
        method: &'static str,
        rpc: RpcTimer,
        started: Started,
    ) -> Response<EventStream<pb::AskEvent>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let cancel_all = self.shared.cancel_all.clone();
        let deadline = Instant::now() + started.deadline;
        tokio::spawn(async move {
            let _permit = started.permit;
            let events = tx.clone();
            let forwarded = caught(method, async move {
                let forwarded = forward(
                    started.handle,
                    &events,
                    Some(token_event),
                    deadline,
                    cancel_all,
                )
                .await;
                Ok(match forwarded {
                    Forwarded::Answer(answer) => Ok(answer),
                    Forwarded::Status(status) => Err(status),
                })
            })
            .await;
            let code = match forwarded.and_then(|f| f) {
                Ok(answer) => {
                    let event = pb::AskEvent {
                        event: Some(pb::ask_event::Event::Answer(convert::answer(&answer))),
                    };
                    if tx.send(Ok(event)).await.is_ok() {
                        Code::Ok
                    } else {
                        Code::Cancelled
                    }
                }
                Err(status) => {
                    let code = status.code();
                    if tx.send(Err(bounds::bounded(status))).await.is_ok() {
                        code
                    } else {
                        Code::Cancelled
                    }
                }
            };
            tracing::debug!(method, code = ?code, "stream ended");
            rpc.finish(code);
        });
        Response::new(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl pb::video_streams_server::VideoStreams for VideoStreamsService {
    async fn create_stream(
        &self,
        request: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::Stream>, Status> {
        let rpc = RpcTimer::start("CreateStream");
        let this = self.clone();
        rpc.unary(
            caught("CreateStream", async move {
                this.create(request.into_inner()).await
            })
            .await,
        )
    }

    async fn delete_stream(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let rpc = RpcTimer::start("DeleteStream");
        let shared = self.shared.clone();
        let result = caught("DeleteStream", async move {
            let req = request.into_inner();
            bounds::stream_id(&req.id, "id")?;
            let engine = shared.engine()?;
            let mut registry = shared.registry.lock().await;
            let registry = registry
                .as_mut()
                .ok_or_else(|| Status::unavailable("starting"))?;
            registry.delete(&engine, &req.id, req.purge).await?;
            Ok(Response::new(pb::DeleteStreamResponse {}))
        })
        .await;
        rpc.unary(result)
    }

    async fn list_streams(
        &self,
        _request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let rpc = RpcTimer::start("ListStreams");
        let this = self.clone();
        let result = caught("ListStreams", async move {
            let streams = this.describe(None).await?;
            Ok(Response::new(pb::ListStreamsResponse { streams }))
        })
        .await;
        rpc.unary(result)
    }

    async fn get_stream(
        &self,
        request: Request<pb::GetStreamRequest>,
    ) -> Result<Response<pb::Stream>, Status> {
        let rpc = RpcTimer::start("GetStream");
        let this = self.clone();
        let result = caught("GetStream", async move {
            let id = request.into_inner().id;
            bounds::stream_id(&id, "id")?;
            this.shared.check_stream(&id)?;
            this.describe(Some(&id))
                .await?
                .pop()
                .map(Response::new)
                .ok_or_else(|| Status::not_found(format!("unknown stream `{id}`")))
        })
        .await;
        rpc.unary(result)
    }

    type AskStream = EventStream<pb::AskEvent>;

    async fn ask(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<Self::AskStream>, Status> {
        self.answer("Ask", request, convert::ask_request).await
    }

    type SummarizeStream = EventStream<pb::AskEvent>;

    async fn summarize(
        &self,
        request: Request<pb::SummarizeRequest>,
    ) -> Result<Response<Self::SummarizeStream>, Status> {
        self.answer("Summarize", request, convert::summarize_request)
            .await
    }

    type WatchStream = EventStream<pb::WatchEvent>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rpc = RpcTimer::start("Watch");
        let shared = self.shared.clone();
        let prepared = caught("Watch", async move {
            let deadline = deadline(request.metadata(), shared.max_request)?;
            let params = super::watch::WatchParams::from_request(
                request.get_ref(),
                shared.ask_bounds.max_question_bytes,
            )?;
            let engine = shared.engine()?;
            shared.check_stream(&params.stream)?;
            let permit = shared.watches.clone().try_acquire_owned().map_err(|_| {
                metrics::counter!(crate::metrics::GRPC_REJECTED, "reason" => "resource_exhausted")
                    .increment(1);
                Status::resource_exhausted("the server's limit of open watches is reached")
            })?;
            Ok((params, deadline, permit, engine))
        })
        .await;
        let (params, deadline_in, permit, engine) = match prepared {
            Ok(p) => p,
            Err(status) => return rpc.unary(Err(status)),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let cancel_all = self.shared.cancel_all.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let events = tx.clone();
            let deadline = Instant::now() + deadline_in;
            let status = caught("Watch", async move {
                Ok(super::watch::run(engine, params, &events, deadline, cancel_all).await)
            })
            .await
            .unwrap_or_else(|status| status);
            let code = status.code();
            let code = if tx.send(Err(bounds::bounded(status))).await.is_ok() {
                code
            } else {
                Code::Cancelled
            };
            rpc.finish(code);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl VideoStreamsService {
    async fn create(&self, req: pb::CreateStreamRequest) -> Result<Response<pb::Stream>, Status> {
        let entry = convert::stream_entry(req.stream.as_ref())?;
        let engine = self.shared.engine()?;
        let mut registry = self.shared.registry.lock().await;
        let registry = registry
            .as_mut()
            .ok_or_else(|| Status::unavailable("starting"))?;
        let info = registry.create(&engine, entry.clone()).await?;
        Ok(Response::new(pb::Stream {
            spec: Some(convert::stream_spec(&entry)),
            origin: pb::StreamOrigin::Api as i32,
            status: Some(convert::stream_status(&info)),
        }))
    }

    /// One stream or all, with the engine's current figures.
    async fn describe(&self, id: Option<&str>) -> Result<Vec<pb::Stream>, Status> {
        let engine = self.shared.engine()?;
        let infos = engine
            .info(id)
            .recv()
            .await
            .map_err(|e| convert::status(&e))?;
        let registry = self.shared.registry.lock().await;
        let registry = registry
            .as_ref()
            .ok_or_else(|| Status::unavailable("starting"))?;
        Ok(infos
            .iter()
            .filter_map(|info| {
                let (entry, origin) = registry.get(&info.id)?;
                Some(pb::Stream {
                    spec: Some(convert::stream_spec(entry)),
                    origin: match origin {
                        super::registry::Origin::Config => pb::StreamOrigin::Config,
                        super::registry::Origin::Api => pb::StreamOrigin::Api,
                    } as i32,
                    status: Some(convert::stream_status(info)),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_internal_not_a_reset() {
        let result: Result<(), Status> =
            caught("Test", async { panic!("a broken invariant") }).await;
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("invariant"), "no internals leak");
        let fine = caught("Test", async { Ok::<_, Status>(7) }).await.unwrap();
        assert_eq!(fine, 7);
    }

    #[test]
    fn internal_engine_errors_are_internal_not_rejections() {
        use crate::error::EngineError;
        let s = convert::status(&EngineError::Internal("block 3 not loaded".into()));
        assert_eq!(s.code(), Code::Internal);
        let s = convert::status(&EngineError::InvalidRequest("top_k".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
