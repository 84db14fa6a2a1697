//! Bearer-token authentication and client identity.
//!
//! Tokens come from a file (one per line, `name:token` or a bare `token` named
//! `token-N`; blank lines and `#` comments skipped), never from the config text or the
//! command line. A request's `authorization: Bearer <token>` is compared with every
//! known token in constant time (`subtle`), so timing tells nothing about how much of a
//! guess was right. The interceptor stamps each request with a [`ClientId`] — the token's
//! name, or the peer address when auth is off — which the per-client limits key on.

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::error::ServeError;
use crate::metrics as names;

/// Who sent a request (a token's name, or `peer:IP` without auth).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(pub String);

/// The accepted tokens.
#[derive(Clone)]
pub struct Tokens {
    /// (name, token bytes); names unique, tokens non-empty.
    entries: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, ServeError> {
        let err = |message: String| ServeError::Tokens {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = match line.split_once(':') {
                Some((n, t)) => (n.trim().to_owned(), t.trim()),
                None => (format!("token-{}", entries.len() + 1), line),
            };
            if token.len() < MIN_TOKEN_BYTES {
                return Err(format!(
                    "line {}: tokens need at least {MIN_TOKEN_BYTES} characters",
                    i + 1
                ));
            }
            if name.is_empty() || entries.iter().any(|(n, _)| *n == name) {
                return Err(format!("line {}: empty or repeated name `{name}`", i + 1));
            }
            entries.push((name, token.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err("no token in the file".into());
        }
        Ok(Self { entries })
    }

    /// The name of the token `presented` matches. Every entry is compared, in constant
    /// time for equal lengths.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.entries {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// The gRPC interceptor: authenticates (when tokens are set) and stamps [`ClientId`].
#[derive(Clone)]
pub struct Authenticator {
    pub tokens: Option<Arc<Tokens>>,
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let client = match &self.tokens {
            None => ClientId(
                request
                    .remote_addr()
                    .map_or_else(|| "peer:unknown".to_owned(), |a| format!("peer:{}", a.ip())),
            ),
            Some(tokens) => {
                let presented = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match presented.and_then(|t| tokens.check(t.as_bytes())) {
                    Some(name) => ClientId(name.to_owned()),
                    None => {
                        metrics::counter!(names::GRPC_REJECTED, "reason" => "unauthenticated")
                            .increment(1);
                        return Err(Status::unauthenticated(if presented.is_none() {
                            "missing `authorization: Bearer <token>`"
                        } else {
                            "unknown token"
                        }));
                    }
                }
            }
        };
        request.extensions_mut().insert(client);
        Ok(request)
    }
}

/// The client a request was stamped with.
pub fn client_of<T>(request: &Request<T>) -> ClientId {
    request
        .extensions()
        .get::<ClientId>()
        .cloned()
        .unwrap_or_else(|| ClientId("peer:unknown".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    const FILE: &str = "# operators\nalice: 0123456789abcdef0123\n\nfedcba9876543210fedc\n";

    #[test]
    fn tokens_parse_with_names() {
        let t = Tokens::parse(FILE).unwrap();
        assert_eq!(t.check(b"0123456789abcdef0123"), Some("alice"));
        assert_eq!(t.check(b"fedcba9876543210fedc"), Some("token-2"));
        assert_eq!(t.check(b"0123456789abcdef012"), None);
        assert_eq!(t.check(b""), None);
        assert!(Tokens::parse("short").is_err());
        assert!(Tokens::parse("# nothing\n").is_err());
        assert!(Tokens::parse("a:0123456789abcdef0\na:0123456789abcdef1").is_err());
    }

    #[test]
    fn interceptor_refuses_missing_and_wrong_tokens() {
        let mut auth = Authenticator {
            tokens: Some(Arc::new(Tokens::parse(FILE).unwrap())),
        };
        let status = auth.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let mut req = Request::new(());
        req.metadata_mut().insert(
            "authorization",
            "Bearer nope-nope-nope-nope".parse().unwrap(),
        );
        assert_eq!(
            auth.call(req).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut req = Request::new(());
        req.metadata_mut().insert(
            "authorization",
            "Bearer 0123456789abcdef0123".parse().unwrap(),
        );
        let req = auth.call(req).unwrap();
        assert_eq!(client_of(&req), ClientId("alice".into()));
    }
}
