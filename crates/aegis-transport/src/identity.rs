//! Client identities: a client certificate names its client with the URI subject alternative
//! name `aegis://client/<id>` (and, for people reading it, the common name `aegis-client-<id>`).

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;

/// The prefix of the URI SAN that carries a client id.
pub const CLIENT_URI_PREFIX: &str = "aegis://client/";

/// The prefix of a client certificate's common name.
pub const CLIENT_CN_PREFIX: &str = "aegis-client-";

/// A federated-learning client's identity, as certified by the deployment CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl ClientId {
    /// The URI SAN that names this client: `aegis://client/<id>`.
    pub fn uri(self) -> String {
        format!("{CLIENT_URI_PREFIX}{}", self.0)
    }

    /// The common name of this client's certificate: `aegis-client-<id>`.
    pub fn common_name(self) -> String {
        format!("{CLIENT_CN_PREFIX}{}", self.0)
    }

    /// Parse `aegis://client/<id>` (the id in canonical decimal: no sign, no leading zeros).
    pub fn from_uri(uri: &str) -> Option<ClientId> {
        let digits = uri.strip_prefix(CLIENT_URI_PREFIX)?;
        parse_canonical_u64(digits).map(ClientId)
    }

    /// The client identity in an end-entity certificate: its one `aegis://client/<id>` URI
    /// SAN. `None` when the certificate cannot be parsed, has no such SAN, or has more than
    /// one (an ambiguous certificate names nobody).
    ///
    /// This only reads the certificate; it must already have been verified against the CA
    /// (rustls does that during the handshake).
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Option<ClientId> {
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

impl From<aegis_secagg::ClientId> for ClientId {
    fn from(id: aegis_secagg::ClientId) -> Self {
        ClientId(id.0)
    }
}

impl From<ClientId> for aegis_secagg::ClientId {
    fn from(id: ClientId) -> Self {
        aegis_secagg::ClientId(id.0)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ClientId {
    type Err = String;

    /// A decimal id (`42`) or the URI form (`aegis://client/42`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = if s.starts_with(CLIENT_URI_PREFIX) {
            ClientId::from_uri(s)
        } else {
            parse_canonical_u64(s).map(ClientId)
        };
        parsed.ok_or_else(|| format!("invalid client id {s:?}: expected a decimal number (u64)"))
    }
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
            assert_eq!(c.to_string().parse::<ClientId>(), Ok(c));
            assert_eq!(c.uri().parse::<ClientId>(), Ok(c));
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
        assert!("x".parse::<ClientId>().is_err());
        assert!("".parse::<ClientId>().is_err());
    }
}
