//! [`Client`]: a connection to one peer, and the calls that follow a job after it is submitted.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};

use crate::proto::{
    self, blob_service_client::BlobServiceClient, job_service_client::JobServiceClient,
    peer_service_client::PeerServiceClient,
};
use crate::identity::ClientIdentity;
use crate::{Error, Event, JobId, JobStatus, Result, TaskResult};

/// Largest gRPC message the client sends or accepts: 64 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most jobs [`Client::find_job`] looks through (the peer's cap on a list).
const MAX_LISTED: u32 = 1000;

/// How long [`Client::connect`] waits for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval of HTTP/2 keepalive pings, and how long to wait for their answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection to one Spare peer, which accepts jobs and answers for every job it coordinates.
///
/// Cloning is cheap and clones share the connection; every method takes `&self`, so one client can
/// serve many tasks at once.
#[derive(Clone, Debug)]
pub struct Client {
    addr: String,
    /// The coordinators each job's status last named (addresses), shared by clones: where to
    /// carry on when this peer stops answering.
    pub(crate) known: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>>,
    pub(crate) jobs: JobServiceClient<Channel>,
    pub(crate) blobs: BlobServiceClient<Channel>,
    pub(crate) peers: PeerServiceClient<Channel>,
    /// The key Submit and Cancel are signed with; `None`: [`ClientIdentity::load_default`] at
    /// the first signed call.
    identity: Option<ClientIdentity>,
    /// The peer's id as its `Info` named it, asked once: signatures name their receiver.
    receiver: std::sync::Arc<tokio::sync::OnceCell<[u8; 32]>>,
}

/// An address as given (`[http[s]://]host:port[@PEERID]`): its `host:port`, the PeerId pinned by
/// it, and whether `https://` asked for TLS.
pub(crate) fn parse_target(addr: &str) -> Result<(String, Option<[u8; 32]>, bool)> {
    let trimmed = addr.trim();
    let lower = trimmed.to_ascii_lowercase();
    let https = lower.starts_with("https://");
    let rest = if https || lower.starts_with("http://") {
        &trimmed[trimmed.find("://").map_or(0, |i| i + 3)..]
    } else {
        trimmed
    };
    let rest = rest.trim_end_matches('/');
    let (target, pinned) = match rest.rsplit_once('@') {
        Some((target, id)) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(id, &mut out).map_err(|_| Error::Address {
                addr: addr.to_string(),
                reason: format!("{id:?} after '@' is not a PeerId (64 hex characters, as `spare peer` prints it)"),
            })?;
            (target, Some(out))
        }
        None => (rest, None),
    };
    Ok((target.to_string(), pinned, https))
}

