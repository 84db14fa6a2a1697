//! The daemon's configuration: one TOML file, deserialised with serde into the structs
//! below (every table rejects unknown keys), then overridden from a few environment
//! variables and validated with errors that name the key (`server.listen: ...`).
//!
//! Streams come from the file (`[[streams]]`) and from the API; both are
//! [`StreamEntry`]s, which [`streams`] turns into engine specs and persists.
//! `configs/vstreamd.toml` is the documented example; `vstreamd check-config` runs
//! [`Config::load`] and [`Config::check_files`] without starting anything.
//!
//! Environment overrides (for containers and tests): `VSTREAMD_STATE_DIR`,
//! `VSTREAMD_LISTEN`, `VSTREAMD_METRICS_LISTEN`, `VSTREAMD_MODEL`.

pub mod streams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use streams::{RtspTransportName, StreamEntry};

use crate::engine::config::MAX_QUESTION_BYTES;
use crate::engine::EngineConfig;
use crate::error::ConfigError;
use crate::kv::disk::{DiskConfig, SyncPolicy};
use crate::kv::{Quant, StoreConfig};
use crate::retrieval::LayerSelection;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the KV stores and the API-created stream list live (systemd's
    /// `StateDirectory=`).
    pub state_dir: PathBuf,
    pub model: ModelSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub ingest: IngestSection,
    #[serde(default)]
    pub streams: Vec<StreamEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).
    pub path: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32`, `bf16` or `f16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// gRPC address (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// Bearer tokens, one per line (`name:token` or `token`; `#` comments). Without
    /// it every client is anonymous, which is allowed on loopback only unless
    /// `allow_unauthenticated_remote` says otherwise.
    pub auth_tokens_file: Option<PathBuf>,
    pub allow_unauthenticated_remote: bool,
    pub tls: Option<TlsSection>,
    /// Longest question, in bytes (≤ 4096).
    pub max_question_bytes: usize,
    /// Asks and summaries in flight over all clients; beyond: RESOURCE_EXHAUSTED.
    pub max_concurrent_asks: usize,
    /// The same per client (token name, or peer address without auth).
    pub max_concurrent_asks_per_client: usize,
    /// Standing questions (Watch) open at once.
    pub max_watches: usize,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// A request's deadline is capped at this; a request without one gets it.
    pub max_request_seconds: f64,
    /// On SIGTERM, open asks get this long to finish before they are cancelled.
    pub shutdown_grace_seconds: f64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            auth_tokens_file: None,
            allow_unauthenticated_remote: false,
            tls: None,
            max_question_bytes: MAX_QUESTION_BYTES,
            max_concurrent_asks: 8,
            max_concurrent_asks_per_client: 4,
            max_watches: 16,
            max_message_bytes: 1 << 20,
            max_request_seconds: 300.0,
            shutdown_grace_seconds: 5.0,
        }
    }
}

impl ServerSection {
    pub fn max_request(&self) -> Duration {
        Duration::from_secs_f64(self.max_request_seconds)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_seconds)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    /// Prometheus scrape address (`/metrics`); port 0 picks a free one.
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub window_frames: usize,
    pub batch_frames: usize,
    pub top_k: usize,
    /// The most frames a question may ask for (`top_k`, a summary's `frames`).
    pub max_top_k: usize,
    /// Unset: ReKV per-layer retrieval; N: every layer takes layer N's top-k.
    pub shared_retrieval_layer: Option<usize>,
    /// Frames of the recent window a question attends to when it does not say
    /// (≤ `window_frames`); unset: the whole window.
    pub recent_frames: Option<usize>,
    pub max_new_tokens: usize,
    pub max_new_tokens_limit: usize,
    pub retention_interval_seconds: u64,
    /// The engine thread's time given to answering while frames wait, in (0, 1).
    pub answer_share: f64,
    /// Most answers fed back in one (batched) decode step.
    pub decode_batch: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::new("", StoreSection::default().store_config());
        Self {
            window_frames: d.window_frames,
            batch_frames: d.batch_frames,
            top_k: d.top_k,
            max_top_k: d.max_top_k,
            shared_retrieval_layer: None,
            recent_frames: d.recent_frames,
            max_new_tokens: d.max_new_tokens,
            max_new_tokens_limit: d.max_new_tokens_limit,
            retention_interval_seconds: d.retention_interval.as_secs(),
            answer_share: d.answer_share,
            decode_batch: d.decode_batch,
        }
    }
}

