//! The gRPC service: authenticates each `Join` stream, keeps the registry of connected
//! clients, and turns their frames into events for the round runner.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_proto::v1::client_frame::Kind as ClientKind;
use aegis_proto::v1::federation_server::Federation;
use aegis_proto::v1::server_frame::Kind as ServerKind;
use aegis_proto::v1::{ClientFrame, ServerFrame, Welcome};
use aegis_secagg::ClientId;
use aegis_transport::PeerInfo;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Identity, TokenTable, authenticate};

/// Frames queued for one client at most besides the model's chunks (which are slices of one
/// shared buffer, so queueing them costs no memory); a client that lets its queue fill up is
/// too slow and is dropped from the round (a dropout; its connection stays for later rounds).
pub(crate) const OUTBOUND_QUEUE: usize = 64;

/// Client-supplied text for a log line: at most 200 characters, control characters escaped.
pub(crate) fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// What the service tells the round runner.
#[derive(Debug)]
pub(crate) enum Event {
    /// A frame from a connected client (`seq` names the connection).
    Frame {
        id: ClientId,
        seq: u64,
        frame: ClientFrame,
        len: usize,
    },
    /// A client's connection closed.
    Closed { id: ClientId, seq: u64 },
}

/// A connected client.
pub(crate) struct Conn {
    pub(crate) seq: u64,
    pub(crate) tx: mpsc::Sender<Result<ServerFrame, Status>>,
    pub(crate) identity: Identity,
    /// Dropped with the connection's entry (replaced by a reconnect, or at shutdown): its
    /// reader stops reading.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// State the service and the runner share.
pub(crate) struct Shared {
    conns: Mutex<HashMap<ClientId, Conn>>,
    pub(crate) events: mpsc::Sender<Event>,
    next_seq: AtomicU64,
    tokens: Option<TokenTable>,
    hello_timeout: Duration,
    max_clients: usize,
    /// The job running now (empty when idle), for `Welcome`.
    job_id: Mutex<String>,
    /// Outbound queue length of new connections: room for the running job's model chunks.
    queue: AtomicUsize,
    /// Clients refused from now on (the admin service's revocations).
    revoked: Mutex<HashSet<ClientId>>,
}

/// Why a frame could not be queued for a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// No such connection any more (closed, or replaced by a reconnect).
    Gone,
    /// Its queue is full.
    Slow,
}

impl Shared {
    pub(crate) fn new(
        events: mpsc::Sender<Event>,
        tokens: Option<TokenTable>,
        hello_timeout: Duration,
        max_clients: usize,
        revoked: HashSet<ClientId>,
    ) -> Shared {
        Shared {
            conns: Mutex::new(HashMap::new()),
            events,
            next_seq: AtomicU64::new(1),
            tokens,
            hello_timeout,
            max_clients,
            job_id: Mutex::new(String::new()),
            queue: AtomicUsize::new(OUTBOUND_QUEUE),
            revoked: Mutex::new(revoked),
        }
    }

    /// Names the job that runs now (`""` when idle) and makes new connections' queues large
    /// enough for `model_chunks` model chunks (queues never shrink). Connections made earlier
    /// keep their queue, so a server that runs several jobs sizes queues for its largest
    /// possible model before clients connect (see `serve`).
    pub(crate) fn set_job(&self, job_id: &str, model_chunks: usize) {
        *lock(&self.job_id) = job_id.to_string();
        self.queue
            .fetch_max(OUTBOUND_QUEUE + model_chunks, Ordering::Relaxed);
    }

    /// Refuses `id` from now on and closes its stream if it is connected (it is then a
    /// dropout of the round in progress). Returns whether a stream was closed.
    pub(crate) fn revoke(&self, id: ClientId) -> bool {
        lock(&self.revoked).insert(id);
        let mut conns = self.conns();
        match conns.remove(&id) {
            Some(conn) => {
                let _ = conn
                    .tx
                    .try_send(Ok(goodbye(false, "this client was revoked")));
                true
            }
            None => false,
        }
    }

