//! The long-running server (`serve`): jobs through the admin service, kept across a restart;
//! only administrator certificates get in; a shutdown future that panics still stops it.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use aegis_proto::admin::admin_client::AdminClient;
use aegis_proto::admin::{JobRef, JobStatus, ListJobsRequest, SubmitJobRequest};
use aegis_server::{AdminEndpoint, ServerConfig};
use aegis_transport::pki;
use aegis_transport::{ClientAuth, ClientTls};
use common::*;
use tokio::sync::oneshot;

struct Queued {
    admin: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<aegis_server::Result<()>>,
}

async fn start(fed: &Fed) -> Queued {
    let (stop, stopped) = oneshot::channel::<()>();
    let (admin, task) = serve_until(fed, async {
        let _ = stopped.await;
    })
    .await;
    Queued { admin, stop, task }
}

/// `serve` on 127.0.0.1 until `shutdown` resolves: the admin address and the server task.
async fn serve_until(
    fed: &Fed,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<aegis_server::Result<()>>,
) {
    let config = ServerConfig::new(
        fed.server_tls(ClientAuth::Required),
        fed.state_dir(),
        fed.keys.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let task = tokio::spawn(aegis_server::serve(
        listener,
        AdminEndpoint {
            listener: admin_listener,
            tls: fed.server_tls(ClientAuth::Required),
        },
        config,
        shutdown,
    ));
    (admin, task)
}

impl Queued {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stopped in time")
            .unwrap()
            .unwrap();
    }
}

/// An admin client presenting `cert`/`key`.
async fn admin_client(
    fed: &Fed,
    addr: SocketAddr,
    identity: (&std::path::Path, &std::path::Path),
) -> AdminClient<tonic::transport::Channel> {
    let tls = ClientTls::from_pem_files(&fed.pki.ca_cert(), Some(identity))
        .unwrap()
        .into_config()
        .unwrap();
    let channel = aegis_client::net::lazy_channel(
        tls,
        &addr.to_string(),
        "localhost",
        Duration::from_secs(5),
    )
    .unwrap();
    AdminClient::new(channel)
}

fn spec(id: &str) -> String {
    serde_json::to_string(&job(id, 3, 3)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_restart_and_only_administrators_get_in() {
    let fed = Fed::new(1);
    pki::issue_admin(fed.pki.dir(), "gateway", false).unwrap();
    let model = aegis_client::Model::softmax_regression(4, 2)
        .unwrap()
        .to_safetensors()
        .unwrap();
    let server = start(&fed).await;
    let admin_cert = (fed.pki.admin_cert("gateway"), fed.pki.admin_key("gateway"));
    let mut admin = admin_client(&fed, server.admin, (&admin_cert.0, &admin_cert.1)).await;
    for id in ["first", "second"] {
        let job = admin
            .submit_job(SubmitJobRequest {
                spec_json: spec(id),
                initial_model: model.clone().into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(job.id, id);
    }
    // The same id twice, a bad spec, a bad model: refused with the matching codes.
    let dup = admin
        .submit_job(SubmitJobRequest {
            spec_json: spec("first"),
            initial_model: model.clone().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let bad = admin
        .submit_job(SubmitJobRequest {
            spec_json: serde_json::to_string(&job("x", 0, 3)).unwrap(),
            initial_model: model.clone().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let bad = admin
        .submit_job(SubmitJobRequest {
            spec_json: spec("y"),
            initial_model: b"not safetensors".to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // The first job runs (waiting for clients), the second waits; cancel the second.
    let cancelled = admin
        .cancel_job(JobRef {
            id: "second".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, JobStatus::Cancelled as i32);
    let again = admin
        .cancel_job(JobRef {
            id: "second".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);

    // A client certificate from the same CA completes the handshake but not the call.
    let client = aegis_transport::ClientId(1);
    let mut intruder = admin_client(
        &fed,
        server.admin,
        (&fed.pki.client_cert(client), &fed.pki.client_key(client)),
    )
    .await;
    let denied = intruder.list_jobs(ListJobsRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    server.stop().await;

    // After a restart: the running job is back (queued, then running again), the cancelled one
    // stays cancelled, and the initial model is served decrypted.
    let server = start(&fed).await;
    let mut admin = admin_client(&fed, server.admin, (&admin_cert.0, &admin_cert.1)).await;
    let jobs = admin
        .list_jobs(ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let status: Vec<(String, i32)> = jobs.iter().map(|j| (j.id.clone(), j.status)).collect();
    assert_eq!(status.len(), 2, "{status:?}");
    assert!(
        [JobStatus::Queued as i32, JobStatus::Running as i32].contains(&status[0].1),
        "{status:?}"
    );
    assert_eq!(status[1], ("second".into(), JobStatus::Cancelled as i32));
    let mut stream = admin
        .fetch_model(JobRef { id: "first".into() })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    assert_eq!(bytes, model, "the initial model, decrypted");
    // No plaintext model on disk.
    let on_disk = std::fs::read(fed.state_dir().join("jobs/first/initial.aegis")).unwrap();
    assert!(aegis_crypto::v2::has_magic(&on_disk));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_future_that_panics_still_stops_the_server() {
    let fed = Fed::new(0);
    let (_, task) = serve_until(&fed, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        panic!("the shutdown signal's future failed");
    })
    .await;
    let res = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the server stopped instead of spinning");
    res.unwrap().unwrap();
}
