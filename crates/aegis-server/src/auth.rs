//! Who is on the other end of a stream: the client named by its TLS certificate
//! (`aegis://client/<id>`), or the client a bearer token was issued to. Either way the result
//! carries the SecAgg identity key the client must sign with, so a client cannot speak for
//! another in secure aggregation.
//!
//! Tokens are 32 random bytes, shown once as `aegis_` + URL-safe Base64, and stored only as
//! SHA-256 hashes in a JSON token file (`{"tokens":[{"client_id":7,"sha256":"…",
//! "identity":"…"}]}`, mode 0600), next to the Ed25519 public key the client signs with.

use std::collections::HashMap;
use std::path::Path;

use aegis_crypto::primitives::digest;
use aegis_secagg::messages::RosterEntry;
use aegis_secagg::{ClientId, IdentityPublicKey};
use aegis_transport::PeerInfo;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::error::{Error, Result, io};

/// Prefix of every bearer token.
pub const TOKEN_PREFIX: &str = "aegis_";

/// How a client proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A client certificate verified against the deployment CA.
    Certificate,
    /// A bearer token from the token file.
    Token,
}

/// An authenticated client.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The client.
    pub id: ClientId,
    /// Its roster entry for secure aggregation (identity key + evidence).
    pub entry: RosterEntry,
    /// How it authenticated.
    pub method: Method,
}

#[derive(Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

#[derive(Clone, Serialize, Deserialize)]
struct TokenRecord {
    client_id: u64,
    /// Hex SHA-256 of the token string.
    sha256: String,
    /// Hex Ed25519 public key the client signs SecAgg messages with.
    identity: String,
}

/// The bearer tokens the server accepts.
#[derive(Clone, Default)]
pub struct TokenTable {
    by_hash: HashMap<[u8; 32], (ClientId, IdentityPublicKey)>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTable({} tokens)", self.by_hash.len())
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

impl TokenTable {
    /// Loads a token file (refused when others can read it).
    pub fn load(path: &Path) -> Result<TokenTable> {
        aegis_crypto::fsutil::check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let file: TokenFile = serde_json::from_str(&text).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut by_hash = HashMap::new();
        for r in file.tokens {
            let bad = |reason: &str| Error::BadFile {
                path: path.to_owned(),
                reason: format!("client {}: {reason}", r.client_id),
            };
            let hash: [u8; 32] = hex::decode(&r.sha256)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("sha256 is not 32 hex bytes"))?;
            let key: [u8; 32] = hex::decode(&r.identity)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("identity is not 32 hex bytes"))?;
            by_hash.insert(hash, (ClientId(r.client_id), IdentityPublicKey(key)));
        }
        Ok(TokenTable { by_hash })
    }

    /// Issues a token for `client` whose SecAgg identity key is `identity`: adds its hash to
    /// the token file at `path` (created 0600 if missing, replaced atomically) and returns the
    /// token, which exists nowhere else.
    pub fn issue(path: &Path, client: ClientId, identity: &IdentityPublicKey) -> Result<String> {
        let mut file = if path.exists() {
            aegis_crypto::fsutil::check_private(path)?;
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            serde_json::from_str(&text).map_err(|e| Error::BadFile {
                path: path.to_owned(),
                reason: e.to_string(),
            })?
        } else {
            TokenFile { tokens: Vec::new() }
        };
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut raw[..]).map_err(|e| Error::Config(format!("OS randomness: {e}")))?;
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..])
        );
        file.tokens.push(TokenRecord {
            client_id: client.0,
            sha256: hex::encode(token_hash(&token)),
            identity: hex::encode(identity.0),
        });
        let text = serde_json::to_string_pretty(&file).map_err(|e| Error::Config(e.to_string()))?;
        aegis_crypto::fsutil::replace_private(path, text.as_bytes())?;
        Ok(token)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    fn lookup(&self, token: &str) -> Option<(ClientId, IdentityPublicKey)> {
        self.by_hash.get(&token_hash(token)).copied()
    }
}

/// The bearer token in `authorization: Bearer <token>`, if any.
fn bearer(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
    text.strip_prefix("Bearer ")
        .map(|t| Some(t.trim()))
        .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))
}

/// Authenticates a request: its client certificate, else its bearer token. A certificate and
/// a token that name different clients are refused.
pub fn authenticate(
    peer: Option<&PeerInfo>,
    metadata: &MetadataMap,
    tokens: Option<&TokenTable>,
) -> Result<Identity, Status> {
    let token = bearer(metadata)?;
    let from_token = match (token, tokens) {
        (Some(t), Some(table)) => Some(
            table
                .lookup(t)
                .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?,
        ),
        (Some(_), None) => {
            return Err(Status::unauthenticated(
                "this server does not accept tokens",
            ));
        }
        (None, _) => None,
    };
    let cert = peer.and_then(|p| Some((p.client_id?, p.certificate.as_ref()?)));
    match (cert, from_token) {
        (Some((id, der)), token) => {
            if let Some((tid, _)) = token
                && tid != id
            {
                return Err(Status::unauthenticated(
                    "the token and the certificate name different clients",
                ));
            }
            let entry = aegis_transport::roster::roster_entry(id, der.as_ref())
                .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
            Ok(Identity {
                id,
                entry,
                method: Method::Certificate,
            })
        }
        (None, Some((id, identity))) => Ok(Identity {
            id,
            entry: RosterEntry {
                id,
                identity,
                credential: Vec::new(),
            },
            method: Method::Token,
        }),
        (None, None) => Err(Status::unauthenticated(
            "no client certificate naming a client and no bearer token",
        )),
    }
}
