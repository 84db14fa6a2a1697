//! What a stream reads from: a URI parsed into a typed [`Source`], with the GStreamer
//! source part of its pipeline. Credentials are kept out of `Display` and logs.
//!
//! Supported: `rtsp://[user:pass@]host[:port]/path` (rtspsrc, TCP or UDP),
//! `file:///abs/path` or a plain path (uridecodebin: any container/codec the installed
//! plugins decode), `v4l2:///dev/videoN` (v4l2src), `test://PATTERN` (videotestsrc,
//! live, for demos; PATTERN is a videotestsrc pattern nick such as `smpte`, `ball`),
//! `synth://SCRIPT?seed=N&speed=X&frames=N` (a scripted synthetic scene of
//! [`crate::synth::script`] rendered into an `appsrc` at the model's size; `speed` 1
//! plays in real time, 4 four times faster, 0 as fast as the consumer takes frames;
//! the stream ends with the script).

use std::fmt;
use std::path::PathBuf;

use crate::error::{excerpt, IngestError};
use crate::synth::script::{Script, ScriptOptions};

/// RTSP lower transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtspTransport {
    #[default]
    Tcp,
    Udp,
}

/// Credentials for a source. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

/// A parsed stream source.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `location` has the credentials removed.
    Rtsp {
        location: String,
        transport: RtspTransport,
        credentials: Option<Credentials>,
    },
    File(PathBuf),
    V4l2(PathBuf),
    Test {
        pattern: String,
    },
    /// A scripted synthetic scene; `script` is one of [`Script::NAMES`].
    Synth {
        script: String,
        seed: u64,
        /// Stream seconds per wall-clock second; 0: unpaced.
        speed: f64,
        /// The rest of the query: a needle stream's length, needles, questions (boxed:
        /// rarely used, and large beside the other sources).
        options: Box<ScriptOptions>,
    },
}

impl Source {
    /// Parses `uri`. Credentials in the URI win over `credentials` from the config.
    pub fn parse(
        uri: &str,
        transport: RtspTransport,
        credentials: Option<Credentials>,
    ) -> Result<Self, IngestError> {
        let uri = uri.trim();
        if uri.is_empty() {
            return Err(IngestError::InvalidUri("empty URI".into()));
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            // A plain path.
            return Ok(Source::File(PathBuf::from(uri)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "rtsp" | "rtsps" => {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (userinfo, host) = match authority.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, authority),
                };
                if host.is_empty() {
                    return Err(IngestError::InvalidUri(format!(
                        "{}:// URI without a host",
                        excerpt(scheme)
                    )));
                }
                let from_uri = userinfo.map(|u| {
                    let (user, password) = u.split_once(':').unwrap_or((u, ""));
                    Credentials {
                        user: user.to_owned(),
                        password: password.to_owned(),
                    }
                });
                Ok(Source::Rtsp {
                    location: format!("{scheme}://{host}/{path}"),
                    transport,
                    credentials: from_uri.or(credentials),
                })
            }
            "file" => {
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(IngestError::InvalidUri(format!(
                        "file URI needs an absolute path: {}",
                        excerpt(uri)
                    )));
                }
                Ok(Source::File(PathBuf::from(path)))
            }
            "v4l2" => {
                let device = if rest.is_empty() { "/dev/video0" } else { rest };
                Ok(Source::V4l2(PathBuf::from(device)))
            }
            "test" => {
                let pattern = if rest.is_empty() { "smpte" } else { rest };
                if !pattern
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(IngestError::InvalidUri(format!(
                        "bad test pattern `{}`",
                        excerpt(pattern)
                    )));
                }
                Ok(Source::Test {
                    pattern: pattern.to_owned(),
                })
            }
            "synth" => parse_synth(rest),
            other => Err(IngestError::UnknownScheme(excerpt(other))),
        }
    }

    /// Live sources reconnect when they fail or end; files and synthetic scripts end.
    pub fn is_live(&self) -> bool {
        !matches!(self, Source::File(_) | Source::Synth { .. })
    }
}

/// Slowest and fastest pacing of a synthetic stream (0: unpaced).
const MIN_SYNTH_SPEED: f64 = 0.001;
const MAX_SYNTH_SPEED: f64 = 1000.0;

