//! A training job: its specification, its persisted progress and its encrypted checkpoints.
//!
//! Layout under the server's state directory:
//!
//! ```text
//! jobs/<job-id>/state.json             spec, rounds done, per-round metrics (no secrets)
//! jobs/<job-id>/round-0000.aegis       initial model, safetensors encrypted at rest (v2)
//! jobs/<job-id>/round-<r>.aegis        global model after round r
//! ```
//!
//! A round's checkpoint is written (temporary file, fsync, rename) before `state.json` names
//! it, so a crash at any point leaves a state that names a complete checkpoint; a restarted
//! server resumes after the last round `state.json` records.

use std::path::{Path, PathBuf};

use aegis_client::Model;
use aegis_crypto::{Format, Keyset};
use aegis_secagg::Policy;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io};
use crate::metrics::RoundMetrics;

/// What to train and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job id: letters, digits, `-`, `_`, `.` (it names a directory).
    pub id: String,
    /// Rounds to run (aborted rounds count).
    pub rounds: u32,
    /// Clients sampled per round at most.
    pub cohort: u32,
    /// Clients needed to start a round (at least 3).
    pub min_clients: u32,
    /// Update clipping bound per coordinate (secure aggregation's `clip`).
    pub clip: f32,
    /// Largest FedAvg weight (example count) a client may submit; larger counts are capped.
    pub max_weight: u32,
    /// Expected fraction of dropouts per round (SecAgg+ parameter choice).
    pub dropout_rate: f64,
    /// Expected fraction of clients colluding with the server (SecAgg+ parameter choice).
    pub corrupt_rate: f64,
    /// Local passes over the data per round.
    pub epochs: u32,
    /// Local mini-batch size.
    pub batch_size: u32,
    /// Local SGD step size.
    pub learning_rate: f32,
    /// Rounds that may abort in a row before the job fails.
    pub max_consecutive_aborts: u32,
}

impl JobSpec {
    /// A job with the defaults: 5 rounds, cohorts of up to 100, at least 3 clients, clip 1,
    /// weights up to 10 000, 10% dropouts, no colluders, 2 epochs of batch 16 at step 0.1.
    pub fn new(id: &str) -> JobSpec {
        JobSpec {
            id: id.to_string(),
            rounds: 5,
            cohort: 100,
            min_clients: 3,
            clip: 1.0,
            max_weight: 10_000,
            dropout_rate: 0.1,
            corrupt_rate: 0.0,
            epochs: 2,
            batch_size: 16,
            learning_rate: 0.1,
            max_consecutive_aborts: 3,
        }
    }

    /// Checks the values a round needs.
    pub fn validate(&self) -> Result<()> {
        let ok_id = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !self.id.starts_with('.');
        let fail = |m: &str| Err(Error::Config(m.to_string()));
        if !ok_id {
            return fail("job id: 1–64 letters, digits, '-', '_' or '.', not starting with '.'");
        }
        if self.rounds == 0 {
            return fail("rounds must be at least 1");
        }
        if self.min_clients < 3 {
            return fail("min_clients must be at least 3 (secure aggregation needs a threshold)");
        }
        if self.cohort < self.min_clients {
            return fail("cohort must be at least min_clients");
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return fail("clip must be a positive number");
        }
        if self.max_weight == 0 {
            return fail("max_weight must be at least 1");
        }
        if !(0.0..0.5).contains(&self.dropout_rate) || !(0.0..0.34).contains(&self.corrupt_rate) {
            return fail("dropout_rate must be in [0, 0.5) and corrupt_rate in [0, 0.34)");
        }
        if self.max_consecutive_aborts == 0 {
            return fail("max_consecutive_aborts must be at least 1");
        }
        if self.epochs == 0
            || self.batch_size == 0
            || !(self.learning_rate.is_finite()
                && self.learning_rate.is_sign_positive()
                && self.learning_rate != 0.0)
        {
            return fail("epochs, batch_size and learning_rate must be positive");
        }
        Ok(())
    }

    /// The SecAgg+ parameter policy of this job.
    pub fn policy(&self) -> Policy {
        Policy {
            dropout_rate: self.dropout_rate,
            corrupt_fraction: self.corrupt_rate,
            ..Policy::default()
        }
    }
}

/// What `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobState {
    /// The job.
    pub spec: JobSpec,
    /// Rounds finished (completed or aborted).
    pub rounds_done: u32,
    /// File name (in the job directory) of the current global model.
    pub checkpoint: String,
    /// Metrics of every finished round.
    pub history: Vec<RoundMetrics>,
}

/// A job's directory.
#[derive(Clone, Debug)]
pub struct JobDir {
    dir: PathBuf,
}

impl JobDir {
    /// `state_dir/jobs/<id>`.
    pub fn new(state_dir: &Path, id: &str) -> JobDir {
        JobDir {
            dir: state_dir.join("jobs").join(id),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The checkpoint file name after `round` (0 = the initial model).
    pub fn checkpoint_name(round: u32) -> String {
        format!("round-{round:04}.aegis")
    }

    /// Loads `state.json`, `None` when the job has never started here.
    pub fn load_state(&self) -> Result<Option<JobState>> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let state: JobState = serde_json::from_str(&text).map_err(|e| Error::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(state))
    }

    /// Writes `state.json` atomically.
    pub fn save_state(&self, state: &JobState) -> Result<()> {
        let text = serde_json::to_vec_pretty(state).map_err(|e| Error::Config(e.to_string()))?;
        aegis_crypto::fsutil::replace_private(&self.state_path(), &text)?;
        Ok(())
    }

    /// Writes `model` encrypted at rest (v2, under the primary key) as the checkpoint of
    /// `round`, atomically; returns its file name.
    pub fn write_checkpoint(&self, round: u32, model: &Model, keys: &Keyset) -> Result<String> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let name = Self::checkpoint_name(round);
        let plain = zeroize::Zeroizing::new(model.to_safetensors()?);
        let blob = aegis_crypto::seal(keys.primary(), &plain, Format::V2)?;
        aegis_crypto::fsutil::replace_private(&self.dir.join(&name), &blob)?;
        Ok(name)
    }

    /// Reads and decrypts a checkpoint (by file name); tampering is an error, not a model.
    pub fn read_checkpoint(&self, name: &str, keys: &Keyset) -> Result<Model> {
        read_checkpoint(&self.dir.join(name), keys)
    }
}

/// Reads and decrypts an encrypted safetensors checkpoint.
pub fn read_checkpoint(path: &Path, keys: &Keyset) -> Result<Model> {
    let blob = std::fs::read(path).map_err(io(path))?;
    let plain = zeroize::Zeroizing::new(aegis_crypto::open(keys, &blob)?);
    Ok(Model::from_safetensors(&plain)?)
}
