//! gRPC helpers for the daemon tests: a connected client (optionally with a bearer
//! token), asks collected to their end, stream waits.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use pb::video_streams_client::VideoStreamsClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use vstreamd::serve::proto as pb;

pub type TokenInterceptor = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
pub type Client = VideoStreamsClient<InterceptedService<Channel, TokenInterceptor>>;

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connecting to the daemon")
}

/// A client sending `token` as `authorization: Bearer`, if given.
pub async fn connect(url: &str, token: Option<&str>) -> Client {
    let header: Option<MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    let interceptor: TokenInterceptor = Box::new(move |mut req: Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    VideoStreamsClient::with_interceptor(channel(url).await, interceptor)
        .max_decoding_message_size(16 << 20)
}

pub fn ask(stream: &str, question: &str, max_new_tokens: u32) -> pb::AskRequest {
    pb::AskRequest {
        stream: stream.into(),
        question: question.into(),
        range: None,
        options: Some(pb::AskOptions {
            max_new_tokens,
            ..Default::default()
        }),
    }
}

/// Everything an answer stream sent, and how it ended.
#[derive(Debug, Default)]
pub struct Collected {
    pub tokens: Vec<pb::Token>,
    pub answer: Option<pb::Answer>,
    /// `Ok` when the stream ended without an error status.
    pub code: Option<Code>,
    pub message: String,
}

/// Reads an answer stream to its end.
pub async fn collect(mut stream: tonic::Streaming<pb::AskEvent>) -> Collected {
    let mut c = Collected::default();
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(pb::ask_event::Event::Token(t)) => c.tokens.push(t),
                Some(pb::ask_event::Event::Answer(a)) => c.answer = Some(a),
                None => {}
            },
            Ok(None) => {
                c.code = Some(Code::Ok);
                return c;
            }
            Err(status) => {
                c.code = Some(status.code());
                c.message = status.message().to_owned();
                return c;
            }
        }
    }
}

/// The code an Ask ends with, whether refused at once or in the stream.
pub async fn ask_code(client: &mut Client, req: Request<pb::AskRequest>) -> Code {
    match client.ask(req).await {
        Err(status) => status.code(),
        Ok(response) => collect(response.into_inner())
            .await
            .code
            .unwrap_or(Code::Ok),
    }
}

/// Polls GetStream until `done(status)`, panicking after `timeout`.
pub async fn wait_stream(
    client: &mut Client,
    id: &str,
    timeout: Duration,
    mut done: impl FnMut(&pb::StreamStatus) -> bool,
) -> pb::Stream {
    let start = Instant::now();
    loop {
        let s = client
            .get_stream(pb::GetStreamRequest { id: id.into() })
            .await
            .expect("GetStream")
            .into_inner();
        if done(s.status.as_ref().expect("status")) {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "stream {id} not ready after {timeout:?}: {:?}",
            s.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
