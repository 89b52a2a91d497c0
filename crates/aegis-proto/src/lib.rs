//! # aegis-proto — the gRPC protocols of the AEGIS FL server
//!
//! `proto/aegis/fl/v1/federation.proto` (server ⇄ clients), `proto/aegis/admin/v1/admin.proto`
//! (gateway → server: jobs, models, revocation) and the code tonic and prost generate from it (with the
//! protoc inside `protoc-bin-vendored`: building needs neither a system protoc nor the network).
//! One bidirectional stream per client (`Federation/Join`); the server announces rounds, streams
//! the global model in chunks and relays secure-aggregation messages as opaque bytes.

#![forbid(unsafe_code)]

/// Protocol revision of `federation.proto`, sent in `Hello` and `Welcome`.
pub const PROTOCOL: u32 = 1;

/// Size of the `ModelChunk`s the server streams the model in.
pub const MODEL_CHUNK: usize = 1 << 20;

/// `aegis.admin.v1`: the FL server's admin service (jobs, models, revocation), used by the
/// gateway: `admin_client::AdminClient`, `admin_server::{Admin, AdminServer}`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod admin {
    tonic::include_proto!("aegis.admin.v1");
}

/// `aegis.fl.v1`: messages, `federation_client::FederationClient` and
/// `federation_server::{Federation, FederationServer}`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("aegis.fl.v1");
}