impl Client {
    /// Connects to the peer at `addr`: `host:port`, optionally `http://` or `https://` before
    /// it and `@PEERID` after it.
    ///
    /// A peer on this machine (a loopback address or `localhost`) is spoken to in plaintext unless
    /// a PeerId is given or `https://` asked; any other over TLS 1.3, checking that the peer's
    /// certificate carries the PeerId given, else the one pinned for the address in
    /// [`known_peers`](crate::known_peers) (trust on first use: the first PeerId met there is
    /// pinned).
    ///
    /// # Errors
    /// [`Error::Connect`] when the address is malformed or nothing answers there;
    /// [`Error::PeerIdentity`] when the peer there is not the one expected.
    pub async fn connect(addr: impl Into<String>) -> Result<Client> {
        let addr = addr.into();
        let (target, pinned, https) = parse_target(&addr)?;
        let connect_err = |source| Error::Connect {
            addr: addr.clone(),
            source,
        };
        let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
        let endpoint = Endpoint::from_shared(format!("http://{target}"))
            .map_err(connect_err)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Watch and Results streams can sit idle for hours: keep NATs and proxies from
            // dropping them, and notice a dead peer.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if pinned.is_none() && !https && crate::tls::is_loopback_host(host) {
            let channel = endpoint.connect().await.map_err(connect_err)?;
            return Ok(Client::from_channel(channel, addr));
        }
        let expected = pinned.or_else(|| crate::known_peers::lookup(&target));
        let (config, seen) = crate::tls::client_config(expected, None)
            .map_err(|e| Error::Protocol(format!("TLS configuration: {e}")))?;
        let met = |seen: &crate::tls::SeenPeer| seen.lock().ok().and_then(|s| *s);
        let channel = match endpoint
            .connect_with_connector(crate::tls::connector(std::sync::Arc::new(config)))
            .await
        {
            Ok(channel) => channel,
            Err(e) => {
                if let (Some(want), Some(got)) = (expected, met(&seen))
                    && want != got
                {
                    let pinned_by = match (pinned, crate::known_peers::path()) {
                        (Some(_), _) | (None, None) => "the address given (ADDR@PEERID)".to_string(),
                        (None, Some(p)) => format!(
                            "{} (pinned when first met; if its identity really changed, remove that line)",
                            p.display()
                        ),
                    };
                    return Err(Error::PeerIdentity(format!(
                        "the peer at {target} presented PeerId {}, but {pinned_by} expects {}",
                        hex::encode(got),
                        hex::encode(want)
                    )));
                }
                return Err(connect_err(e));
            }
        };
        let id = met(&seen).ok_or_else(|| Error::Protocol("TLS connected without a peer certificate".into()))?;
        if expected.is_none() {
            crate::known_peers::remember(&target, &id)?;
        }
        let client = Client::from_channel(channel, addr);
        // The TLS handshake proved who answers: signatures name that peer.
        let _ = client.receiver.set(id);
        Ok(client)
    }

    /// Wraps an already built channel (an in-process server, custom TLS...); `addr` is only
    /// reported by [`addr`](Self::addr).
    pub fn from_channel(channel: Channel, addr: impl Into<String>) -> Client {
        Client {
            addr: addr.into(),
            known: Default::default(),
            jobs: JobServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            blobs: BlobServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            peers: PeerServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            identity: None,
            receiver: Default::default(),
        }
    }

    /// Signs this client's Submit and Cancel calls with `identity` instead of the default key
    /// (`$SPARE_IDENTITY`, else `client.key` in the config directory, made on first use).
    pub fn with_identity(mut self, identity: ClientIdentity) -> Client {
        self.identity = Some(identity);
        self
    }

    /// The key this client signs with (the default one is read, or made, now).
    ///
    /// # Errors
    /// [`Error::Identity`] when the key file cannot be read or made.
    pub fn identity(&self) -> Result<ClientIdentity> {
        match &self.identity {
            Some(id) => Ok(id.clone()),
            None => ClientIdentity::load_default(),
        }
    }

    /// The PeerId of the peer this client talks to (asked with `Info` once).
    pub(crate) async fn receiver(&self) -> Result<[u8; 32]> {
        self.receiver
            .get_or_try_init(|| async {
                let info = self.info().await?;
                let mut id = [0u8; 32];
                hex::decode_to_slice(info.peer_id.trim(), &mut id).map_err(|_| {
                    Error::Protocol(format!(
                        "the peer named itself {:?}, not a 64-character hex PeerId",
                        info.peer_id
                    ))
                })?;
                Ok(id)
            })
            .await
            .copied()
    }

    /// The peer's address as given to [`connect`](Self::connect).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Status of a job: its state, task counts, policy and what it waits for.
    pub async fn status(&self, job: &JobId) -> Result<JobStatus> {
        self.get(job, false).await
    }

    /// [`status`](Self::status) with every task's state, outcome and failure line in
    /// `task_list` (the first 100,000 tasks; read a larger job's with
    /// [`results`](Self::results)).
    pub async fn status_with_tasks(&self, job: &JobId) -> Result<JobStatus> {
        self.get(job, true).await
    }

    async fn get(&self, job: &JobId, include_tasks: bool) -> Result<JobStatus> {
        let request = proto::GetJobRequest {
            job_id: job.to_string(),
            include_tasks,
        };
        let status = JobStatus::try_from(self.jobs.clone().get(request).await?.into_inner())?;
        if !status.coordinators.is_empty()
            && let Ok(mut known) = self.known.lock()
        {
            known.insert(status.job_id.to_string(), status.coordinators.clone());
        }
        Ok(status)
    }

    /// Follows a job: a snapshot first, then an event per finished task, then `finished`, after
    /// which the stream ends.
    pub async fn watch(
        &self,
        job: &JobId,
    ) -> Result<impl Stream<Item = Result<Event>> + Send + Unpin + 'static> {
        let request = proto::WatchRequest {
            job_id: job.to_string(),
        };
        let stream = self.jobs.clone().watch(request).await?.into_inner();
        // Empty events (none are sent today) are skipped.
        Ok(stream.filter_map(|item| async move {
            match item {
                Ok(e) => Event::from_proto(e).transpose(),
                Err(status) => Some(Err(Error::from(status))),
            }
        })
        .boxed())
    }

    /// The results final now, in task order, without waiting for the rest.
    pub async fn results_now(
        &self,
        job: &JobId,
    ) -> Result<impl Stream<Item = Result<TaskResult>> + Send + Unpin + 'static> {
        self.results_now_from(job, 0).await
    }

    /// Results of tasks with index `>= from_index`, in task order, waiting for the job to end
    /// (to resume a stream that broke off).
    pub async fn results_from(
        &self,
        job: &JobId,
        from_index: u32,
    ) -> Result<impl Stream<Item = Result<TaskResult>> + Send + Unpin + 'static> {
        self.results_request(job, from_index, true).await
    }

    /// The results final now of tasks with index `>= from_index`, in task order, skipping
    /// tasks not final yet.
    pub async fn results_now_from(
        &self,
        job: &JobId,
        from_index: u32,
    ) -> Result<impl Stream<Item = Result<TaskResult>> + Send + Unpin + 'static> {
        self.results_request(job, from_index, false).await
    }

    async fn results_request(
        &self,
        job: &JobId,
        from_index: u32,
        wait: bool,
    ) -> Result<impl Stream<Item = Result<TaskResult>> + Send + Unpin + 'static> {
        let request = proto::ResultsRequest {
            job_id: job.to_string(),
            from_index,
            no_wait: !wait,
        };
        let stream = self.jobs.clone().results(request).await?.into_inner();
        Ok(stream.map(|item| item.map_err(Error::from).and_then(checked)))
    }

    /// Waits until the job ends (completed, failed or cancelled) and returns its final status.
    ///
    /// Follows [`watch`](Self::watch). If the stream ends without a `finished` event, asks for the
    /// status once more and returns it if final.
    ///
    /// # Errors
    /// [`Error::Protocol`] if the stream ended while the job was still running, or any error of
    /// the calls made.
    pub(crate) async fn wait_here(&self, job: &JobId) -> Result<JobStatus> {
        let mut events = self.watch(job).await?;
        while let Some(event) = events.next().await {
            match event? {
                Event::Finished(status) => return Ok(status),
                Event::Snapshot(status) if status.is_final() => return Ok(status),
                _ => {}
            }
        }
        let status = self.status(job).await?;
        if status.is_final() {
            Ok(status)
        } else {
            Err(Error::Protocol(format!(
                "the watch stream of job {job} ended before the job finished"
            )))
        }
    }

    /// Cancels a job; returns its status afterwards. Only the job's owner (the key that
    /// submitted it) may: anyone else gets `PERMISSION_DENIED`. A job that has ended keeps its
    /// final state.
    pub async fn cancel(&self, job: &JobId) -> Result<JobStatus> {
        let mut request = proto::CancelRequest {
            job_id: job.to_string(),
            ..Default::default()
        };
        let receiver = self.receiver().await?;
        self.identity()?.sign_cancel(&mut request, &receiver)?;
        JobStatus::try_from(self.jobs.clone().cancel(request).await?.into_inner())
    }

    /// Jobs the peer knows, newest first: at most `limit` (0 means the peer's default of 100).
    pub async fn list(&self, limit: u32) -> Result<Vec<JobStatus>> {
        let request = proto::ListJobsRequest { limit };
        let jobs = self.jobs.clone().list(request).await?.into_inner().jobs;
        jobs.into_iter().map(JobStatus::try_from).collect()
    }

    /// The job a job id or a unique prefix of one names (as `spare` and peer logs print them
    /// shortened, e.g. `3f2a9c01`), among the jobs this peer holds (its [`list`](Self::list),
    /// up to 1,000).
    ///
    /// # Errors
    /// [`Error::UnknownJob`] for something that is not hex, or when no job or more than one
    /// starts with it.
    pub async fn find_job(&self, id_or_prefix: &str) -> Result<JobId> {
        let prefix = id_or_prefix.trim().trim_end_matches(['…', '.']).to_ascii_lowercase();
        if let Ok(id) = prefix.parse::<JobId>() {
            return Ok(id);
        }
        if prefix.is_empty() || prefix.len() > crate::ID_HEX_LEN || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::UnknownJob(format!(
                "{id_or_prefix:?} is not a job id: give the one `spare submit` printed, or a unique start of it (hex digits)"
            )));
        }
        let jobs = self.list(MAX_LISTED).await?;
        let found: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).filter(|id| id.starts_with(&prefix)).collect();
        match found.as_slice() {
            [one] => one.parse(),
            [] => Err(Error::UnknownJob(format!(
                "no job held at {} starts with {prefix}; give the whole job id, or ask a peer that coordinates it",
                self.addr
            ))),
            many => Err(Error::UnknownJob(format!(
                "{prefix} is the start of {} jobs ({}…); give more of the id",
                many.len(),
                many.iter().take(3).map(|id| id.get(..prefix.len() + 4).unwrap_or(id)).collect::<Vec<_>>().join("…, ")
            ))),
        }
    }

    /// What the peer says about itself.
    pub async fn info(&self) -> Result<proto::PeerInfo> {
        Ok(self
            .peers
            .clone()
            .info(proto::InfoRequest {})
            .await?
            .into_inner())
    }

    /// The peers this peer knows.
    pub async fn peers(&self) -> Result<Vec<proto::PeerInfo>> {
        Ok(self
            .peers
            .clone()
            .peers(proto::PeersRequest {})
            .await?
            .into_inner()
            .peers)
    }
}