/// `SCRIPT?seed=N&speed=X&OPTIONS` of a `synth://` URI (options: [`ScriptOptions`]).
fn parse_synth(rest: &str) -> Result<Source, IngestError> {
    let (script, query) = rest.split_once('?').unwrap_or((rest, ""));
    let script = if script.is_empty() { "demo" } else { script };
    if !Script::NAMES.contains(&script) {
        return Err(IngestError::InvalidUri(format!(
            "unknown synthetic script `{}` (known: {})",
            excerpt(script),
            Script::NAMES.join(", ")
        )));
    }
    let (mut seed, mut speed, mut options) = (1u64, 1.0f64, ScriptOptions::default());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || {
            IngestError::InvalidUri(format!(
                "bad synth:// parameter `{}` (seed=N, speed=0 or 0.001..=1000, \
                 frames=10..=10000000, needles=triangle,star, copies=1..=9, \
                 needle_frames=1..=1000, chained=0|1, questions=colour,after,count,exists|all)",
                excerpt(pair)
            ))
        };
        match key {
            "seed" => seed = value.parse().map_err(|_| bad())?,
            "speed" => {
                speed = value.parse().map_err(|_| bad())?;
                if !(speed == 0.0 || (MIN_SYNTH_SPEED..=MAX_SYNTH_SPEED).contains(&speed)) {
                    return Err(bad());
                }
            }
            _ => match options.set(key, value) {
                Ok(true) => {}
                Ok(false) | Err(_) => return Err(bad()),
            },
        }
    }
    if script == "demo" && options != ScriptOptions::default() {
        return Err(IngestError::InvalidUri(
            "synth://demo takes seed and speed only".into(),
        ));
    }
    Ok(Source::Synth {
        script: script.to_owned(),
        seed,
        speed,
        options: Box::new(options),
    })
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Rtsp { location, .. } => write!(f, "{location}"),
            Source::File(p) => write!(f, "file://{}", p.display()),
            Source::V4l2(p) => write!(f, "v4l2://{}", p.display()),
            Source::Test { pattern } => write!(f, "test://{pattern}"),
            Source::Synth {
                script,
                seed,
                speed,
                options,
            } => write!(f, "synth://{script}?seed={seed}&speed={speed}{options}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        let s = Source::parse(
            "rtsp://bob:s3cret@10.0.0.5:8554/cam/1",
            RtspTransport::Udp,
            None,
        )
        .unwrap();
        match &s {
            Source::Rtsp {
                location,
                transport,
                credentials,
            } => {
                assert_eq!(location, "rtsp://10.0.0.5:8554/cam/1");
                assert_eq!(*transport, RtspTransport::Udp);
                let c = credentials.as_ref().unwrap();
                assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "s3cret"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{s} {s:?}").contains("s3cret"), "password leaked");
        assert_eq!(
            Source::parse("/tmp/a.mp4", RtspTransport::Tcp, None).unwrap(),
            Source::File("/tmp/a.mp4".into())
        );
        assert_eq!(
            Source::parse("file:///tmp/a.mp4", RtspTransport::Tcp, None).unwrap(),
            Source::File("/tmp/a.mp4".into())
        );
        assert_eq!(
            Source::parse("v4l2:///dev/video2", RtspTransport::Tcp, None).unwrap(),
            Source::V4l2("/dev/video2".into())
        );
        assert_eq!(
            Source::parse("test://ball", RtspTransport::Tcp, None).unwrap(),
            Source::Test {
                pattern: "ball".into()
            }
        );
        let synth = Source::parse(
            "synth://needle?seed=9&speed=0&frames=500",
            RtspTransport::Tcp,
            None,
        )
        .unwrap();
        assert_eq!(
            synth,
            Source::Synth {
                script: "needle".into(),
                seed: 9,
                speed: 0.0,
                options: Box::new(ScriptOptions {
                    frames: Some(500),
                    ..Default::default()
                }),
            }
        );
        assert_eq!(
            synth.to_string(),
            "synth://needle?seed=9&speed=0&frames=500"
        );
        assert!(!synth.is_live());
        // Needle options round-trip; bad ones and options on the demo are refused.
        let uri = "synth://needle?seed=2&speed=1&frames=1000&needles=star,triangle&copies=2\
                   &needle_frames=4&chained=1&questions=count,exists";
        let parsed = Source::parse(uri, RtspTransport::Tcp, None).unwrap();
        assert_eq!(parsed.to_string(), uri);
        for bad in [
            "synth://needle?needles=circle",
            "synth://needle?copies=10",
            "synth://needle?questions=why",
            "synth://needle?chained=2",
            "synth://needle?frames=5",
            "synth://demo?frames=100",
        ] {
            assert!(
                matches!(
                    Source::parse(bad, RtspTransport::Tcp, None),
                    Err(IngestError::InvalidUri(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_bad_uris() {
        assert!(
            matches!(Source::parse("ftp://x/y", RtspTransport::Tcp, None), Err(IngestError::UnknownScheme(s)) if s == "ftp")
        );
        assert!(matches!(
            Source::parse("", RtspTransport::Tcp, None),
            Err(IngestError::InvalidUri(_))
        ));
        assert!(matches!(
            Source::parse("file://relative/x", RtspTransport::Tcp, None),
            Err(IngestError::InvalidUri(_))
        ));
        assert!(matches!(
            Source::parse("rtsp:///path", RtspTransport::Tcp, None),
            Err(IngestError::InvalidUri(_))
        ));
        assert!(matches!(
            Source::parse("test://a!b", RtspTransport::Tcp, None),
            Err(IngestError::InvalidUri(_))
        ));
        for bad in [
            "synth://nope",
            "synth://demo?seed=x",
            "synth://demo?speed=-1",
            "synth://needle?frames=3",
            "synth://demo?colour=red",
        ] {
            assert!(
                matches!(
                    Source::parse(bad, RtspTransport::Tcp, None),
                    Err(IngestError::InvalidUri(_))
                ),
                "{bad}"
            );
        }
    }
}