    /// The revoked clients.
    pub(crate) fn revoked(&self) -> Vec<ClientId> {
        let mut v: Vec<ClientId> = lock(&self.revoked).iter().copied().collect();
        v.sort();
        v
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Conn>> {
        lock(&self.conns)
    }

    /// Registers a connection; a newer connection of the same client replaces the older one
    /// (whose stream then ends).
    fn register(
        &self,
        identity: Identity,
        tx: mpsc::Sender<Result<ServerFrame, Status>>,
    ) -> Result<(u64, tokio::sync::oneshot::Receiver<()>), Status> {
        let mut conns = self.conns();
        if conns.len() >= self.max_clients && !conns.contains_key(&identity.id) {
            return Err(Status::resource_exhausted(
                "the server has its maximum of clients",
            ));
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let id = identity.id;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let conn = Conn {
            seq,
            tx,
            identity,
            _stop: stop,
        };
        if conns.insert(id, conn).is_some() {
            tracing::info!(client = %id, "client reconnected; the older connection is closed");
        }
        Ok((seq, stopped))
    }

    fn unregister(&self, id: ClientId, seq: u64) {
        let mut conns = self.conns();
        if conns.get(&id).is_some_and(|c| c.seq == seq) {
            conns.remove(&id);
        }
    }

    /// The connected clients: id, connection, roster entry.
    pub(crate) fn snapshot(&self) -> Vec<(ClientId, u64, aegis_secagg::messages::RosterEntry)> {
        self.conns()
            .iter()
            .map(|(id, c)| (*id, c.seq, c.identity.entry.clone()))
            .collect()
    }

    /// Number of connected clients.
    pub(crate) fn connected(&self) -> usize {
        self.conns().len()
    }

    /// Queues `frame` for connection `seq` of `id`, without waiting.
    pub(crate) fn send(&self, id: ClientId, seq: u64, frame: ServerFrame) -> Result<(), SendError> {
        let conns = self.conns();
        let conn = conns
            .get(&id)
            .filter(|c| c.seq == seq)
            .ok_or(SendError::Gone)?;
        conn.tx.try_send(Ok(frame)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Slow,
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
    }

    /// Says goodbye on every stream and ends it (clients see their stream complete).
    pub(crate) fn close_all(&self, job_finished: bool, reason: &str) {
        let mut conns = self.conns();
        for conn in conns.values() {
            let _ = conn.tx.try_send(Ok(goodbye(job_finished, reason)));
        }
        conns.clear();
    }
}

fn goodbye(job_finished: bool, reason: &str) -> ServerFrame {
    ServerFrame {
        kind: Some(ServerKind::Goodbye(aegis_proto::v1::Goodbye {
            job_finished,
            reason: reason.to_string(),
        })),
    }
}

/// Locks `m`. Every critical section here is a single insert, remove or read, so a panic
/// while holding the lock cannot leave the data half-updated: a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `Federation` service.
pub(crate) struct FederationService {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Federation for FederationService {
    type JoinStream = ReceiverStream<Result<ServerFrame, Status>>;

    async fn join(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let shared = &self.shared;
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let remote = peer.as_ref().map(|p| p.remote_addr);
        let identity = match authenticate(peer.as_ref(), request.metadata(), shared.tokens.as_ref())
        {
            Ok(id) => id,
            Err(status) => {
                tracing::warn!(?remote, reason = status.message(), "authentication failed");
                return Err(status);
            }
        };
        if lock(&shared.revoked).contains(&identity.id) {
            tracing::warn!(client = %identity.id, ?remote, "a revoked client was refused");
            return Err(Status::permission_denied("this client was revoked"));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(shared.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello in time"))??;
        match first.and_then(|f| f.kind) {
            Some(ClientKind::Hello(h)) if h.protocol == aegis_proto::PROTOCOL => {
                tracing::info!(client = %identity.id, method = ?identity.method, agent = %printable(&h.agent), ?remote, "client joined");
            }
            Some(ClientKind::Hello(h)) => {
                return Err(Status::failed_precondition(format!(
                    "protocol {} is not supported (this server speaks {})",
                    h.protocol,
                    aegis_proto::PROTOCOL
                )));
            }
            _ => return Err(Status::invalid_argument("the first frame must be Hello")),
        }
        let id = identity.id;
        let (tx, rx) = mpsc::channel(shared.queue.load(Ordering::Relaxed));
        let welcome = ServerFrame {
            kind: Some(ServerKind::Welcome(Welcome {
                client_id: id.0,
                protocol: aegis_proto::PROTOCOL,
                job_id: lock(&shared.job_id).clone(),
            })),
        };
        tx.try_send(Ok(welcome))
            .map_err(|_| Status::internal("queue"))?;
        let (seq, mut stopped) = shared.register(identity, tx)?;
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    // Replaced by a newer connection of this client, or shutting down.
                    _ = &mut stopped => break,
                };
                match next {
                    Ok(Some(frame)) => {
                        let len = frame.encoded_len();
                        let ev = Event::Frame {
                            id,
                            seq,
                            frame,
                            len,
                        };
                        if shared.events.send(ev).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(client = %id, %status, "stream error");
                        break;
                    }
                }
            }
            shared.unregister(id, seq);
            let _ = shared.events.send(Event::Closed { id, seq }).await;
            tracing::info!(client = %id, "client left");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
