//! Typed errors, one enum per layer, each with a stable `error_type()` label that
//! metrics and logs use (text-generation-inference's habit). `anyhow` appears only in
//! `main.rs`.

use std::path::PathBuf;

/// At most this many bytes of a client's or a source's text go into an error message
/// or a log line (the rest is summarised by its length).
pub const EXCERPT_BYTES: usize = 64;

/// `text` fit for an error message or a log line however long or odd it is: at most
/// [`EXCERPT_BYTES`] bytes (cut at a character boundary, then `…(N bytes)`), control
/// characters replaced by `�`. Never echo unbounded input otherwise.
pub fn excerpt(text: &str) -> String {
    let mut end = text.len().min(EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end]
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if end < text.len() {
        out.push_str(&format!("…({} bytes)", text.len()));
    }
    out
}

/// The message a caught panic carried (its `&str` or `String` payload), or "panic".
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("panic")
}

/// Errors of the model runtime (`crate::model`): loading a checkpoint and running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("checkpoint {dir} has no {what}")]
    MissingFile { dir: PathBuf, what: &'static str },
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("reading safetensors {path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("checkpoint holds {count} tensor(s) the model does not use, first `{first}`")]
    UnknownTensors { count: usize, first: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A question or prompt the model cannot take (the asker's fault, not the model's).
    #[error("{0}")]
    BadPrompt(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    /// Stable label for metrics and structured logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            ModelError::Io { .. } => "io",
            ModelError::Json { .. } => "json",
            ModelError::MissingFile { .. } => "missing_file",
            ModelError::Unsupported(_) => "unsupported",
            ModelError::InvalidConfig(_) => "invalid_config",
            ModelError::Safetensors { .. } => "safetensors",
            ModelError::MissingTensor(_) => "missing_tensor",
            ModelError::ShapeMismatch { .. } => "shape_mismatch",
            ModelError::UnsupportedDtype { .. } => "unsupported_dtype",
            ModelError::UnknownTensors { .. } => "unknown_tensors",
            ModelError::Tokenizer(_) => "tokenizer",
            ModelError::Template(_) => "template",
            ModelError::Image { .. } => "image",
            ModelError::InvalidInput(_) => "invalid_input",
            ModelError::BadPrompt(_) => "bad_prompt",
            ModelError::Torch(_) => "torch",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type ModelResult<T> = Result<T, ModelError>;

/// Errors of ingest (`crate::ingest`): parsing a source, building and running its
/// GStreamer pipeline. Bus errors are mapped onto these by GStreamer error domain.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error("unknown URI scheme `{0}` (rtsp, file, v4l2, test)")]
    UnknownScheme(String),
    #[error("invalid URI: {0}")]
    InvalidUri(String),
    #[error("invalid stream config: {0}")]
    InvalidConfig(String),
    #[error("file not found: {0}")]
    NotFound(PathBuf),
    #[error("source unreachable: {0}")]
    Unreachable(String),
    #[error("not authorized by the source: {0}")]
    Unauthorized(String),
    #[error("cannot decode the stream: {0}")]
    Decode(String),
    #[error("no frame for {0:?}")]
    Stalled(std::time::Duration),
    #[error("GStreamer: {0}")]
    Pipeline(String),
}

impl IngestError {
    /// Stable label for metrics and structured logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            IngestError::UnknownScheme(_) => "unknown_scheme",
            IngestError::InvalidUri(_) => "invalid_uri",
            IngestError::InvalidConfig(_) => "invalid_config",
            IngestError::NotFound(_) => "not_found",
            IngestError::Unreachable(_) => "unreachable",
            IngestError::Unauthorized(_) => "unauthorized",
            IngestError::Decode(_) => "decode",
            IngestError::Stalled(_) => "stalled",
            IngestError::Pipeline(_) => "pipeline",
        }
    }
}

/// Errors of the KV store (`crate::kv`): compression, the RAM tier and the disk tier.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("tensor holds NaN or infinite values ({0})")]
    NonFinite(&'static str),
    #[error("invalid block: {0}")]
    InvalidBlock(String),
    #[error("disk full writing {path}")]
    DiskFull { path: PathBuf },
    #[error("permission denied on {path}")]
    PermissionDenied { path: PathBuf },
    #[error("corrupt record in {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{path}: format version {found}, this build reads {supported}")]
    VersionMismatch {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("block {0} not found")]
    NotFound(u64),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl KvError {
    /// Stable label for metrics and structured logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            KvError::NonFinite(_) => "non_finite",
            KvError::InvalidBlock(_) => "invalid_block",
            KvError::DiskFull { .. } => "disk_full",
            KvError::PermissionDenied { .. } => "permission_denied",
            KvError::Corrupt { .. } => "corrupt",
            KvError::VersionMismatch { .. } => "version_mismatch",
            KvError::Io { .. } => "io",
            KvError::NotFound(_) => "not_found",
            KvError::Torch(_) => "torch",
        }
    }

    /// Maps an I/O error on `path` to the typed kinds (disk full, permission denied).
    pub fn from_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        // ENOSPC (28), EDQUOT (122) and EFBIG (27, a file-size limit) all mean "no room".
        match source.raw_os_error() {
            Some(28) | Some(122) | Some(27) => return KvError::DiskFull { path },
            _ => {}
        }
        match source.kind() {
            std::io::ErrorKind::PermissionDenied => KvError::PermissionDenied { path },
            std::io::ErrorKind::StorageFull => KvError::DiskFull { path },
            _ => KvError::Io { path, source },
        }
    }
}

