//! The round runner: gathers clients, runs one SecAgg+ session per round (the transport only
//! moves its messages), applies deadlines, updates the global model and checkpoints it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_client::Model;
use aegis_crypto::Keyset;
use aegis_crypto::primitives::digest;
use aegis_proto::v1::client_frame::Kind as ClientKind;
use aegis_proto::v1::server_frame::Kind as ServerKind;
use aegis_proto::v1::{ModelChunk, RoundEnd, RoundStart, ServerFrame, TrainConfig, TrainReport};
use aegis_secagg::{ClientId, Params, ServerEvent, ServerSession, ServerState, Stage};
use bytes::Bytes;
use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::job::{JobDir, JobSpec, JobState};
use crate::metrics::RoundMetrics;
use crate::service::{Event, SendError, Shared};

/// How long the server waits for clients at each step.
#[derive(Clone, Debug)]
pub struct Deadlines {
    /// Once `min_clients` are connected, how long to wait for a full cohort before starting.
    pub gather_grace: Duration,
    /// Each SecAgg stage's deadline; a client that has not answered by then is a dropout.
    pub stage: Duration,
    /// Added to the masked-input stage's deadline: the time clients have to train.
    pub training: Duration,
    /// Time a new stream has to send `Hello`.
    pub hello: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            gather_grace: Duration::from_secs(5),
            stage: Duration::from_secs(30),
            training: Duration::from_secs(300),
            hello: Duration::from_secs(10),
        }
    }
}

fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::AdvertiseKeys => 0,
        Stage::ShareKeys => 1,
        Stage::MaskedInputCollection => 2,
        Stage::ConsistencyCheck => 3,
        Stage::Unmasking => 4,
    }
}

/// One round's participants: id → (connection, roster entry).
type Cohort = BTreeMap<ClientId, (u64, aegis_secagg::messages::RosterEntry)>;

pub(crate) struct Runner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: mpsc::Receiver<Event>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) deadlines: Deadlines,
    pub(crate) keys: Arc<Keyset>,
    pub(crate) dir: JobDir,
    pub(crate) rng: ChaCha20Rng,
    pub(crate) on_round: Option<crate::RoundHook>,
}

/// How a job run ended.
#[derive(Debug)]
pub struct JobOutcome {
    /// The persisted state (spec, rounds done, history).
    pub state: JobState,
    /// The encrypted checkpoint of the global model.
    pub checkpoint: std::path::PathBuf,
    /// Whether every round ran (false after a shutdown request).
    pub finished: bool,
}