/// Defaults of every stream's KV store (a stream may override quant, RAM budget and
/// retention).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub quant: Quant,
    /// RAM tier per stream, in MiB; fractions allowed, at least [`MIN_RAM_BUDGET_MIB`].
    pub ram_budget_mib: f64,
    pub rep_key_budget_mib: u64,
    /// Drop a frame whose keys are this similar (cosine) to the previous one's.
    pub dedup_threshold: Option<f32>,
    /// False keeps blocks in RAM only (nothing survives a restart).
    pub disk: bool,
    pub disk_max_mib: u64,
    /// Frames older than this are deleted (unset: kept until the size budget).
    pub max_age_seconds: Option<u64>,
    pub segment_mib: u64,
    /// Longest time a stored block may wait to be made durable.
    pub sync_interval_ms: u64,
}

/// The smallest RAM tier a stream may have: 16 KiB (a few blocks of a tiny model).
pub const MIN_RAM_BUDGET_MIB: f64 = 1.0 / 64.0;

/// Checks a RAM tier size in MiB (store default or a stream's own).
pub fn check_ram_budget_mib(mib: f64) -> Result<(), String> {
    if mib.is_finite() && (MIN_RAM_BUDGET_MIB..=streams::MAX_RAM_BUDGET_MIB).contains(&mib) {
        Ok(())
    } else {
        Err(format!(
            "must be in [{MIN_RAM_BUDGET_MIB}, {}] (16 KiB to 1 TiB)",
            streams::MAX_RAM_BUDGET_MIB
        ))
    }
}

/// MiB (fractions allowed) to bytes.
pub fn mib_to_bytes(mib: f64) -> u64 {
    (mib * (1u64 << 20) as f64).round() as u64
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            quant: Quant::Int8,
            ram_budget_mib: 256.0,
            rep_key_budget_mib: 64,
            dedup_threshold: None,
            disk: true,
            disk_max_mib: 16 << 10,
            max_age_seconds: None,
            segment_mib: 64,
            sync_interval_ms: 1000,
        }
    }
}

impl StoreSection {
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            quant: self.quant,
            ram_budget_bytes: mib_to_bytes(self.ram_budget_mib) as usize,
            rep_key_budget_bytes: (self.rep_key_budget_mib << 20) as usize,
            dedup_threshold: self.dedup_threshold,
            disk: self.disk.then(|| DiskConfig {
                segment_bytes: self.segment_mib << 20,
                max_bytes: self.disk_max_mib << 20,
                max_age: self.max_age_seconds.map(Duration::from_secs),
                sync: if self.sync_interval_ms == 0 {
                    SyncPolicy::EveryRecord
                } else {
                    SyncPolicy::Interval(Duration::from_millis(self.sync_interval_ms))
                },
            }),
        }
    }
}

/// Defaults of every stream's ingest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    pub sample_fps: f64,
    pub queue_capacity: usize,
    pub stall_timeout_seconds: u64,
}

impl Default for IngestSection {
    fn default() -> Self {
        Self {
            sample_fps: 1.0,
            queue_capacity: 64,
            stall_timeout_seconds: 10,
        }
    }
}

/// A validation failure at `key`.
pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

pub(crate) fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("`{text}` is not an address like 127.0.0.1:50051"),
        )
    })
}

