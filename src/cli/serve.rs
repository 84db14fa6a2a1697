//! `vstreamd serve` and `vstreamd check-config`: the daemon's entry points.
//!
//! `serve` loads and checks the config, binds the gRPC and metrics listeners (port 0
//! allowed), turns SIGTERM/SIGINT into a clean stop and SIGHUP into a stream-list
//! reload, and runs [`crate::serve::run`]. With `--ready-file`, the bound addresses are
//! written there as JSON once the daemon serves (how tests and scripts find port 0).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::serve::{self, Bound, Control, MetricsEndpoint};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The TOML configuration (see configs/vstreamd.toml).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Write `{"grpc": ADDR, "metrics": ADDR, "pid": N}` here once serving.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CheckConfigArgs {
    #[arg(long, short)]
    pub config: PathBuf,
}

/// Validates a config and the files it names; prints a one-line summary.
pub fn check_config(args: &CheckConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    config.check_files()?;
    if let Some(path) = &config.server.auth_tokens_file {
        crate::serve::auth::Tokens::load(path)
            .map_err(|e| anyhow::anyhow!("server.auth_tokens_file: {e}"))?;
    }
    println!(
        "{}: OK ({} stream(s), gRPC on {}, metrics {}, auth {})",
        args.config.display(),
        config.streams.len(),
        config.server.listen,
        if config.metrics.enabled {
            config.metrics.listen.as_str()
        } else {
            "off"
        },
        if config.server.auth_tokens_file.is_some() {
            "on"
        } else {
            "off"
        },
    );
    Ok(())
}

fn write_ready_file(path: &Path, bound: Bound) -> std::io::Result<()> {
    let json = serde_json::json!({
        "grpc": bound.grpc.to_string(),
        "metrics": bound.metrics.map(|a| a.to_string()),
        "pid": std::process::id(),
    });
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, json.to_string().as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    config.check_files()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("serve")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let grpc = TcpListener::bind(&config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let metrics = if config.metrics.enabled {
            let listener = TcpListener::bind(&config.metrics.listen)
                .await
                .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
            let handle = crate::metrics::install_prometheus()
                .context("installing the Prometheus recorder")?;
            Some(MetricsEndpoint { listener, handle })
        } else {
            None
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                let control = tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM"); Control::Shutdown }
                    _ = int.recv() => { tracing::info!("SIGINT"); Control::Shutdown }
                    _ = hup.recv() => { tracing::info!("SIGHUP"); Control::Reload }
                };
                if tx.send(control).is_err() {
                    return;
                }
            }
        });
        let ready_file = args.ready_file.clone();
        serve::run(
            config,
            Some(args.config.clone()),
            grpc,
            metrics,
            rx,
            move |bound| {
                if let Some(path) = ready_file {
                    if let Err(e) = write_ready_file(&path, bound) {
                        tracing::error!(path = %path.display(), error = %e, "writing the ready file");
                    }
                }
            },
        )
        .await?;
        Ok(())
    })
}
