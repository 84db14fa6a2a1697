//! The client subcommands (`ask`, `streams`, `watch`, `summarize`): the daemon's gRPC
//! API from the shell. Tokens print as they arrive, then the citations.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::serve::proto as pb;
use pb::video_streams_client::VideoStreamsClient;

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The daemon's gRPC address (https:// for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "VSTREAMD_ADDR")]
    pub addr: String,
    /// A file holding the bearer token (first line).
    #[arg(long, env = "VSTREAMD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate to verify the daemon's TLS certificate with.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Deadline of the request, in seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct RangeArgs {
    /// Only what was seen in the last this many seconds.
    #[arg(long)]
    pub since_ago: Option<f64>,
    /// Only what was seen up to this many seconds ago.
    #[arg(long)]
    pub until_ago: Option<f64>,
    /// From this stream time (seconds).
    #[arg(long, conflicts_with = "since_ago")]
    pub since: Option<f64>,
    /// Up to this stream time (seconds).
    #[arg(long, conflicts_with = "until_ago")]
    pub until: Option<f64>,
}

impl RangeArgs {
    fn to_proto(&self) -> Option<pb::TimeRange> {
        use pb::time_point::Point;
        let point = |ago: Option<f64>, at: Option<f64>| {
            ago.map(Point::AgoSeconds)
                .or(at.map(Point::StreamSeconds))
                .map(|p| pb::TimePoint { point: Some(p) })
        };
        let range = pb::TimeRange {
            since: point(self.since_ago, self.since),
            until: point(self.until_ago, self.until),
        };
        (range.since.is_some() || range.until.is_some()).then_some(range)
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ModeArg {
    Retrieve,
    Recent,
    Uniform,
}

#[derive(Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub stream: String,
    #[command(flatten)]
    pub range: RangeArgs,
    #[arg(long, value_enum, default_value = "retrieve")]
    pub mode: ModeArg,
    /// Blocks retrieved per layer (0: the daemon's `[engine] top_k`).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Frames of the recent window attended to (unset: the daemon's `[engine]
    /// recent_frames`; 0: none).
    #[arg(long)]
    pub recent_frames: Option<u32>,
    #[arg(long, default_value_t = 0)]
    pub max_new_tokens: u32,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    pub question: String,
}

#[derive(Subcommand, Debug)]
pub enum StreamsCommand {
    /// Every stream with its state and figures.
    List(ConnectOnly),
    /// Create a stream (persisted by the daemon).
    Add(AddArgs),
    /// Delete a stream created over the API.
    Rm(RmArgs),
}

#[derive(Args, Debug)]
pub struct ConnectOnly {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub id: String,
    /// rtsp://, file://, a path, v4l2:///dev/videoN, test://PATTERN.
    #[arg(long)]
    pub uri: String,
    #[arg(long, default_value_t = 0.0)]
    pub sample_fps: f64,
    /// f32, f16, bf16, int8, int4.
    #[arg(long, default_value = "")]
    pub quant: String,
    #[arg(long, default_value_t = 0)]
    pub max_disk_mib: u64,
    #[arg(long, default_value_t = 0)]
    pub max_age_seconds: u64,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    pub id: String,
    /// Delete its stored frames too.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub stream: String,
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    #[arg(long, default_value_t = 60.0)]
    pub cooldown: f64,
    /// The answer's first word that counts as yes.
    #[arg(long, default_value = "yes")]
    pub positive: String,
    /// Print every evaluation, not only alerts.
    #[arg(long)]
    pub report_all: bool,
    pub question: String,
}

#[derive(Args, Debug)]
pub struct SummarizeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub stream: String,
    #[command(flatten)]
    pub range: RangeArgs,
    #[arg(long, default_value_t = 0)]
    pub frames: u32,
    #[arg(long, default_value = "")]
    pub instruction: String,
    #[arg(long, default_value_t = 0)]
    pub max_new_tokens: u32,
}

type AuthInterceptor = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Client = VideoStreamsClient<InterceptedService<Channel, AuthInterceptor>>;

/// A connected client carrying the token, if any.
pub async fn connect(args: &ConnectArgs) -> anyhow::Result<Client> {
    let mut endpoint = Endpoint::from_shared(args.addr.clone())
        .with_context(|| format!("bad --addr `{}`", args.addr))?
        .connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let header: Option<MetadataValue<_>> = match &args.token_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim();
            let token = token.rsplit_once(':').map_or(token, |(_, t)| t.trim());
            Some(
                format!("Bearer {token}")
                    .parse()
                    .context("the token is not ASCII")?,
            )
        }
    };
    let interceptor: AuthInterceptor = Box::new(move |mut req: Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    Ok(VideoStreamsClient::with_interceptor(channel, interceptor))
}

