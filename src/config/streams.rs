//! Stream entries: what the config file's `[[streams]]` and the API's CreateStream
//! both say about a stream, how an entry becomes an engine [`StreamSpec`], and the
//! file in the state directory that keeps API-created streams across restarts
//! (`streams.json`, replaced atomically: written to a temporary file, synced, renamed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{validate_stream_id, FrameInput, StreamSpec};
use crate::error::ConfigError;
use crate::ingest::{Credentials, RtspTransport, Source, StreamConfig};
use crate::kv::Quant;

use super::{Config, IngestSection, StoreSection};

/// Highest sampling rate a stream may ask for.
pub const MAX_SAMPLE_FPS: f64 = 30.0;
/// Longest source URI, in bytes.
pub const MAX_URI_BYTES: usize = 2048;
/// Largest disk tier of one stream: 1 PiB, in MiB (byte counts stay far from u64's end).
pub const MAX_DISK_MIB: u64 = 1 << 30;
/// Largest RAM tier of one stream: 1 TiB, in MiB.
pub const MAX_RAM_BUDGET_MIB: f64 = (1u64 << 20) as f64;
/// Longest retention by age: 100 years, in seconds.
pub const MAX_AGE_SECONDS: u64 = 3_155_760_000;

/// Name of the API-created stream list in the state directory.
pub const API_STREAMS_FILE: &str = "streams.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransportName {
    #[default]
    Tcp,
    Udp,
}

/// One stream. Unset fields take the `[ingest]` and `[store]` defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamEntry {
    pub id: String,
    /// rtsp://, file:// or a path, v4l2://, test://.
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_fps: Option<f64>,
    /// Frame size given to the model; the model's input size if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default)]
    pub rtsp_transport: RtspTransportName,
    /// A file holding `user:password` for the camera (kept out of the config text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<Quant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_budget_mib: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_max_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
}

impl StreamEntry {
    /// A stream of `uri` with every default.
    pub fn new(id: impl Into<String>, uri: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            uri: uri.into(),
            sample_fps: None,
            width: None,
            height: None,
            rtsp_transport: RtspTransportName::Tcp,
            credentials_file: None,
            quant: None,
            ram_budget_mib: None,
            disk_max_mib: None,
            max_age_seconds: None,
        }
    }

    /// Checks the entry alone; an error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        validate_stream_id(&self.id).map_err(|e| ("id", e.to_string()))?;
        if self.uri.len() > MAX_URI_BYTES {
            return Err((
                "uri",
                format!("{} bytes, at most {MAX_URI_BYTES}", self.uri.len()),
            ));
        }
        // A URI goes into logs and status: no line breaks or other control characters.
        if self.uri.chars().any(char::is_control) {
            return Err(("uri", "holds control characters".into()));
        }
        let source = self.source(None).map_err(|e| ("uri", e))?;
        crate::ingest::check_source(&source).map_err(|e| ("uri", e.to_string()))?;
        if let Some(fps) = self.sample_fps {
            if !(fps > 0.0 && fps <= MAX_SAMPLE_FPS) {
                return Err(("sample_fps", format!("must be in (0, {MAX_SAMPLE_FPS}]")));
            }
        }
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = v {
                if !(16..=4096).contains(&v) {
                    return Err((field, "must be in 16..=4096".into()));
                }
            }
        }
        if self.width.is_some() != self.height.is_some() {
            return Err(("width", "width and height go together".into()));
        }
        if let Some(v) = self.ram_budget_mib {
            super::check_ram_budget_mib(v).map_err(|m| ("ram_budget_mib", m))?;
        }
        for (field, v, max) in [
            ("disk_max_mib", self.disk_max_mib, MAX_DISK_MIB),
            ("max_age_seconds", self.max_age_seconds, MAX_AGE_SECONDS),
        ] {
            if let Some(v) = v {
                if !(1..=max).contains(&v) {
                    return Err((field, format!("must be in 1..={max}")));
                }
            }
        }
        Ok(())
    }

    fn source(&self, credentials: Option<Credentials>) -> Result<Source, String> {
        let transport = match self.rtsp_transport {
            RtspTransportName::Tcp => RtspTransport::Tcp,
            RtspTransportName::Udp => RtspTransport::Udp,
        };
        Source::parse(&self.uri, transport, credentials).map_err(|e| e.to_string())
    }

    /// The URI with any password replaced by `***` (for listings and logs).
    pub fn redacted_uri(&self) -> String {
        redact_uri(&self.uri)
    }

    /// The engine's spec for this entry, with `config`'s defaults and the model's frame
    /// size `(height, width)` when the entry names none.
    pub fn to_spec(
        &self,
        config: &Config,
        model_size: (u32, u32),
    ) -> Result<StreamSpec, ConfigError> {
        let key = |field: &str| format!("streams.{}.{field}", self.id);
        let credentials = match &self.credentials_file {
            None => None,
            Some(path) => Some(
                read_credentials(path).map_err(|m| super::invalid(key("credentials_file"), m))?,
            ),
        };
        let source = self
            .source(credentials)
            .map_err(|m| super::invalid(key("uri"), m))?;
        Ok(StreamSpec {
            id: self.id.clone(),
            input: FrameInput::Ingest(self.ingest_config(source, &config.ingest, model_size)),
            store: Some(self.store_config(&config.store)),
        })
    }

    fn ingest_config(
        &self,
        source: Source,
        d: &IngestSection,
        (model_h, model_w): (u32, u32),
    ) -> StreamConfig {
        let mut ingest = StreamConfig::new(self.id.clone(), source);
        ingest.sample_fps = self.sample_fps.unwrap_or(d.sample_fps);
        ingest.width = self.width.unwrap_or(model_w);
        ingest.height = self.height.unwrap_or(model_h);
        ingest.queue_capacity = d.queue_capacity;
        ingest.stall_timeout = Duration::from_secs(d.stall_timeout_seconds.max(1));
        ingest
    }

    fn store_config(&self, d: &StoreSection) -> crate::kv::StoreConfig {
        let mut section = d.clone();
        if let Some(q) = self.quant {
            section.quant = q;
        }
        if let Some(v) = self.ram_budget_mib {
            section.ram_budget_mib = v;
        }
        if let Some(v) = self.disk_max_mib {
            section.disk_max_mib = v;
        }
        if let Some(v) = self.max_age_seconds {
            section.max_age_seconds = Some(v);
        }
        section.store_config()
    }
}

