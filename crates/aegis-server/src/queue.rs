//! The job queue of a long-running server (`serve`): jobs arrive through the admin service,
//! run one at a time in submission order, and survive restarts.
//!
//! Besides the runner's files, a submitted job's directory holds:
//!
//! ```text
//! jobs/<job-id>/job.json        spec, status, submission time, error (no secrets)
//! jobs/<job-id>/initial.aegis   the initial model, encrypted at rest (v2)
//! ```
//!
//! `job.json` is written atomically at every status change. A server that restarts puts jobs
//! recorded as queued or running back in the queue (a running job resumes from its last
//! checkpoint).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aegis_client::Model;
use aegis_crypto::{Format, Keyset};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result, io};
use crate::job::{JobDir, JobSpec, JobState};
use crate::service::lock;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the jobs before it.
    Queued,
    /// Its rounds are running.
    Running,
    /// Every round ran.
    Completed,
    /// Stopped by an error (too many aborted rounds, an I/O failure).
    Failed,
    /// Cancelled through the admin service.
    Cancelled,
}

impl Status {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// `job.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub spec: JobSpec,
    /// Where it is.
    pub status: Status,
    /// Milliseconds since the Unix epoch.
    pub submitted_at_ms: i64,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

/// What the admin service reports of a job.
#[derive(Clone, Debug)]
pub struct JobView {
    /// `job.json`.
    pub record: JobRecord,
    /// `state.json`, once the job has started.
    pub state: Option<JobState>,
}

/// Why a queue operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No such job.
    #[error("no job {0:?}")]
    NotFound(String),
    /// A job with this id exists.
    #[error("a job {0:?} exists already")]
    Exists(String),
    /// The job has ended.
    #[error("job {0:?} has already ended")]
    Ended(String),
    /// The spec or the model is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Server(#[from] Error),
}

struct Inner {
    jobs: BTreeMap<String, JobRecord>,
    /// The running job and the switch that stops it.
    running: Option<(String, watch::Sender<bool>)>,
}

