//! The gateway's side of the FL server's admin service (gRPC over TLS 1.3 with the gateway's
//! administrator certificate), with short-lived caches of job status so that dashboards and
//! pollers do not each cost the server a call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_proto::admin::admin_client::AdminClient;
use aegis_proto::admin::{
    Job, JobRef, JobStatus, ListJobsRequest, RevokeClientRequest, StatusRequest, SubmitJobRequest,
};
use tonic::transport::Channel;

use crate::error::ApiError;
use crate::state::lock;

/// How long a job's status is reused.
pub const STATUS_TTL: Duration = Duration::from_millis(500);

/// Per-call deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Every job's status by id, and when it was fetched.
type JobsSnapshot = Option<(Arc<HashMap<String, Job>>, Instant)>;

/// A job as the FL server last reported it, its round history checked as JSON once.
#[derive(Debug)]
pub struct FlJob {
    /// The server's answer.
    pub job: Job,
    /// `job.history_json` (an array of round metrics), ready to embed in responses.
    pub history: Box<serde_json::value::RawValue>,
}

impl FlJob {
    /// Wraps the server's answer.
    pub fn new(job: Job) -> FlJob {
        let history = serde_json::value::RawValue::from_string(job.history_json.clone())
            .ok()
            .filter(|_| !job.history_json.is_empty())
            .unwrap_or_else(empty_history);
        FlJob { job, history }
    }
}

/// `[]` as a raw JSON value.
pub fn empty_history() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("[]".into()).unwrap_or_default()
}

/// The admin client.
pub struct FlAdmin {
    client: AdminClient<Channel>,
    jobs: Mutex<HashMap<String, (Arc<FlJob>, Instant)>>,
    list: Mutex<JobsSnapshot>,
    up: Mutex<Option<(bool, Instant)>>,
}

/// A job status as the API names it.
pub fn status_name(job: &Job) -> &'static str {
    match JobStatus::try_from(job.status).unwrap_or(JobStatus::Unspecified) {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::Unspecified => "unknown",
    }
}

fn map_status(s: tonic::Status) -> ApiError {
    use tonic::Code;
    match s.code() {
        Code::NotFound => ApiError::NotFound("job not found on the FL server".into()),
        Code::AlreadyExists | Code::FailedPrecondition => ApiError::Conflict(s.message().into()),
        Code::InvalidArgument => ApiError::invalid(&["body"], s.message(), "value_error"),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            ApiError::Unavailable(format!("the FL server is unavailable: {}", s.message()))
        }
        _ => ApiError::BadGateway(format!("the FL server refused: {}", s.message())),
    }
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl FlAdmin {
    /// A client over `channel` (see `aegis_client::net::lazy_channel`).
    pub fn new(channel: Channel, max_message: usize) -> FlAdmin {
        FlAdmin {
            client: AdminClient::new(channel)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            jobs: Mutex::new(HashMap::new()),
            list: Mutex::new(None),
            up: Mutex::new(None),
        }
    }

    fn forget(&self, id: &str) {
        lock(&self.jobs).remove(id);
        *lock(&self.list) = None;
    }

    /// Queues a job.
    pub async fn submit(&self, spec_json: String, initial_model: Vec<u8>) -> Result<Job, ApiError> {
        let job = self
            .client
            .clone()
            .submit_job(request(SubmitJobRequest {
                spec_json,
                initial_model: initial_model.into(),
            }))
            .await
            .map_err(map_status)?
            .into_inner();
        self.forget(&job.id);
        Ok(job)
    }

    /// A job with its history (cached for [`STATUS_TTL`]).
    pub async fn job(&self, id: &str) -> Result<Arc<FlJob>, ApiError> {
        if let Some((job, at)) = lock(&self.jobs).get(id)
            && at.elapsed() < STATUS_TTL
        {
            return Ok(Arc::clone(job));
        }
        let job = self
            .client
            .clone()
            .get_job(request(JobRef { id: id.into() }))
            .await
            .map_err(map_status)?
            .into_inner();
        let job = Arc::new(FlJob::new(job));
        let mut jobs = lock(&self.jobs);
        if jobs.len() > 10_000 {
            jobs.clear();
        }
        jobs.insert(id.to_string(), (Arc::clone(&job), Instant::now()));
        Ok(job)
    }

    /// Every job's status, by id (cached for [`STATUS_TTL`]).
    pub async fn jobs(&self) -> Result<Arc<HashMap<String, Job>>, ApiError> {
        if let Some((map, at)) = lock(&self.list).as_ref()
            && at.elapsed() < STATUS_TTL
        {
            return Ok(Arc::clone(map));
        }
        let list = self
            .client
            .clone()
            .list_jobs(request(ListJobsRequest {}))
            .await
            .map_err(map_status)?
            .into_inner();
        let map: Arc<HashMap<String, Job>> =
            Arc::new(list.jobs.into_iter().map(|j| (j.id.clone(), j)).collect());
        *lock(&self.list) = Some((Arc::clone(&map), Instant::now()));
        Ok(map)
    }

    /// Cancels a job.
    pub async fn cancel(&self, id: &str) -> Result<Job, ApiError> {
        let job = self
            .client
            .clone()
            .cancel_job(request(JobRef { id: id.into() }))
            .await
            .map_err(map_status)?
            .into_inner();
        self.forget(id);
        Ok(job)
    }

    /// The job's current model, as a stream of safetensors pieces.
    pub async fn model(
        &self,
        id: &str,
    ) -> Result<tonic::Streaming<aegis_proto::admin::ModelChunk>, ApiError> {
        Ok(self
            .client
            .clone()
            .fetch_model(request(JobRef { id: id.into() }))
            .await
            .map_err(map_status)?
            .into_inner())
    }

    /// Tells the server to refuse a client from now on.
    pub async fn revoke(&self, client_id: u64) -> Result<bool, ApiError> {
        Ok(self
            .client
            .clone()
            .revoke_client(request(RevokeClientRequest { client_id }))
            .await
            .map_err(map_status)?
            .into_inner()
            .disconnected)
    }

    /// Whether the server answers (cached for a second).
    pub async fn up(&self) -> bool {
        if let Some((up, at)) = *lock(&self.up)
            && at.elapsed() < Duration::from_secs(1)
        {
            return up;
        }
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        let up = self.client.clone().status(req).await.is_ok();
        *lock(&self.up) = Some((up, Instant::now()));
        up
    }
}