fn request<T>(message: T, connect: &ConnectArgs) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(t) = connect.timeout {
        req.set_timeout(Duration::from_secs_f64(t));
    }
    req
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn print_citations(out: &mut impl Write, answer: &pb::Answer) -> std::io::Result<()> {
    let finish = pb::FinishReason::try_from(answer.finish).map_or("unknown".into(), |f| {
        f.as_str_name()
            .trim_start_matches("FINISH_REASON_")
            .to_lowercase()
    });
    writeln!(out, "\n-- finish: {finish}")?;
    if let Some(f) = &answer.figures {
        writeln!(
            out,
            "-- {} blocks scanned, {} from RAM, {} from disk, {} window frames; first token after {:.0} ms",
            f.blocks_scanned,
            f.blocks_from_ram,
            f.blocks_from_disk,
            f.window_frames,
            f.time_to_first_token_seconds * 1e3
        )?;
    }
    for c in &answer.citations {
        let at = c.at.unwrap_or_default();
        let source = pb::BlockSource::try_from(c.source).map_or("?".into(), |s| {
            s.as_str_name()
                .trim_start_matches("BLOCK_SOURCE_")
                .to_lowercase()
        });
        writeln!(
            out,
            "   frame {:>6} at {:>9.2}s (wall {}){} [{source}]",
            c.seq,
            at.stream_seconds,
            at.wall_unix_ms,
            c.score
                .map(|s| format!(" score {s:.3}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

async fn print_answer_stream(mut stream: tonic::Streaming<pb::AskEvent>) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(pb::ask_event::Event::Token(t)) => {
                write!(out, "{}", t.text)?;
                out.flush()?;
            }
            Some(pb::ask_event::Event::Answer(a)) => print_citations(&mut out, &a)?,
            None => {}
        }
    }
    Ok(())
}

pub fn ask(args: &AskArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(&args.connect).await?;
        let message = pb::AskRequest {
            stream: args.stream.clone(),
            question: args.question.clone(),
            range: args.range.to_proto(),
            options: Some(pb::AskOptions {
                mode: match args.mode {
                    ModeArg::Retrieve => pb::AskMode::Retrieve,
                    ModeArg::Recent => pb::AskMode::Recent,
                    ModeArg::Uniform => pb::AskMode::Uniform,
                } as i32,
                top_k: args.top_k,
                recent_frames: args.recent_frames,
                max_new_tokens: args.max_new_tokens,
                temperature: args.temperature,
                seed: args.seed,
                ..Default::default()
            }),
        };
        let stream = client
            .ask(request(message, &args.connect))
            .await?
            .into_inner();
        print_answer_stream(stream).await
    })
}

pub fn summarize(args: &SummarizeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(&args.connect).await?;
        let message = pb::SummarizeRequest {
            stream: args.stream.clone(),
            range: args.range.to_proto(),
            frames: args.frames,
            instruction: args.instruction.clone(),
            max_new_tokens: args.max_new_tokens,
        };
        let stream = client
            .summarize(request(message, &args.connect))
            .await?
            .into_inner();
        print_answer_stream(stream).await
    })
}

pub fn watch(args: &WatchArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(&args.connect).await?;
        let message = pb::WatchRequest {
            stream: args.stream.clone(),
            question: args.question.clone(),
            interval_seconds: args.interval,
            cooldown_seconds: args.cooldown,
            positive: args.positive.clone(),
            report_all: args.report_all,
            ..Default::default()
        };
        let mut stream = client
            .watch(request(message, &args.connect))
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            match event.event {
                Some(pb::watch_event::Event::Alert(a)) => {
                    let span =
                        |m: &Option<pb::Moment>| m.as_ref().map_or(0.0, |m| m.stream_seconds);
                    println!(
                        "ALERT {:.2}s–{:.2}s: {} ({} frames of evidence)",
                        span(&a.since),
                        span(&a.until),
                        a.answer.trim(),
                        a.evidence.len()
                    );
                }
                Some(pb::watch_event::Event::Evaluation(e)) => println!(
                    "evaluated at {}: {:?} positive={} alerted={}",
                    e.evaluated_unix_ms,
                    e.answer.trim(),
                    e.positive,
                    e.alerted
                ),
                None => {}
            }
        }
        Ok(())
    })
}

pub fn streams(command: &StreamsCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            StreamsCommand::List(a) => {
                let mut client = connect(&a.connect).await?;
                let list = client
                    .list_streams(request(pb::ListStreamsRequest {}, &a.connect))
                    .await?
                    .into_inner();
                for s in list.streams {
                    print_stream(&s);
                }
            }
            StreamsCommand::Add(a) => {
                if a.id.is_empty() || a.uri.is_empty() {
                    bail!("--id and --uri are required");
                }
                let mut client = connect(&a.connect).await?;
                let spec = pb::StreamSpec {
                    id: a.id.clone(),
                    uri: a.uri.clone(),
                    sample_fps: a.sample_fps,
                    retention: Some(pb::Retention {
                        max_disk_bytes: a.max_disk_mib << 20,
                        max_age_seconds: a.max_age_seconds,
                    }),
                    options: Some(pb::StreamOptions {
                        quant: a.quant.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let s = client
                    .create_stream(request(
                        pb::CreateStreamRequest { stream: Some(spec) },
                        &a.connect,
                    ))
                    .await?
                    .into_inner();
                print_stream(&s);
            }
            StreamsCommand::Rm(a) => {
                let mut client = connect(&a.connect).await?;
                client
                    .delete_stream(request(
                        pb::DeleteStreamRequest {
                            id: a.id.clone(),
                            purge: a.purge,
                        },
                        &a.connect,
                    ))
                    .await?;
                println!("deleted {}", a.id);
            }
        }
        Ok(())
    })
}

fn print_stream(s: &pb::Stream) {
    let spec = s.spec.clone().unwrap_or_default();
    let st = s.status.clone().unwrap_or_default();
    let origin = pb::StreamOrigin::try_from(s.origin).map_or("?".into(), |o| {
        o.as_str_name()
            .trim_start_matches("STREAM_ORIGIN_")
            .to_lowercase()
    });
    println!(
        "{:<16} {:<8} {:<13} {:>8} frames {:>6} dropped {:>7} blocks ({} in RAM) {:>8} KiB disk  {}{}",
        spec.id,
        origin,
        st.state,
        st.frames_encoded,
        st.frames_dropped,
        st.blocks,
        st.blocks_in_ram,
        st.disk_bytes >> 10,
        spec.uri,
        if st.last_error.is_empty() {
            String::new()
        } else {
            format!("  last error: {}", st.last_error)
        }
    );
}