/// `user:password` from a file (trailing newline ignored).
fn read_credentials(path: &Path) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim();
    let (user, password) = line
        .split_once(':')
        .ok_or_else(|| format!("{}: expected `user:password`", path.display()))?;
    Ok(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                uri.to_owned()
            }
        }
        None => uri.to_owned(),
    }
}

/// The API-created streams of a state directory (empty when there is no file yet).
pub fn load_api_streams(state_dir: &Path) -> Result<Vec<StreamEntry>, ConfigError> {
    let path = state_dir.join(API_STREAMS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Io { path, source }),
    };
    serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
        path,
        message: e.to_string(),
    })
}

/// Replaces the API-created stream list atomically (a crash leaves the old or the new
/// list, never a torn one).
pub fn save_api_streams(state_dir: &Path, entries: &[StreamEntry]) -> Result<(), ConfigError> {
    let path = state_dir.join(API_STREAMS_FILE);
    let io = |source| ConfigError::Io {
        path: path.clone(),
        source,
    };
    let json = serde_json::to_vec_pretty(entries).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut tmp = tempfile::NamedTempFile::new_in(state_dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, &json).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    if let Ok(dir) = std::fs::File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_uri("rtsp://admin:hunter2@cam.local:554/live"),
            "rtsp://admin:***@cam.local:554/live"
        );
        assert_eq!(redact_uri("rtsp://cam/live"), "rtsp://cam/live");
        assert_eq!(redact_uri("rtsp://user@cam/x"), "rtsp://user@cam/x");
        assert_eq!(redact_uri("/videos/a.mp4"), "/videos/a.mp4");
    }

    #[test]
    fn entries_validate_each_field() {
        let ok = StreamEntry::new("door", "test://ball");
        ok.validate().unwrap();
        let mut e = ok.clone();
        e.sample_fps = Some(0.0);
        assert_eq!(e.validate().unwrap_err().0, "sample_fps");
        let mut e = ok.clone();
        e.width = Some(64);
        assert_eq!(e.validate().unwrap_err().0, "width");
        let mut e = ok.clone();
        e.uri = "ftp://x/y".into();
        assert_eq!(e.validate().unwrap_err().0, "uri");
        let mut e = ok.clone();
        e.id = "a/b".into();
        assert_eq!(e.validate().unwrap_err().0, "id");
        for uri in [
            "test://nosuchpattern".to_owned(),
            format!("/videos/{}", "x".repeat(MAX_URI_BYTES)),
            "/videos/a.mp4\nINFO forged log line".to_owned(),
        ] {
            let mut e = ok.clone();
            e.uri = uri;
            assert_eq!(e.validate().unwrap_err().0, "uri", "{}", e.uri);
        }
        let mut e = ok;
        e.disk_max_mib = Some(MAX_DISK_MIB + 1);
        assert_eq!(e.validate().unwrap_err().0, "disk_max_mib");
    }

    #[test]
    fn api_streams_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_api_streams(dir.path()).unwrap().is_empty());
        let mut a = StreamEntry::new("a", "test://ball");
        a.sample_fps = Some(2.0);
        a.quant = Some(Quant::Int4);
        let b = StreamEntry::new("b", "/videos/b.mp4");
        save_api_streams(dir.path(), &[a.clone(), b.clone()]).unwrap();
        assert_eq!(load_api_streams(dir.path()).unwrap(), vec![a, b.clone()]);
        save_api_streams(dir.path(), std::slice::from_ref(&b)).unwrap();
        assert_eq!(load_api_streams(dir.path()).unwrap(), vec![b]);
    }
}
