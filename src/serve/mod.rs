//! The daemon: gRPC (tonic) in front of the engine, Prometheus metrics on their own
//! port, systemd notification and watchdog, signals.
//!
//! [`run`] takes bound listeners and a control channel (mini-redis habit: tests bind
//! port 0, then stop the server cleanly). Its life:
//! 1. serve at once: health says NOT_SERVING and the API answers UNAVAILABLE while
//!    2. the model loads and 3. every stream's store is recovered (progress logged and
//!    sent to systemd as STATUS);
//! 4. SERVING, READY=1, `on_ready`; SIGHUP ([`Control::Reload`]) re-reads the config's
//!    stream list;
//! 5. on [`Control::Shutdown`]: NOT_SERVING, new requests refused, open asks given
//!    `shutdown_grace` to finish, then cancelled (their final event says CANCELLED),
//!    watches ended, the engine stopped (ingest stopped, blocks made durable).
//!
//! # Layout
//! - [`proto`]: generated code and the descriptor set for reflection.
//! - [`service`]: the `VideoStreams` handlers; [`watch`]: standing questions;
//!   [`forward`]: an engine answer onto a client's stream.
//! - [`convert`]: wire ↔ engine types, errors → status codes; [`bounds`]: the bound of
//!   every number and string a client sends; [`codec`]: malformed bodies refused.
//! - [`registry`]: config and API streams, persisted, reloaded.
//! - [`auth`]: bearer tokens, client identity; [`limits`]: concurrency and deadlines.
//! - [`telemetry`]: RPC metrics and the `/metrics` endpoint; [`systemd`]: sd_notify.

pub mod auth;
pub mod bounds;
pub mod codec;
pub mod convert;
pub mod forward;
pub mod limits;
pub mod proto;
pub mod registry;
pub mod service;
pub mod systemd;
pub mod telemetry;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch as signal, Mutex, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::ServeError;
use crate::metrics as names;
use crate::model::{ModelOptions, Precision, VideoLlm};
use auth::{Authenticator, Tokens};
use limits::AskLimiter;
use registry::{KnownStreams, Registry};
use service::{Shared, VideoStreamsService};

/// What the process asks of a running daemon (from signals, or a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the config file's stream list (SIGHUP).
    Reload,
    /// Stop cleanly (SIGTERM, SIGINT).
    Shutdown,
}

/// Where the daemon listens.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// The metrics endpoint: its listener and the installed recorder's handle.
pub struct MetricsEndpoint {
    pub listener: TcpListener,
    pub handle: PrometheusHandle,
}

/// How long the engine may take to stop once every request has ended.
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn load_model(config: &Config) -> Result<Box<dyn VideoLlm>, ServeError> {
    let precision: Precision = config.model.dtype.parse()?;
    let options = ModelOptions::parse(&config.model.device, precision)?;
    let start = Instant::now();
    tracing::info!(model = %config.model.path.display(), device = %config.model.device, dtype = %config.model.dtype, "loading model");
    let _guard = tch::no_grad_guard();
    let model = crate::model::load(&config.model.path, options)?;
    tracing::info!(
        seconds = start.elapsed().as_secs_f64(),
        family = model.family(),
        "model loaded"
    );
    Ok(model)
}

fn tls_config(config: &Config) -> Result<Option<ServerTlsConfig>, ServeError> {
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| ServeError::Tls(format!("{}: {e}", p.display())))
    };
    Ok(Some(ServerTlsConfig::new().identity(Identity::from_pem(
        read(&tls.cert)?,
        read(&tls.key)?,
    ))))
}