impl Runner {
    pub(crate) fn new_rng() -> Result<ChaCha20Rng> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).map_err(|e| Error::Config(format!("OS randomness: {e}")))?;
        Ok(ChaCha20Rng::from_seed(*seed))
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs the job from its persisted state (or from `initial` when it has none).
    pub(crate) async fn run(&mut self, spec: JobSpec, initial: Model) -> Result<JobOutcome> {
        let (mut state, mut model) = match self.dir.load_state()? {
            Some(state) => {
                if state.spec.id != spec.id {
                    return Err(Error::Config("state.json belongs to another job".into()));
                }
                let model = self.dir.read_checkpoint(&state.checkpoint, &self.keys)?;
                if !model.same_layout(&initial) {
                    return Err(Error::Config(format!(
                        "job {}: its checkpoint's tensors differ from the model given now; give the job's initial model again",
                        spec.id
                    )));
                }
                tracing::info!(job = %spec.id, rounds_done = state.rounds_done, checkpoint = %state.checkpoint, "resuming job");
                (state, model)
            }
            None => {
                let checkpoint = self.dir.write_checkpoint(0, &initial, &self.keys)?;
                let state = JobState {
                    spec: spec.clone(),
                    rounds_done: 0,
                    checkpoint,
                    history: Vec::new(),
                };
                self.dir.save_state(&state)?;
                (state, initial)
            }
        };
        // Only the number of rounds may change across a restart; the rest is the job's.
        let given = JobSpec {
            rounds: state.spec.rounds,
            ..spec.clone()
        };
        if given != state.spec {
            tracing::warn!(
                job = %spec.id,
                "resuming with the job's recorded settings; other settings given now are ignored (only the number of rounds may change)"
            );
        }
        state.spec.rounds = spec.rounds;
        let spec = state.spec.clone();
        let mut aborts_in_a_row = 0;
        while state.rounds_done < spec.rounds {
            let round = state.rounds_done + 1;
            let Some(cohort) = self.gather(&spec).await else {
                break;
            };
            let connected = self.shared.connected() as u32;
            let (metrics, next) = self.round(&spec, round, cohort, &model).await?;
            let metrics = RoundMetrics {
                connected,
                ..metrics
            };
            if self.stopping() && !metrics.completed {
                // A round cut short by shutdown is not recorded; it reruns after a restart.
                break;
            }
            if let Some(next) = next {
                model = next;
                state.checkpoint = self.checkpoint(round, &model).await?;
                aborts_in_a_row = 0;
            } else {
                aborts_in_a_row += 1;
            }
            state.rounds_done = round;
            state.history.push(metrics.clone());
            self.dir.save_state(&state)?;
            tracing::info!(
                round,
                completed = metrics.completed,
                survived = metrics.survived,
                sampled = metrics.sampled,
                seconds = metrics.seconds,
                reason = metrics.abort_reason.as_deref().unwrap_or(""),
                "round finished"
            );
            if let Some(hook) = &self.on_round {
                hook(&metrics);
            }
            if aborts_in_a_row >= spec.max_consecutive_aborts {
                return Err(Error::JobFailed {
                    job: spec.id.clone(),
                    reason: format!(
                        "{aborts_in_a_row} rounds in a row aborted (last: {})",
                        metrics.abort_reason.unwrap_or_default()
                    ),
                });
            }
        }
        let finished = state.rounds_done >= spec.rounds;
        Ok(JobOutcome {
            checkpoint: self.dir.path().join(&state.checkpoint),
            state,
            finished,
        })
    }

    /// Writes the checkpoint of `round` (encryption and fsync) off the async threads.
    async fn checkpoint(&self, round: u32, model: &Model) -> Result<String> {
        let (dir, keys, model) = (self.dir.clone(), Arc::clone(&self.keys), model.clone());
        tokio::task::spawn_blocking(move || dir.write_checkpoint(round, &model, &keys))
            .await
            .map_err(|e| Error::Serve(format!("checkpoint task failed: {e}")))?
    }

    /// Waits for `min_clients`, then up to `gather_grace` more for a full cohort, and samples
    /// the round's participants. `None` on shutdown.
    async fn gather(&mut self, spec: &JobSpec) -> Option<Cohort> {
        let min = spec.min_clients as usize;
        let full = spec.cohort as usize;
        let mut enough_since: Option<Instant> = None;
        let mut last_log = Instant::now();
        let mut all = loop {
            if self.stopping() {
                return None;
            }
            let n = self.shared.connected();
            if n >= min {
                let since = *enough_since.get_or_insert_with(Instant::now);
                if n >= full || since.elapsed() >= self.deadlines.gather_grace {
                    // A client may have left since the count: check the snapshot itself.
                    let all = self.shared.snapshot();
                    if all.len() >= min {
                        break all;
                    }
                }
            } else {
                enough_since = None;
                if last_log.elapsed() >= Duration::from_secs(10) {
                    tracing::info!(connected = n, needed = min, "waiting for clients");
                    last_log = Instant::now();
                }
            }
            // Drain events (frames of clients between rounds are ignored) while waiting.
            tokio::select! {
                ev = self.events.recv() => { ev.as_ref()?; }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = self.shutdown.changed() => {}
            }
        };
        // Fisher–Yates with the server's CSPRNG: a uniform cohort.
        for i in (1..all.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            all.swap(i, j);
        }
        all.truncate(full);
        Some(all.into_iter().map(|(id, seq, e)| (id, (seq, e))).collect())
    }

    /// Sends `frame` to a participant; failures are returned for [`ServerSession::disconnected`].
    fn send(
        &self,
        cohort: &Cohort,
        id: ClientId,
        frame: ServerFrame,
        m: &mut RoundMetrics,
    ) -> bool {
        let Some((seq, _)) = cohort.get(&id) else {
            return false;
        };
        let len = prost::Message::encoded_len(&frame) as u64;
        match self.shared.send(id, *seq, frame) {
            Ok(()) => {
                m.bytes_sent += len;
                true
            }
            Err(e) => {
                if e == SendError::Slow {
                    tracing::warn!(client = %id, "client too slow: its queue is full; dropped");
                }
                false
            }
        }
    }

    /// Sends the session's queued messages; clients that cannot be reached are reported gone.
    fn flush(&self, session: &mut ServerSession, cohort: &Cohort, m: &mut RoundMetrics) {
        loop {
            let mut gone = Vec::new();
            while let Some((to, msg)) = session.poll_outbox() {
                let frame = ServerFrame {
                    kind: Some(ServerKind::Secagg(Bytes::from(msg.encode()))),
                };
                if !self.send(cohort, to, frame, m) {
                    gone.push(to);
                }
            }
            if gone.is_empty() {
                return;
            }
            for id in gone {
                session.disconnected(id);
            }
        }
    }

    async fn round(
        &mut self,
        spec: &JobSpec,
        round: u32,
        cohort: Cohort,
        model: &Model,
    ) -> Result<(RoundMetrics, Option<Model>)> {
        let start = Instant::now();
        let n = cohort.len() as u32;
        let flat = model.flatten();
        let mut m = RoundMetrics {
            round,
            sampled: n,
            params: flat.len() as u64,
            ..RoundMetrics::default()
        };
        let vector_len = u32::try_from(flat.len())
            .map_err(|_| Error::Config("the model has more than 2^32 parameters".into()))?;
        let params =
            match Params::recommended(n, vector_len, spec.clip, spec.max_weight, &spec.policy()) {
                Ok(p) => p,
                Err(e) => {
                    m.abort_reason = Some(format!("no safe parameters for {n} clients: {e}"));
                    self.end_round(&cohort, round, &m, &[]);
                    return Ok((m, None));
                }
            };
        m.degree = params.degree;
        m.threshold = params.threshold;

        // The global model, once, shared by every participant's chunks.
        let blob = Bytes::from(model.to_safetensors()?);
        let sha = digest::digest(&digest::SHA256, &blob);
        let announce = RoundStart {
            job_id: spec.id.clone(),
            round,
            rounds: spec.rounds,
            model_len: blob.len() as u64,
            model_sha256: Bytes::copy_from_slice(sha.as_ref()),
            train: Some(TrainConfig {
                epochs: spec.epochs,
                batch_size: spec.batch_size,
                learning_rate: spec.learning_rate,
            }),
        };
        let mut unreachable = Vec::new();
        for &id in cohort.keys() {
            let mut ok = self.send(
                &cohort,
                id,
                ServerFrame {
                    kind: Some(ServerKind::Round(announce.clone())),
                },
                &mut m,
            );
            let mut at = 0;
            while ok && at < blob.len() {
                let end = (at + aegis_proto::MODEL_CHUNK).min(blob.len());
                ok = self.send(
                    &cohort,
                    id,
                    ServerFrame {
                        kind: Some(ServerKind::Model(ModelChunk {
                            data: blob.slice(at..end),
                        })),
                    },
                    &mut m,
                );
                at = end;
            }
            if !ok {
                unreachable.push(id);
            }
        }

        let roster = cohort.values().map(|(_, e)| e.clone()).collect();
        let mut session = ServerSession::start(params, roster, &mut self.rng)?;
        for id in unreachable {
            session.disconnected(id);
        }
        self.flush(&mut session, &cohort, &mut m);
        let mut reports: HashMap<ClientId, TrainReport> = HashMap::new();
        let mut stage = session.state().stage();
        let mut stage_start = Instant::now();
        let deadline_of = |stage: Option<Stage>, d: &Deadlines| {
            let extra = if stage == Some(Stage::MaskedInputCollection) {
                d.training
            } else {
                Duration::ZERO
            };
            tokio::time::Instant::now() + d.stage + extra
        };
        let mut deadline = deadline_of(stage, &self.deadlines);
        while !session.is_terminal() {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    None => session = blocking(session, ServerSession::cancel).await?,
                    Some(Event::Frame { id, seq, frame, len }) => {
                        if cohort.get(&id).map(|(s, _)| *s) != Some(seq) {
                            continue;
                        }
                        m.bytes_received += len as u64;
                        match frame.kind {
                            Some(ClientKind::Secagg(bytes)) => {
                                // A late message of an earlier round (a slow client) is set
                                // aside, not held against the client in this round.
                                if let Some(s) = aegis_secagg::messages::peek_session(&bytes)
                                    && s != *session.session()
                                {
                                    tracing::debug!(client = %id, "message of an earlier round ignored");
                                    continue;
                                }
                                session = handle_blocking(session, id, bytes).await?;
                            }
                            Some(ClientKind::Report(r)) if r.round == round => {
                                reports.insert(id, r);
                            }
                            Some(ClientKind::Decline(d)) if d.round == round => {
                                tracing::info!(client = %id, reason = %crate::service::printable(&d.reason), "client declined the round");
                                session = blocking(session, move |s| s.disconnected(id)).await?;
                            }
                            _ => {}
                        }
                    }
                    Some(Event::Closed { id, seq }) => {
                        if cohort.get(&id).map(|(s, _)| *s) == Some(seq) {
                            session = blocking(session, move |s| s.disconnected(id)).await?;
                        }
                    }
                },
                // Ending a stage can be heavy (signature checks, unmasking): off the async threads.
                () = tokio::time::sleep_until(deadline) => {
                    session = blocking(session, ServerSession::on_deadline).await?;
                }
                _ = self.shutdown.changed() => if self.stopping() {
                    session = blocking(session, ServerSession::cancel).await?;
                },
            }
            for ev in session.take_events() {
                if let ServerEvent::Dropped {
                    client,
                    stage,
                    reason,
                } = ev
                {
                    tracing::info!(%client, %stage, %reason, "client dropped");
                    if let Some(d) = m.dropped.get_mut(stage_index(stage)) {
                        *d += 1;
                    }
                }
            }
            self.flush(&mut session, &cohort, &mut m);
            let now_stage = session.state().stage();
            if now_stage != stage {
                if let Some(s) = stage
                    && let Some(t) = m.stage_seconds.get_mut(stage_index(s))
                {
                    *t = stage_start.elapsed().as_secs_f64();
                }
                stage = now_stage;
                stage_start = Instant::now();
                deadline = deadline_of(stage, &self.deadlines);
            }
        }

        let mut next = None;
        let mut survivors = Vec::new();
        match session.state() {
            ServerState::Completed(agg) => {
                if let Some(mean) = agg.mean() {
                    let updated: Vec<f32> = flat.iter().zip(&mean).map(|(g, d)| g + d).collect();
                    next = Some(model.unflatten(&updated)?);
                    m.completed = true;
                    m.quantization_error = Some(agg.mean_error_bound());
                } else {
                    m.abort_reason = Some("every survivor submitted weight 0".into());
                }
                m.survived = agg.survivors.len() as u32;
                m.weight_sum = agg.weight_sum;
                survivors.clone_from(&agg.survivors);
                // Plain means over the survivors' reports (their example counts stay masked);
                // non-finite or out-of-range values are ignored.
                let (mut w, mut loss, mut acc) = (0.0, 0.0, 0.0);
                for id in &survivors {
                    if let Some(r) = reports.get(id)
                        && r.loss.is_finite()
                        && r.loss >= 0.0
                        && (0.0..=1.0).contains(&r.accuracy)
                    {
                        w += 1.0;
                        loss += f64::from(r.loss);
                        acc += f64::from(r.accuracy);
                    }
                }
                if w > 0.0 {
                    m.loss = Some(loss / w);
                    m.accuracy = Some(acc / w);
                }
            }
            ServerState::Aborted(reason) => m.abort_reason = Some(reason.to_string()),
            _ => {}
        }
        m.seconds = start.elapsed().as_secs_f64();
        self.end_round(&cohort, round, &m, &survivors);
        Ok((m, next))
    }

    fn end_round(&self, cohort: &Cohort, round: u32, m: &RoundMetrics, survivors: &[ClientId]) {
        let mut scratch = m.clone();
        for &id in cohort.keys() {
            let end = RoundEnd {
                round,
                completed: m.completed,
                reason: m.abort_reason.clone().unwrap_or_default(),
                included: survivors.contains(&id),
            };
            self.send(
                cohort,
                id,
                ServerFrame {
                    kind: Some(ServerKind::End(end)),
                },
                &mut scratch,
            );
        }
    }
}

/// Runs `f` on the session off the async threads (it may end a stage: signature checks,
/// unmasking).
async fn blocking<F>(mut session: ServerSession, f: F) -> Result<ServerSession>
where
    F: FnOnce(&mut ServerSession) + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        f(&mut session);
        session
    })
    .await
    .map_err(|e| Error::Serve(format!("secure aggregation task failed: {e}")))
}

/// Runs `handle_bytes` (which may sum a multi-megabyte masked input) off the async threads.
async fn handle_blocking(
    mut session: ServerSession,
    id: ClientId,
    bytes: Bytes,
) -> Result<ServerSession> {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = session.handle_bytes(id, &bytes) {
            tracing::debug!(client = %id, error = %e, "message after the end of the round");
        }
        session
    })
    .await
    .map_err(|e| Error::Serve(format!("secure aggregation task failed: {e}")))
}