/// A result whose verified output hashes to the agreed hash: a peer that stored or sent other
/// bytes (known gap 15) is caught here rather than written out as a verified output.
fn checked(r: proto::TaskResult) -> Result<TaskResult> {
    let r = TaskResult::from(r);
    let hash = blake3::hash(&r.output).to_hex();
    if r.is_verified() && !hash.as_str().eq_ignore_ascii_case(&r.output_hash) {
        return Err(Error::Protocol(format!(
            "task {}: the peer served {} bytes of output that do not hash to the verified result {}",
            r.index,
            r.output.len(),
            r.output_hash
        )));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_a_host_a_peer_and_a_scheme() {
        let id = "ab".repeat(32);
        assert_eq!(parse_target("127.0.0.1:7070").unwrap(), ("127.0.0.1:7070".into(), None, false));
        assert_eq!(parse_target(" http://[::1]:7070/ ").unwrap(), ("[::1]:7070".into(), None, false));
        assert_eq!(
            parse_target(&format!("https://peer.example:7070@{id}")).unwrap(),
            ("peer.example:7070".into(), Some([0xab; 32]), true)
        );
        assert!(matches!(parse_target("10.0.0.1:7070@nope"), Err(Error::Address { .. })));
    }

    #[test]
    fn a_verified_output_must_hash_to_its_result() {
        let verified = |output: &[u8]| proto::TaskResult {
            index: 3,
            state: proto::TaskState::Verified as i32,
            output: output.to_vec(),
            output_hash: blake3::hash(b"42\n").to_hex().to_string(),
            ..Default::default()
        };
        assert_eq!(checked(verified(b"42\n")).map(|r| r.output).ok(), Some(b"42\n".to_vec()));
        let empty = checked(verified(b"")).map(|_| ()).unwrap_err().to_string();
        assert!(empty.contains("task 3: the peer served 0 bytes"), "{empty}");
        let failed = proto::TaskResult { state: proto::TaskState::Failed as i32, ..verified(b"") };
        assert!(checked(failed).is_ok(), "only verified outputs are checked");
    }

    /// Compile-time check: the streams outlive the client and id they came from and can be
    /// moved to another task.
    #[allow(dead_code)]
    async fn streams_are_static_and_send(client: Client, id: JobId) -> Result<()> {
        let events = client.watch(&id).await?;
        let results = client.results(&id).await?;
        drop((client, id));
        tokio::spawn(async move { (events.count().await, results.count().await) });
        Ok(())
    }

    #[tokio::test]
    async fn malformed_address_is_a_connect_error() {
        match Client::connect("not a uri at all").await {
            Err(Error::Connect { addr, .. }) => assert_eq!(addr, "not a uri at all"),
            other => panic!("expected Connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        // Bind then drop a listener to get a local port where nothing listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        match Client::connect(addr.clone()).await {
            Err(Error::Connect { addr: got, .. }) => assert_eq!(got, addr),
            other => panic!("expected Connect error, got {other:?}"),
        }
    }
}