/// Runs the daemon until [`Control::Shutdown`] (or the control channel closing).
/// `config_path` is re-read on [`Control::Reload`]; `on_ready` is called once serving.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    grpc: TcpListener,
    metrics_endpoint: Option<MetricsEndpoint>,
    mut control: mpsc::UnboundedReceiver<Control>,
    on_ready: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    let bound = Bound {
        grpc: grpc.local_addr()?,
        metrics: match &metrics_endpoint {
            Some(m) => Some(m.listener.local_addr()?),
            None => None,
        },
    };
    metrics::gauge!(names::SERVE_READY).set(0.0);
    let tokens = match &config.server.auth_tokens_file {
        Some(path) => Some(Arc::new(Tokens::load(path)?)),
        None => None,
    };
    let tls = tls_config(&config)?;

    // 1. Serve at once, NOT_SERVING until the engine is up.
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", proto::SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let (stopping_tx, stopping_rx) = signal::channel(false);
    let (cancel_tx, cancel_rx) = signal::channel(false);
    let known = KnownStreams::default();
    let shared = Arc::new(Shared {
        engine: RwLock::new(None),
        registry: Mutex::new(None),
        known: known.clone(),
        asks: AskLimiter::new(
            config.server.max_concurrent_asks,
            config.server.max_concurrent_asks_per_client,
        ),
        watches: Arc::new(Semaphore::new(config.server.max_watches)),
        ask_bounds: bounds::AskBounds {
            max_question_bytes: config.server.max_question_bytes,
            max_top_k: config.engine.max_top_k,
            max_new_tokens: config.engine.max_new_tokens_limit,
        },
        max_request: config.server.max_request(),
        stopping: stopping_rx,
        cancel_all: cancel_rx,
    });
    let max_message = config.server.max_message_bytes;
    let api = proto::video_streams_server::VideoStreamsServer::new(VideoStreamsService {
        shared: shared.clone(),
    })
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let api = tonic::service::interceptor::InterceptedService::new(
        api,
        Authenticator {
            tokens: tokens.clone(),
        },
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Metrics(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Metrics(format!("reflection: {e}")))?;
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let (server_stop_tx, server_stop_rx) = oneshot::channel::<()>();
    let mut server = tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async {
                let _ = server_stop_rx.await;
            }),
    );
    tracing::info!(grpc = %bound.grpc, auth = tokens.is_some(), tls = config.server.tls.is_some(), "gRPC listening (not serving until the model is loaded)");

    let (metrics_stop_tx, metrics_stop_rx) = oneshot::channel::<()>();
    let metrics_task = metrics_endpoint.map(|m| {
        tracing::info!(metrics = ?bound.metrics, "Prometheus metrics at /metrics");
        tokio::spawn(telemetry::serve_metrics(m.listener, m.handle, async {
            let _ = metrics_stop_rx.await;
        }))
    });

    if let Some(interval) = systemd::watchdog_interval() {
        let shared = shared.clone();
        tokio::spawn(systemd::watchdog(
            interval,
            Arc::new(move || {
                shared
                    .engine
                    .read()
                    .ok()
                    .and_then(|e| e.as_ref().map(|e| e.heartbeat_ms()))
            }),
        ));
    }

    // 2.–3. Model, engine, streams.
    systemd::status("loading the model");
    let engine_config = config.engine_config();
    let model_config = config.clone();
    let mut loading =
        tokio::task::spawn_blocking(move || -> Result<(Engine, (u32, u32)), ServeError> {
            let model = load_model(&model_config)?;
            let size = model.frame_size();
            Ok((Engine::start(model, engine_config)?, size))
        });
    let started = tokio::select! {
        loaded = &mut loading => Some(loaded.map_err(|e| ServeError::Metrics(format!("model loader: {e}")))??),
        () = wait_for_shutdown(&mut control) => None,
    };
    let Some((engine, model_size)) = started else {
        tracing::info!("stopping before the model finished loading");
        let _ = server_stop_tx.send(());
        let _ = metrics_stop_tx.send(());
        return Ok(());
    };
    let engine = Arc::new(engine);
    let mut registry = Registry::new(config.clone(), model_size, known);
    registry.start_all(&engine).await?;
    *shared.registry.lock().await = Some(registry);
    if let Ok(mut slot) = shared.engine.write() {
        *slot = Some(engine.clone());
    }

    // 4. Serving.
    for name in ["", proto::SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    metrics::gauge!(names::SERVE_READY).set(1.0);
    systemd::ready();
    tracing::info!(grpc = %bound.grpc, "serving");
    on_ready(bound);

    let mut server_error = None;
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Reload) => reload(&shared, &engine, config_path.as_ref()).await,
                Some(Control::Shutdown) | None => break,
            },
            ended = &mut server => {
                server_error = Some(match ended {
                    Ok(Ok(())) => ServeError::Metrics("the gRPC server stopped on its own".into()),
                    Ok(Err(e)) => ServeError::Transport(e),
                    Err(e) => ServeError::Metrics(format!("the gRPC server task: {e}")),
                });
                break;
            }
        }
    }

    // 5. Stopping.
    tracing::info!("stopping");
    systemd::stopping();
    metrics::gauge!(names::SERVE_READY).set(0.0);
    for name in ["", proto::SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let _ = stopping_tx.send(true);
    let grace_end = Instant::now() + config.server.shutdown_grace();
    while shared.asks.in_flight() > 0 && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if shared.asks.in_flight() > 0 {
        tracing::info!(open = shared.asks.in_flight(), "cancelling open asks");
    }
    let _ = cancel_tx.send(true);
    drop(engine);
    if server_error.is_none() {
        let _ = server_stop_tx.send(());
        match tokio::time::timeout(ENGINE_STOP_TIMEOUT, &mut server).await {
            Ok(Ok(Err(e))) => server_error = Some(ServeError::Transport(e)),
            Ok(_) => {}
            Err(_) => tracing::warn!("open requests did not end in time"),
        }
    }
    let engine = shared.engine.write().ok().and_then(|mut e| e.take());
    if let Some(engine) = engine {
        let stopped = tokio::task::spawn_blocking(move || stop_engine(engine));
        if tokio::time::timeout(ENGINE_STOP_TIMEOUT, stopped)
            .await
            .is_err()
        {
            tracing::error!("the engine did not stop in time");
        }
    }
    let _ = metrics_stop_tx.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    match server_error {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

async fn wait_for_shutdown(control: &mut mpsc::UnboundedReceiver<Control>) {
    loop {
        match control.recv().await {
            Some(Control::Reload) => tracing::info!("reload ignored while starting"),
            Some(Control::Shutdown) | None => return,
        }
    }
}

/// Waits for the last other holder of the engine (a watch ending), then stops it:
/// ingest stopped, stores synced, the thread joined.
fn stop_engine(mut engine: Arc<Engine>) {
    let start = Instant::now();
    loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => {
                e.shutdown();
                tracing::info!(
                    seconds = start.elapsed().as_secs_f64(),
                    "engine stopped, blocks durable"
                );
                return;
            }
            Err(shared) if start.elapsed() < ENGINE_STOP_TIMEOUT => {
                engine = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                tracing::error!("the engine is still referenced; stopping it with the process");
                return;
            }
        }
    }
}

async fn reload(shared: &Shared, engine: &Engine, path: Option<&PathBuf>) {
    let Some(path) = path else {
        tracing::warn!("reload asked, but the daemon runs without a config file");
        return;
    };
    systemd::reloading();
    match Config::load(path) {
        Err(e) => {
            tracing::error!(error = %e, "reload: the config is invalid; keeping the current streams")
        }
        Ok(new) => {
            let mut registry = shared.registry.lock().await;
            if let Some(registry) = registry.as_mut() {
                let report = registry.reload(engine, new).await;
                tracing::info!(added = ?report.added, removed = ?report.removed, restarted = ?report.restarted, failed = ?report.failed, "reloaded the stream list (other settings apply at restart)");
            }
        }
    }
    systemd::ready();
}
