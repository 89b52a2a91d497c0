//! Client identities: a client certificate names its client with the URI subject alternative
//! name `aegis://client/<id>` (and, for people reading it, the common name `aegis-client-<id>`).

use rustls_pki_types::CertificateDer;

/// The prefix of the URI SAN that carries a client id.
pub const CLIENT_URI_PREFIX: &str = "aegis://client/";

/// The prefix of a client certificate's common name.
pub const CLIENT_CN_PREFIX: &str = "aegis-client-";

pub use aegis_secagg::ClientId;

/// How certificates name clients: `aegis://client/<id>` and `aegis-client-<id>`.
pub trait ClientIdExt: Sized {
    /// The URI SAN that names this client: `aegis://client/<id>`.
    fn uri(self) -> String;

    /// The common name of this client's certificate: `aegis-client-<id>`.
    fn common_name(self) -> String;

    /// Parse `aegis://client/<id>` (the id in canonical decimal: no sign, no leading zeros).
    fn from_uri(uri: &str) -> Option<Self>;

    /// The client identity in an end-entity certificate: its one `aegis://client/<id>` URI
    /// SAN. `None` when the certificate cannot be parsed, has no such SAN, or has more than
    /// one (an ambiguous certificate names nobody).
    ///
    /// This only reads the certificate; it must already have been verified against the CA
    /// (rustls does that during the handshake).
    fn from_certificate(cert: &CertificateDer<'_>) -> Option<Self>;
}

impl ClientIdExt for ClientId {
    fn uri(self) -> String {
        format!("{CLIENT_URI_PREFIX}{}", self.0)
    }

    fn common_name(self) -> String {
        format!("{CLIENT_CN_PREFIX}{}", self.0)
    }

    fn from_uri(uri: &str) -> Option<ClientId> {
        let digits = uri.strip_prefix(CLIENT_URI_PREFIX)?;
        parse_canonical_u64(digits).map(ClientId)
    }

    fn from_certificate(cert: &CertificateDer<'_>) -> Option<ClientId> {
        use x509_parser::extensions::GeneralName;
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let san = x509.subject_alternative_name().ok()??;
        let mut found = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with(CLIENT_URI_PREFIX)
            {
                let id = ClientId::from_uri(uri)?;
                if found.replace(id).is_some() {
                    return None;
                }
            }
        }
        found
    }
}

/// The prefix of the URI SAN that names an administrator (the gateway, an operator's tool)
/// allowed on the FL server's admin service: `aegis://admin/<name>`.
pub const ADMIN_URI_PREFIX: &str = "aegis://admin/";

/// Whether `name` may name an administrator: 1–64 of `a-z`, `0-9`, `-`, `_`, `.`, not
/// starting with `.` or `-` (it also names files).
pub fn valid_admin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// The administrator named by an end-entity certificate: its one `aegis://admin/<name>` URI
/// SAN. `None` when the certificate cannot be parsed, has no such SAN, more than one, or an
/// invalid name. Like [`ClientIdExt::from_certificate`], it only reads a certificate that the
/// handshake already verified.
pub fn admin_name_from_certificate(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    let mut found = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name
            && let Some(admin) = uri.strip_prefix(ADMIN_URI_PREFIX)
            && (!valid_admin_name(admin) || found.replace(admin.to_string()).is_some())
        {
            return None;
        }
    }
    found
}

/// Parses a client id given on a command line: decimal (`42`) or the URI form
/// (`aegis://client/42`). For clap's `value_parser`.
pub fn parse_client_id(s: &str) -> Result<ClientId, String> {
    let parsed = if s.starts_with(CLIENT_URI_PREFIX) {
        ClientId::from_uri(s)
    } else {
        parse_canonical_u64(s).map(ClientId)
    };
    parsed.ok_or_else(|| format!("invalid client id {s:?}: expected a decimal number (u64)"))
}

/// A u64 written as ASCII decimal digits without sign or leading zeros ("0" itself allowed).
fn parse_canonical_u64(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_canonical_form() {
        for id in [0, 1, 42, u64::MAX] {
            let c = ClientId(id);
            assert_eq!(ClientId::from_uri(&c.uri()), Some(c));
            assert_eq!(parse_client_id(&c.to_string()), Ok(c));
            assert_eq!(parse_client_id(&c.uri()), Ok(c));
        }
        for bad in [
            "aegis://client/",
            "aegis://client/01",
            "aegis://client/+1",
            "aegis://client/-1",
            "aegis://client/1/x",
            "aegis://client/18446744073709551616",
            "aegis://server/1",
            "https://client/1",
        ] {
            assert_eq!(ClientId::from_uri(bad), None, "{bad}");
        }
        assert!(parse_client_id("x").is_err());
        assert!(parse_client_id("").is_err());
        assert!(parse_client_id("01").is_err());
    }
}