impl Config {
    /// Reads, overrides from the environment and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        config.apply_env(|name| std::env::var(name).ok());
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment, no validation).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })
    }

    /// Applies the `VSTREAMD_*` overrides `env` knows.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(v) = env("VSTREAMD_STATE_DIR") {
            self.state_dir = v.into();
        }
        if let Some(v) = env("VSTREAMD_LISTEN") {
            self.server.listen = v;
        }
        if let Some(v) = env("VSTREAMD_METRICS_LISTEN") {
            self.metrics.listen = v;
        }
        if let Some(v) = env("VSTREAMD_MODEL") {
            self.model.path = v.into();
        }
    }

    /// Every check that needs no file: values, ranges, addresses, stream entries.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "is empty"));
        }
        if self.model.path.as_os_str().is_empty() {
            return Err(invalid("model.path", "is empty"));
        }
        let precision: crate::model::Precision = self
            .model
            .dtype
            .parse()
            .map_err(|e: crate::error::ModelError| invalid("model.dtype", e.to_string()))?;
        crate::model::ModelOptions::parse(&self.model.device, precision)
            .map_err(|e| invalid("model.device", e.to_string()))?;

        let s = &self.server;
        let listen = parse_addr("server.listen", &s.listen)?;
        if !listen.ip().is_loopback()
            && s.auth_tokens_file.is_none()
            && !s.allow_unauthenticated_remote
        {
            return Err(invalid(
                "server.listen",
                format!(
                    "{listen} is reachable beyond this machine and server.auth_tokens_file \
                     is not set: set it, or server.allow_unauthenticated_remote = true"
                ),
            ));
        }
        if s.max_question_bytes == 0 || s.max_question_bytes > MAX_QUESTION_BYTES {
            return Err(invalid(
                "server.max_question_bytes",
                format!("must be in 1..={MAX_QUESTION_BYTES}"),
            ));
        }
        for (key, value) in [
            ("server.max_concurrent_asks", s.max_concurrent_asks),
            (
                "server.max_concurrent_asks_per_client",
                s.max_concurrent_asks_per_client,
            ),
            ("server.max_watches", s.max_watches),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if s.max_message_bytes < 4096 {
            return Err(invalid("server.max_message_bytes", "must be at least 4096"));
        }
        if !(s.max_request_seconds > 0.0 && s.max_request_seconds <= 604_800.0) {
            return Err(invalid(
                "server.max_request_seconds",
                "must be in (0, 604800] (a week)",
            ));
        }
        if !(0.0..=3600.0).contains(&s.shutdown_grace_seconds) {
            return Err(invalid(
                "server.shutdown_grace_seconds",
                "must be in [0, 3600]",
            ));
        }
        if self.metrics.enabled {
            parse_addr("metrics.listen", &self.metrics.listen)?;
        }

        self.engine_config()
            .validate()
            .map_err(|e| invalid("engine", e.to_string()))?;
        let st = &self.store;
        check_ram_budget_mib(st.ram_budget_mib).map_err(|m| invalid("store.ram_budget_mib", m))?;
        if !(1..=streams::MAX_DISK_MIB).contains(&st.rep_key_budget_mib) {
            return Err(invalid(
                "store.rep_key_budget_mib",
                format!("must be in 1..={}", streams::MAX_DISK_MIB),
            ));
        }
        for (key, value) in [
            ("store.disk_max_mib", st.disk_max_mib),
            ("store.segment_mib", st.segment_mib),
        ] {
            if st.disk && !(1..=streams::MAX_DISK_MIB).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be in 1..={}", streams::MAX_DISK_MIB),
                ));
            }
        }
        if let Some(age) = st.max_age_seconds {
            if !(1..=streams::MAX_AGE_SECONDS).contains(&age) {
                return Err(invalid(
                    "store.max_age_seconds",
                    format!("must be in 1..={}", streams::MAX_AGE_SECONDS),
                ));
            }
        }
        if let Some(t) = st.dedup_threshold {
            if !(t > 0.0 && t <= 1.0) {
                return Err(invalid("store.dedup_threshold", "must be in (0, 1]"));
            }
        }
        let ing = &self.ingest;
        if !(ing.sample_fps > 0.0 && ing.sample_fps <= streams::MAX_SAMPLE_FPS) {
            return Err(invalid(
                "ingest.sample_fps",
                format!("must be in (0, {}]", streams::MAX_SAMPLE_FPS),
            ));
        }
        if ing.queue_capacity == 0 {
            return Err(invalid("ingest.queue_capacity", "must be at least 1"));
        }

        let mut seen = std::collections::HashSet::new();
        for (i, entry) in self.streams.iter().enumerate() {
            let key = format!("streams[{i}]");
            entry
                .validate()
                .map_err(|(field, m)| invalid(format!("{key}.{field}"), m))?;
            if !seen.insert(entry.id.as_str()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("`{}` appears twice", entry.id),
                ));
            }
        }
        Ok(())
    }

    /// Checks the files the config names: the model's config.json, the token file, TLS
    /// files, stream credential files; the state directory must be creatable.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let must_read = |key: &str, path: &Path| -> Result<(), ConfigError> {
            std::fs::File::open(path)
                .map(drop)
                .map_err(|e| invalid(key, format!("{}: {e}", path.display())))
        };
        must_read("model.path", &self.model.path.join("config.json"))?;
        if let Some(p) = &self.server.auth_tokens_file {
            // Readable here; its contents are the server's to parse (`check-config`
            // and the daemon's start do).
            must_read("server.auth_tokens_file", p)?;
        }
        if let Some(tls) = &self.server.tls {
            must_read("server.tls.cert", &tls.cert)?;
            must_read("server.tls.key", &tls.key)?;
        }
        for (i, entry) in self.streams.iter().enumerate() {
            if let Some(p) = &entry.credentials_file {
                must_read(&format!("streams[{i}].credentials_file"), p)?;
            }
        }
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| invalid("state_dir", format!("{}: {e}", self.state_dir.display())))?;
        Ok(())
    }

    pub fn engine_config(&self) -> EngineConfig {
        let e = &self.engine;
        let mut config = EngineConfig::new(&self.state_dir, self.store.store_config());
        config.window_frames = e.window_frames;
        config.batch_frames = e.batch_frames;
        config.top_k = e.top_k;
        config.max_top_k = e.max_top_k;
        config.answer_share = e.answer_share;
        config.decode_batch = e.decode_batch;
        config.layer_selection = e
            .shared_retrieval_layer
            .map_or(LayerSelection::PerLayer, LayerSelection::Shared);
        config.recent_frames = e.recent_frames;
        config.max_new_tokens = e.max_new_tokens;
        config.max_new_tokens_limit = e.max_new_tokens_limit;
        config.retention_interval = Duration::from_secs(e.retention_interval_seconds.max(1));
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
state_dir = "/tmp/vstreamd-test"
[model]
path = "/models/tiny"
"#;

    #[test]
    fn minimal_file_takes_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:50051");
        assert_eq!(c.engine, EngineSection::default());
        assert!(c.streams.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let text = format!("{MINIMAL}\n[server]\nlisten = \"127.0.0.1:1\"\nmax_askz = 3\n");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("max_askz"), "{err}");
        let err = Config::parse(&format!("colour = 1\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("[server]\nlisten = \"nowhere\"", "server.listen"),
            ("[server]\nlisten = \"0.0.0.0:5\"", "server.listen"),
            ("[server]\nmax_concurrent_asks = 0", "server.max_concurrent_asks"),
            ("[server]\nmax_question_bytes = 99999", "server.max_question_bytes"),
            ("[engine]\nwindow_frames = 0", "engine"),
            ("[engine]\nrecent_frames = 9", "engine"),
            ("[ingest]\nsample_fps = 0.0", "ingest.sample_fps"),
            ("[store]\ndedup_threshold = 1.5", "store.dedup_threshold"),
            (
                "[[streams]]\nid = \".hidden\"\nuri = \"test://ball\"",
                "streams[0].id",
            ),
            (
                "[[streams]]\nid = \"a\"\nuri = \"gopher://x\"",
                "streams[0].uri",
            ),
            (
                "[[streams]]\nid = \"a\"\nuri = \"test://ball\"\n[[streams]]\nid = \"a\"\nuri = \"test://snow\"",
                "streams[1].id",
            ),
        ];
        for (extra, key) in cases {
            let c = Config::parse(&format!("{MINIMAL}\n{extra}\n")).unwrap();
            let err = c.validate().unwrap_err();
            match &err {
                ConfigError::Invalid { key: k, .. } => assert_eq!(k, key, "{extra}: {err}"),
                other => panic!("{extra}: {other}"),
            }
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }

    #[test]
    fn engine_and_store_keys_reach_the_engine_config() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.engine_config().layer_selection, LayerSelection::PerLayer);
        let text = format!(
            "{MINIMAL}\n[engine]\nshared_retrieval_layer = 2\n[store]\nram_budget_mib = 0.015625\n"
        );
        let c = Config::parse(&text).unwrap();
        c.validate().unwrap();
        let e = c.engine_config();
        assert_eq!(e.layer_selection, LayerSelection::Shared(2));
        assert_eq!(e.store.ram_budget_bytes, 16 << 10);
        let small = format!("{MINIMAL}\n[store]\nram_budget_mib = 0.01\n");
        let err = Config::parse(&small).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("store.ram_budget_mib"), "{err}");
    }

    #[test]
    fn remote_listen_is_allowed_with_auth_or_when_told() {
        let base = format!("{MINIMAL}\n[server]\nlisten = \"0.0.0.0:5\"\n");
        let c = Config::parse(&format!("{base}auth_tokens_file = \"/etc/t\"\n")).unwrap();
        c.validate().unwrap();
        let c = Config::parse(&format!("{base}allow_unauthenticated_remote = true\n")).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn environment_overrides() {
        let mut c = Config::parse(MINIMAL).unwrap();
        c.apply_env(|name| match name {
            "VSTREAMD_LISTEN" => Some("127.0.0.1:0".into()),
            "VSTREAMD_STATE_DIR" => Some("/srv/v".into()),
            _ => None,
        });
        assert_eq!(c.server.listen, "127.0.0.1:0");
        assert_eq!(c.state_dir, PathBuf::from("/srv/v"));
        assert_eq!(c.model.path, PathBuf::from("/models/tiny"));
    }
}