/// Errors of the engine (`crate::engine`): streams, encoding and answering.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    #[error("stream `{0}` already exists")]
    StreamExists(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("stream `{0}` has nothing encoded in the asked time range")]
    NoContent(String),
    #[error("cancelled")]
    Cancelled,
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A broken invariant or a caught panic: the daemon's fault, not the request's.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl EngineError {
    /// Stable label for metrics and structured logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            EngineError::UnknownStream(_) => "unknown_stream",
            EngineError::StreamExists(_) => "stream_exists",
            EngineError::InvalidRequest(_) => "invalid_request",
            EngineError::NoContent(_) => "no_content",
            EngineError::Cancelled => "cancelled",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::Internal(_) => "internal",
            EngineError::Model(e) => e.error_type(),
            EngineError::Kv(e) => e.error_type(),
            EngineError::Ingest(e) => e.error_type(),
            EngineError::Torch(_) => "torch",
        }
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// Errors of the synthetic world and its training program (`crate::synth`).
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid training setup: {0}")]
    InvalidInput(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("image: {0}")]
    Image(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl SynthError {
    /// Stable label for metrics and structured logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            SynthError::Io { .. } => "io",
            SynthError::InvalidInput(_) => "invalid_input",
            SynthError::Tokenizer(_) => "tokenizer",
            SynthError::Image(_) => "image",
            SynthError::Model(e) => e.error_type(),
            SynthError::Torch(_) => "torch",
            SynthError::Json(_) => "json",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SynthError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type SynthResult<T> = Result<T, SynthError>;

/// Errors of the configuration (`crate::config`): reading, parsing, validating. The
/// message starts with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// Errors of the server (`crate::serve`) outside a request: starting, binding, TLS.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("auth tokens {path}: {message}")]
    Tokens {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("metrics exporter: {0}")]
    Metrics(String),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_printable() {
        assert_eq!(excerpt("cam-1"), "cam-1");
        let long = "é".repeat(100_000);
        let e = excerpt(&long);
        assert!(e.len() <= EXCERPT_BYTES + 32, "{}", e.len());
        assert!(e.ends_with("…(200000 bytes)"), "{e}");
        assert_eq!(excerpt("a\nb\u{0}"), "a\u{FFFD}b\u{FFFD}");
    }
}
