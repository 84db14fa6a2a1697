//! The `vstream.v1.VideoStreams` service: validation, limits and deadlines around the
//! engine. Handlers never touch tensors: they convert ([`super::convert`]), check, and
//! forward engine events to the client's stream from a task that also watches the
//! deadline, the client going away and the daemon stopping.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::auth::client_of;
use super::convert;
use super::limits::{deadline, AskLimiter, AskPermit};
use super::proto as pb;
use super::registry::{KnownStreams, Registry};
use super::telemetry::RpcTimer;
use crate::engine::{AskEvent, AskHandle, AskRequest, Engine};

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
    pub max_question_bytes: usize,
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

    fn check_stream(&self, id: &str) -> Result<(), Status> {
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

impl VideoStreamsService {
    /// Ask and Summarize: deadline, validation (`to_ask`), readiness, stream, limits;
    /// then the answer streams.
    async fn answer<T>(
        &self,
        method: &'static str,
        request: Request<T>,
        to_ask: fn(&T, usize) -> Result<AskRequest, Status>,
    ) -> Result<Response<EventStream<pb::AskEvent>>, Status> {
        let rpc = RpcTimer::start(method);
        let prepared = (|| {
            let deadline = deadline(request.metadata(), self.shared.max_request)?;
            let req = to_ask(request.get_ref(), self.shared.max_question_bytes)?;
            self.shared.engine()?;
            self.shared.check_stream(&req.stream)?;
            let permit = self.shared.asks.try_acquire(&client_of(&request))?;
            Ok((req, deadline, permit))
        })();
        match prepared {
            Ok((req, deadline, permit)) => {
                self.stream_answer(method, rpc, req, deadline, permit).await
            }
            Err(status) => rpc.unary(Err(status)),
        }
    }

    /// Starts an ask (or summary) and returns its event stream.
    async fn stream_answer(
        &self,
        method: &'static str,
        rpc: RpcTimer,
        req: AskRequest,
        deadline_in: Duration,
        permit: AskPermit,
    ) -> Result<Response<EventStream<pb::AskEvent>>, Status> {
        let shared = &self.shared;
        let engine = shared.engine()?;
        let handle = engine.ask(req).map_err(|e| convert::status(&e))?;
        drop(engine);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let cancel_all = shared.cancel_all.clone();
        let deadline = Instant::now() + deadline_in;
        tokio::spawn(async move {
            let _permit = permit;
            let code = match forward(handle, &tx, Some(token_event), deadline, cancel_all).await {
                Forwarded::Answer(answer) => {
                    let event = pb::AskEvent {
                        event: Some(pb::ask_event::Event::Answer(convert::answer(&answer))),
                    };
                    if tx.send(Ok(event)).await.is_ok() {
                        Code::Ok
                    } else {
                        Code::Cancelled
                    }
                }
                Forwarded::Status(status) => {
                    let code = status.code();
                    let _ = tx.send(Err(status)).await;
                    code
                }
            };
            tracing::debug!(method, code = ?code, "stream ended");
            rpc.finish(code);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl pb::video_streams_server::VideoStreams for VideoStreamsService {
    async fn create_stream(
        &self,
        request: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::Stream>, Status> {
        let rpc = RpcTimer::start("CreateStream");
        rpc.unary(self.create(request.into_inner()).await)
    }

    async fn delete_stream(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let rpc = RpcTimer::start("DeleteStream");
        let req = request.into_inner();
        let result = async {
            let engine = self.shared.engine()?;
            let mut registry = self.shared.registry.lock().await;
            let registry = registry
                .as_mut()
                .ok_or_else(|| Status::unavailable("starting"))?;
            registry.delete(&engine, &req.id, req.purge).await?;
            Ok(Response::new(pb::DeleteStreamResponse {}))
        }
        .await;
        rpc.unary(result)
    }

    async fn list_streams(
        &self,
        _request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let rpc = RpcTimer::start("ListStreams");
        let result = async {
            let streams = self.describe(None).await?;
            Ok(Response::new(pb::ListStreamsResponse { streams }))
        }
        .await;
        rpc.unary(result)
    }

    async fn get_stream(
        &self,
        request: Request<pb::GetStreamRequest>,
    ) -> Result<Response<pb::Stream>, Status> {
        let rpc = RpcTimer::start("GetStream");
        let id = request.into_inner().id;
        let result = async {
            if id.is_empty() {
                return Err(convert::invalid("id is empty"));
            }
            self.shared.check_stream(&id)?;
            self.describe(Some(&id))
                .await?
                .pop()
                .map(Response::new)
                .ok_or_else(|| Status::not_found(format!("unknown stream `{id}`")))
        }
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
        let prepared = (|| {
            let deadline = deadline(request.metadata(), self.shared.max_request)?;
            let params = super::watch::WatchParams::from_request(
                request.get_ref(),
                self.shared.max_question_bytes,
            )?;
            let engine = self.shared.engine()?;
            self.shared.check_stream(&params.stream)?;
            let permit = self.shared.watches.clone().try_acquire_owned().map_err(|_| {
                metrics::counter!(crate::metrics::GRPC_REJECTED, "reason" => "resource_exhausted")
                    .increment(1);
                Status::resource_exhausted("the server's limit of open watches is reached")
            })?;
            Ok((params, deadline, permit, engine))
        })();
        let (params, deadline_in, permit, engine) = match prepared {
            Ok(p) => p,
            Err(status) => return rpc.unary(Err(status)),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let cancel_all = self.shared.cancel_all.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let status = super::watch::run(
                engine,
                params,
                &tx,
                Instant::now() + deadline_in,
                cancel_all,
            )
            .await;
            let code = status.code();
            let _ = tx.send(Err(status)).await;
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
