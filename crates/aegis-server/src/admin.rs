//! The admin gRPC service (`aegis.admin.v1.Admin`): the gateway submits and follows jobs,
//! downloads models and revokes clients. Only peers whose verified certificate names an
//! administrator (`aegis://admin/<name>`) get past [`AdminService::authorize`].

use std::path::PathBuf;
use std::sync::Arc;

use aegis_proto::admin::admin_server::Admin;
use aegis_proto::admin::{
    Job, JobList, JobRef, JobStatus, ListJobsRequest, ModelChunk, RevokeClientRequest,
    RevokeClientResponse, ServerStatus, StatusRequest, SubmitJobRequest,
};
use aegis_secagg::ClientId;
use aegis_transport::PeerInfo;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::job::JobSpec;
use crate::queue::{JobRecord, Queue, QueueError, Status as JobState};
use crate::service::{Shared, lock};

/// The admin service.
pub(crate) struct AdminService {
    pub(crate) queue: Arc<Queue>,
    pub(crate) shared: Arc<Shared>,
    /// `revoked.json` in the state directory.
    pub(crate) revoked_path: PathBuf,
    /// Serializes writes of `revoked.json`.
    pub(crate) revoked_file: std::sync::Mutex<()>,
}

impl AdminService {
    /// The administrator's name from the peer's verified certificate.
    fn authorize<T>(request: &Request<T>) -> Result<String, Status> {
        let cert = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.certificate.as_ref());
        cert.and_then(aegis_transport::identity::admin_name_from_certificate)
            .ok_or_else(|| {
                Status::permission_denied(
                    "the admin service needs an administrator certificate (aegis://admin/<name>)",
                )
            })
    }
}

/// Reads the revoked clients recorded in `path` (missing file: none).
pub(crate) fn load_revoked(path: &std::path::Path) -> crate::Result<Vec<ClientId>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<Vec<u64>>(&text)
            .map(|v| v.into_iter().map(ClientId).collect())
            .map_err(|e| crate::Error::BadFile {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(crate::error::io(path)(e)),
    }
}

fn status_of(e: QueueError) -> Status {
    match e {
        QueueError::NotFound(_) => Status::not_found(e.to_string()),
        QueueError::Exists(_) => Status::already_exists(e.to_string()),
        QueueError::Ended(_) => Status::failed_precondition(e.to_string()),
        QueueError::Invalid(_) => Status::invalid_argument(e.to_string()),
        QueueError::Server(inner) => {
            // Paths and I/O details stay in the server's log.
            tracing::error!(error = %inner, "admin request failed");
            Status::internal("the server could not complete the request; see its log")
        }
    }
}

fn job_message(record: &JobRecord, rounds_done: u32, history_json: String) -> Job {
    let status = match record.status {
        JobState::Queued => JobStatus::Queued,
        JobState::Running => JobStatus::Running,
        JobState::Completed => JobStatus::Completed,
        JobState::Failed => JobStatus::Failed,
        JobState::Cancelled => JobStatus::Cancelled,
    };
    Job {
        id: record.spec.id.clone(),
        status: status.into(),
        spec_json: serde_json::to_string(&record.spec).unwrap_or_default(),
        rounds_done,
        error: record.error.clone().unwrap_or_default(),
        submitted_at_ms: record.submitted_at_ms,
        history_json,
    }
}