/// The queue. Cheap to share (`Arc`).
pub struct Queue {
    state_dir: PathBuf,
    keys: Arc<Keyset>,
    inner: Mutex<Inner>,
    wake: Notify,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Queue {
    /// Opens the queue under `state_dir`, reading every `jobs/*/job.json`; jobs recorded as
    /// running go back to queued (they resume where they stopped).
    pub fn open(state_dir: &Path, keys: Arc<Keyset>) -> Result<Queue> {
        let mut jobs = BTreeMap::new();
        let root = state_dir.join("jobs");
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&root)(e)),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry.map_err(io(&root))?;
            let path = entry.path().join("job.json");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                // A directory of a job run by `aegis server --job` (not queued).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            let mut record: JobRecord =
                serde_json::from_str(&text).map_err(|e| Error::BadFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if record.status == Status::Running {
                record.status = Status::Queued;
            }
            jobs.insert(record.spec.id.clone(), record);
        }
        Ok(Queue {
            state_dir: state_dir.to_path_buf(),
            keys,
            inner: Mutex::new(Inner {
                jobs,
                running: None,
            }),
            wake: Notify::new(),
        })
    }

    fn dir(&self, id: &str) -> JobDir {
        JobDir::new(&self.state_dir, id)
    }

    fn save(&self, record: &JobRecord) -> Result<()> {
        let dir = self.dir(&record.spec.id);
        let text = serde_json::to_vec_pretty(record).map_err(|e| Error::Config(e.to_string()))?;
        aegis_crypto::fsutil::replace_private(&dir.path().join("job.json"), &text)?;
        Ok(())
    }

    /// Queues a job with its initial model (safetensors bytes): the model is checked, then
    /// written encrypted at rest before the job is recorded.
    pub fn submit(&self, spec: JobSpec, initial_model: &[u8]) -> Result<JobRecord, QueueError> {
        spec.validate()
            .map_err(|e| QueueError::Invalid(e.to_string()))?;
        let model = Model::from_safetensors(initial_model)
            .map_err(|e| QueueError::Invalid(format!("initial model: {e}")))?;
        if model.num_params() == 0 {
            return Err(QueueError::Invalid(
                "initial model has no parameters".into(),
            ));
        }
        let dir = self.dir(&spec.id);
        {
            let inner = lock(&self.inner);
            if inner.jobs.contains_key(&spec.id) || dir.path().exists() {
                return Err(QueueError::Exists(spec.id));
            }
        }
        std::fs::create_dir_all(dir.path()).map_err(io(dir.path()))?;
        let blob = aegis_crypto::seal(self.keys.primary(), initial_model, Format::V2)
            .map_err(Error::from)?;
        aegis_crypto::fsutil::replace_private(&dir.path().join("initial.aegis"), &blob)
            .map_err(Error::from)?;
        let record = JobRecord {
            spec,
            status: Status::Queued,
            submitted_at_ms: now_ms(),
            error: None,
        };
        self.save(&record)?;
        lock(&self.inner)
            .jobs
            .insert(record.spec.id.clone(), record.clone());
        self.wake.notify_one();
        Ok(record)
    }

    /// A job with its runner state.
    pub fn get(&self, id: &str) -> Result<JobView, QueueError> {
        let record = lock(&self.inner)
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        let state = self.dir(id).load_state()?;
        Ok(JobView { record, state })
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<JobRecord> {
        let mut v: Vec<JobRecord> = lock(&self.inner).jobs.values().cloned().collect();
        v.sort_by(|a, b| (a.submitted_at_ms, &a.spec.id).cmp(&(b.submitted_at_ms, &b.spec.id)));
        v
    }

    /// Rounds done of a job (0 before it starts).
    pub fn rounds_done(&self, id: &str) -> u32 {
        self.dir(id)
            .load_state()
            .ok()
            .flatten()
            .map_or(0, |s| s.rounds_done)
    }

    /// The job running now, and the number waiting.
    pub fn status(&self) -> (Option<String>, usize) {
        let inner = lock(&self.inner);
        let queued = inner
            .jobs
            .values()
            .filter(|r| r.status == Status::Queued)
            .count();
        (inner.running.as_ref().map(|(id, _)| id.clone()), queued)
    }

    /// Cancels a queued job at once, or stops a running one (its round in progress is
    /// abandoned; the runner reports back through [`Queue::finish`]).
    pub fn cancel(&self, id: &str) -> Result<JobRecord, QueueError> {
        let mut inner = lock(&self.inner);
        let running = inner.running.as_ref().is_some_and(|(r, _)| r == id);
        let record = inner
            .jobs
            .get_mut(id)
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        if record.status.is_final() {
            return Err(QueueError::Ended(id.to_string()));
        }
        record.status = Status::Cancelled;
        record.error = Some("cancelled".into());
        let record = record.clone();
        if running && let Some((_, stop)) = &inner.running {
            let _ = stop.send(true);
        }
        drop(inner);
        self.save(&record)?;
        Ok(record)
    }

    /// Waits for the next queued job (oldest first), marks it running and returns it with its
    /// initial model and the switch that stops it ([`Queue::cancel`], or `stop_all`).
    pub async fn next(&self) -> Result<(JobSpec, Model, watch::Receiver<bool>)> {
        loop {
            let notified = self.wake.notified();
            let picked = {
                let mut inner = lock(&self.inner);
                let next = inner
                    .jobs
                    .values()
                    .filter(|r| r.status == Status::Queued)
                    .min_by(|a, b| {
                        (a.submitted_at_ms, &a.spec.id).cmp(&(b.submitted_at_ms, &b.spec.id))
                    })
                    .map(|r| r.spec.id.clone());
                next.and_then(|id| {
                    let record = inner.jobs.get_mut(&id)?;
                    record.status = Status::Running;
                    let record = record.clone();
                    let (tx, rx) = watch::channel(false);
                    inner.running = Some((id, tx));
                    Some((record, rx))
                })
            };
            if let Some((record, rx)) = picked {
                self.save(&record)?;
                let path = self.dir(&record.spec.id).path().join("initial.aegis");
                let keys = Arc::clone(&self.keys);
                let model =
                    tokio::task::spawn_blocking(move || crate::job::read_checkpoint(&path, &keys))
                        .await
                        .map_err(|e| Error::Serve(format!("model loading task failed: {e}")))?;
                match model {
                    Ok(model) => return Ok((record.spec, model, rx)),
                    Err(e) => {
                        self.finish(&record.spec.id, Err(&e), false);
                        continue;
                    }
                }
            }
            notified.await;
        }
    }

    /// Stops the running job (server shutdown): it stays recorded as running, so it resumes
    /// after a restart.
    pub fn stop_running(&self) {
        if let Some((_, stop)) = &lock(&self.inner).running {
            let _ = stop.send(true);
        }
    }

    /// Records how the running job `id` ended: completed when `finished`, failed on an
    /// error, cancelled if it was cancelled, otherwise (server shutdown) still running.
    pub fn finish(&self, id: &str, outcome: std::result::Result<(), &Error>, finished: bool) {
        let record = {
            let mut inner = lock(&self.inner);
            if inner.running.as_ref().is_some_and(|(r, _)| r == id) {
                inner.running = None;
            }
            let Some(record) = inner.jobs.get_mut(id) else {
                return;
            };
            match outcome {
                _ if record.status == Status::Cancelled => {}
                Err(e) => {
                    record.status = Status::Failed;
                    // Whoever reads the job (every gateway role) learns why it failed, not the
                    // server's paths or I/O details, which stay in its log.
                    record.error = Some(match e {
                        Error::JobFailed { reason, .. } => reason.clone(),
                        Error::Config(m) => m.clone(),
                        _ => "the server failed (see its log)".into(),
                    });
                }
                Ok(()) if finished => record.status = Status::Completed,
                Ok(()) => {}
            }
            record.clone()
        };
        if let Err(e) = self.save(&record) {
            tracing::error!(job = %id, error = %e, "could not record the job's status");
        }
    }

    /// The job's current global model, decrypted (the initial model before its first round).
    pub fn model(&self, id: &str) -> Result<Model, QueueError> {
        let view = self.get(id)?;
        let dir = self.dir(id);
        Ok(match view.state {
            Some(state) => dir.read_checkpoint(&state.checkpoint, &self.keys)?,
            None => crate::job::read_checkpoint(&dir.path().join("initial.aegis"), &self.keys)?,
        })
    }
}
