//! `vstreamd` binary: telemetry setup, then the library's command line. Logs go to
//! stderr, coloured only on a terminal (journald and files get plain text).

use std::io::IsTerminal;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    vstreamd::cli::run()
}