/// Runs blocking file and crypto work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Status::internal("task failed"))?
        .map_err(status_of)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let admin = Self::authorize(&request)?;
        let req = request.into_inner();
        let spec: JobSpec = serde_json::from_str(&req.spec_json)
            .map_err(|e| Status::invalid_argument(format!("job spec: {e}")))?;
        let queue = Arc::clone(&self.queue);
        let record = blocking(move || queue.submit(spec, &req.initial_model)).await?;
        tracing::info!(job = %record.spec.id, %admin, rounds = record.spec.rounds, "job queued");
        Ok(Response::new(job_message(&record, 0, "[]".into())))
    }

    async fn get_job(&self, request: Request<JobRef>) -> Result<Response<Job>, Status> {
        Self::authorize(&request)?;
        let id = request.into_inner().id;
        let queue = Arc::clone(&self.queue);
        let view = blocking(move || queue.get(&id)).await?;
        let (rounds_done, history) = match &view.state {
            Some(s) => (
                s.rounds_done,
                serde_json::to_string(&s.history).unwrap_or_else(|_| "[]".into()),
            ),
            None => (0, "[]".into()),
        };
        Ok(Response::new(job_message(
            &view.record,
            rounds_done,
            history,
        )))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<JobList>, Status> {
        Self::authorize(&request)?;
        let queue = Arc::clone(&self.queue);
        let jobs = blocking(move || {
            Ok(queue
                .list()
                .iter()
                .map(|r| job_message(r, queue.rounds_done(&r.spec.id), String::new()))
                .collect())
        })
        .await?;
        Ok(Response::new(JobList { jobs }))
    }

    async fn cancel_job(&self, request: Request<JobRef>) -> Result<Response<Job>, Status> {
        let admin = Self::authorize(&request)?;
        let id = request.into_inner().id;
        let queue = Arc::clone(&self.queue);
        let (record, done) = blocking(move || {
            let r = queue.cancel(&id)?;
            let done = queue.rounds_done(&id);
            Ok((r, done))
        })
        .await?;
        tracing::info!(job = %record.spec.id, %admin, "job cancelled");
        Ok(Response::new(job_message(&record, done, String::new())))
    }

    type FetchModelStream = ReceiverStream<Result<ModelChunk, Status>>;

    async fn fetch_model(
        &self,
        request: Request<JobRef>,
    ) -> Result<Response<Self::FetchModelStream>, Status> {
        let admin = Self::authorize(&request)?;
        let id = request.into_inner().id;
        let queue = Arc::clone(&self.queue);
        let log_id = id.clone();
        let bytes = blocking(move || {
            let model = queue.model(&id)?;
            Ok(Bytes::from(
                model.to_safetensors().map_err(crate::Error::from)?,
            ))
        })
        .await?;
        tracing::info!(job = %log_id, %admin, bytes = bytes.len(), "model fetched");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for start in (0..bytes.len()).step_by(aegis_proto::MODEL_CHUNK) {
                let end = (start + aegis_proto::MODEL_CHUNK).min(bytes.len());
                let chunk = ModelChunk {
                    data: bytes.slice(start..end),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn revoke_client(
        &self,
        request: Request<RevokeClientRequest>,
    ) -> Result<Response<RevokeClientResponse>, Status> {
        let admin = Self::authorize(&request)?;
        let id = ClientId(request.into_inner().client_id);
        let disconnected = self.shared.revoke(id);
        let list: Vec<u64> = self.shared.revoked().iter().map(|c| c.0).collect();
        {
            let _guard = lock(&self.revoked_file);
            let text = serde_json::to_vec(&list).map_err(|_| Status::internal("encoding"))?;
            if let Err(e) = aegis_crypto::fsutil::replace_private(&self.revoked_path, &text) {
                tracing::error!(error = %e, "could not record a revocation");
                return Err(Status::internal(
                    "the revocation applies now but could not be recorded; see the server's log",
                ));
            }
        }
        tracing::info!(client = %id, %admin, disconnected, "client revoked");
        Ok(Response::new(RevokeClientResponse { disconnected }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<ServerStatus>, Status> {
        Self::authorize(&request)?;
        let (running, queued) = self.queue.status();
        Ok(Response::new(ServerStatus {
            connected_clients: u32::try_from(self.shared.connected()).unwrap_or(u32::MAX),
            running_job: running.unwrap_or_default(),
            queued_jobs: u32::try_from(queued).unwrap_or(u32::MAX),
        }))
    }
}
