//! Accepting a job at this peer (its origin): check the module and inputs, derive the JobId,
//! make the job durable, then hand it to the coordinator.

use spare_protocol::{BlobId, JobId, JobSpec, PeerId, Policy, SubmitError, derive_job_id};

use super::{JobMeta, Node, unix_ms};
use spare_protocol::peer::host::Members;
use crate::sandbox::ModuleError;
use crate::store::{Op, StoredInput, StoredJob};

/// A job as a submitter sent it, with the policy's defaults already filled in.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The module blob.
    pub module: BlobId,
    /// One input per task.
    pub inputs: Vec<StoredInput>,
    /// Complete policy.
    pub policy: Policy,
    /// argv[1..] of every task.
    pub args: Vec<String>,
    /// Environment of every task.
    pub env: Vec<(String, String)>,
    /// Free-form name.
    pub label: String,
    /// Makes the id unique (16 random bytes are drawn when it is empty).
    pub nonce: Vec<u8>,
    /// Where it came from (the client's address), for the volunteer's allow-list.
    pub from_addr: Option<std::net::IpAddr>,
    /// The submitter key that signed it: the job's owner, and what the per-submitter bound
    /// counts (`None` only for jobs from before owners).
    pub owner: Option<PeerId>,
}

/// Length of the nonce drawn for a submission that came without one.
const NONCE_BYTES: usize = 16;

/// Why a submission was refused, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum SubmitFailure {
    /// Something in the request is wrong (policy, module, shape).
    #[error("{0}")]
    Invalid(String),
    /// A blob the job names is not stored here.
    #[error("{0}")]
    Missing(String),
    /// The job exists already.
    #[error("{0}")]
    Exists(String),
    /// This peer is full.
    #[error("{0}")]
    Full(String),
    /// This peer's volunteer does not serve this submitter, module or quorum.
    #[error("{0}")]
    Refused(String),
    /// This peer failed (disk, database).
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

/// Most bytes of argv and environment together.
pub const MAX_ARGS_BYTES: usize = 64 << 10;

/// Most tasks' inputs written in one store transaction at submission, so one big submission
/// never holds the store's writer for long (finding 11: one 1,000,000-task write stalled every
/// other write of the peer for 25 minutes).
pub const INPUT_CHUNK_TASKS: usize = 4096;
/// Most bytes of inline inputs written in one store transaction at submission (a chunk holds at
/// least one task).
pub const INPUT_CHUNK_BYTES: usize = 8 << 20;

/// What a job accepted here counts against the bounds until it ends: its tasks, and the
/// submitter's jobs and input bytes.
#[derive(Clone, Copy, Debug)]
struct Counted {
    owner: Option<PeerId>,
    tasks: u64,
    input_bytes: u64,
}

impl Node {
    /// Whether a job of `tasks` tasks and `input_bytes` bytes of inputs from `owner` fits this
    /// peer's caps on held tasks, and on jobs running and input bytes held per submitter key.
    fn within_caps(&self, owner: Option<PeerId>, tasks: usize, input_bytes: u64) -> Result<(), SubmitFailure> {
        let bounds = self.config().bounds;
        let held = self.0.held_tasks.load(std::sync::atomic::Ordering::Relaxed);
        if held + tasks as u64 > bounds.max_held_tasks {
            return Err(SubmitFailure::Full(format!(
                "this peer holds {held} tasks of running jobs and takes at most {}; try another peer or later",
                bounds.max_held_tasks
            )));
        }
        if let Some(key) = owner {
            let mine = self.0.submitters.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied().unwrap_or_default();
            if mine.jobs >= bounds.max_jobs_per_submitter {
                return Err(SubmitFailure::Full(format!(
                    "submitter key {} already has {} jobs running here, the most one submitter may have; wait for some to end",
                    key.short(),
                    mine.jobs
                )));
            }
            let max = bounds.max_input_bytes_per_submitter;
            if mine.input_bytes.saturating_add(input_bytes) > max {
                return Err(SubmitFailure::Full(format!(
                    "submitter key {}'s unfinished jobs here hold {} of inputs, and this job's {} would pass the {} one submitter may have held (max_input_bytes_per_submitter); wait for some to end",
                    key.short(),
                    bytesize::ByteSize(mine.input_bytes),
                    bytesize::ByteSize(input_bytes),
                    bytesize::ByteSize(max)
                )));
            }
        }
        Ok(())
    }

    /// Counts a job against the bounds (call with the caps just checked, under the core lock).
    fn count(&self, c: Counted) {
        self.0.held_tasks.fetch_add(c.tasks, std::sync::atomic::Ordering::Relaxed);
        if let Some(key) = c.owner {
            let mut submitters = self.0.submitters.lock().unwrap_or_else(|p| p.into_inner());
            let mine = submitters.entry(key).or_default();
            mine.jobs += 1;
            mine.input_bytes = mine.input_bytes.saturating_add(c.input_bytes);
        }
    }

    /// Gives back what [`Node::count`] counted, for a job not accepted after all.
    fn uncount(&self, c: Counted) {
        self.unhold_tasks(c.tasks);
        if let Some(key) = c.owner {
            super::limits::give_back(&mut self.0.submitters.lock().unwrap_or_else(|p| p.into_inner()), key, c.input_bytes);
        }
    }

    /// Bytes of a job's inputs: inline ones, and each blob named once. `Missing` when a blob is
    /// not stored here.
    async fn input_bytes(&self, inputs: &[StoredInput]) -> Result<u64, SubmitFailure> {
        let mut bytes = 0u64;
        let mut blobs = std::collections::HashSet::new();
        for (i, input) in inputs.iter().enumerate() {
            match input {
                StoredInput::Inline(b) => bytes = bytes.saturating_add(b.len() as u64),
                StoredInput::Blob(id) => {
                    if blobs.insert(*id) {
                        let size = self.store().blobs().size(id).await.ok_or_else(|| {
                            SubmitFailure::Missing(format!("input blob {id} of task {i} is not stored at this peer"))
                        })?;
                        bytes = bytes.saturating_add(size);
                    }
                }
            }
        }
        Ok(bytes)
    }

    /// Writes a job's inputs in chunks of at most [`INPUT_CHUNK_TASKS`] tasks and
    /// [`INPUT_CHUNK_BYTES`] bytes, one transaction each, then the job itself: a restart finds
    /// the job only once every input is durable (inputs without a job are removed at start).
    pub(crate) async fn store_job(&self, id: JobId, stored: StoredJob, inputs: Vec<StoredInput>) -> Result<(), crate::store::StoreError> {
        let mut first = 0u32;
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0usize;
        for input in inputs {
            let size = match &input {
                StoredInput::Inline(b) => b.len(),
                StoredInput::Blob(_) => 32,
            };
            if !chunk.is_empty() && (chunk.len() >= INPUT_CHUNK_TASKS || chunk_bytes + size > INPUT_CHUNK_BYTES) {
                let n = chunk.len() as u32;
                self.store().write(vec![Op::PutInputs { job: id, first, inputs: std::mem::take(&mut chunk) }]).await?;
                first += n;
                chunk_bytes = 0;
            }
            chunk_bytes += size;
            chunk.push(input);
        }
        self.store().write(vec![Op::PutInputs { job: id, first, inputs: chunk }, Op::PutJob(id, stored)]).await
    }

    /// Accepts a job; it is durable when this returns, and no task of it is leased before.
    pub async fn submit(&self, mut job: NewJob) -> Result<JobId, SubmitFailure> {
        let bounds = self.config().bounds;
        let Ok(_checking) = self.0.submits.try_acquire() else {
            return Err(SubmitFailure::Full(format!(
                "this peer is already checking {} submissions; try again shortly",
                bounds.max_pending_submits
            )));
        };
        let donation = &self.config().donation;
        super::donation::admits_submitter(donation, job.from_addr).map_err(|e| SubmitFailure::Refused(e.to_string()))?;
        super::donation::serves(donation, &job.module, &job.policy).map_err(|e| SubmitFailure::Refused(e.to_string()))?;
        if let Some(why @ super::donation::Pause::Disk { .. }) = self.paused() {
            return Err(SubmitFailure::Full(format!("this peer takes no new jobs: {why}")));
        }
        // Checked early to refuse cheaply, and again where the counts are raised.
        self.within_caps(job.owner, job.inputs.len(), 0)?;
        coordinator_room(self.core().coord())?;
        if job.nonce.is_empty() {
            // As the proto promises: two submissions of the same content without a nonce are
            // two jobs.
            let mut nonce = vec![0u8; NONCE_BYTES];
            getrandom::fill(&mut nonce).map_err(|e| SubmitFailure::Internal(anyhow::anyhow!("no randomness for a nonce: {e}")))?;
            job.nonce = nonce;
        }
        let caps = *self.core().coord().caps();
        caps.check(&job.policy, job.inputs.len() as u64).map_err(|e| SubmitFailure::Invalid(e.to_string()))?;
        let arg_bytes: usize =
            job.args.iter().map(String::len).sum::<usize>() + job.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if arg_bytes > MAX_ARGS_BYTES {
            return Err(SubmitFailure::Invalid(format!("args and env take {arg_bytes} bytes; the cap is {MAX_ARGS_BYTES}")));
        }
        if let Some((k, _)) = job.env.iter().find(|(k, _)| k.is_empty() || k.contains('=')) {
            return Err(SubmitFailure::Invalid(format!("environment variable name {k:?} is empty or holds '='")));
        }
        self.check_module(&job.module, job.policy.limits.memory_bytes).await?;
        let input_bytes = self.input_bytes(&job.inputs).await?;
        self.within_caps(job.owner, 0, input_bytes)?;
        let origin = self.peer_id();
        let content_digest = digest(&job);
        let id = derive_job_id(&origin, &content_digest, &job.nonce);
        let spec = JobSpec {
            module: job.module,
            task_count: job.inputs.len() as u32,
            policy: job.policy,
            origin,
            submitted_at_ms: unix_ms(),
            label: job.label,
        };
        let stored = StoredJob {
            spec: spec.clone(),
            args: job.args,
            env: job.env,
            cancelled: false,
            origin_signature: self.0.identity.sign(&crate::wire::signing::job(&id)).to_vec(),
            nonce: job.nonce,
            coordinators: vec![origin],
            owner: job.owner,
            content_digest: Some(content_digest),
        };
        let mut meta = JobMeta::of(&stored);
        meta.submitter = job.owner;
        meta.input_bytes = input_bytes;
        let counted = Counted { owner: job.owner, tasks: job.inputs.len() as u64, input_bytes };
        {
            let core = self.core();
            if core.jobs.contains_key(&id) || !self.0.submitting.insert(id) {
                return Err(SubmitFailure::Exists(format!("job {id} already exists")));
            }
            // The caps again, now that no other submission can slip in between (finding 18:
            // concurrent submits all passed the early check, and one key held 258 of 256).
            // And the coordinator's room, before anything is written (it is checked again as
            // the job goes in, after the write).
            if let Err(e) = self.within_caps(job.owner, job.inputs.len(), input_bytes).and_then(|()| coordinator_room(core.coord())) {
                self.0.submitting.remove(&id);
                return Err(e);
            }
            self.count(counted);
            drop(core);
        }
        // Durable before the coordinator hears of it: no task is leased whose input is not
        // stored (finding 11: tasks of a write still in progress were leased 3,722 times and
        // failed with "no stored input").
        let written = self.store_job(id, stored, job.inputs).await;
        // Other coordinators, so the job outlives this peer: offered to the live peers that may
        // coordinate; the list settles (and the job is announced) once they answered.
        let members = self.members();
        let candidates: Vec<PeerId> = members.live().into_iter().filter(|p| members.may_coordinate(p)).collect();
        // Subscribed before the offer goes out, so its settling is not missed.
        let mut announced = self.0.announced.subscribe();
        let accepted = written.map_err(|e| SubmitFailure::Internal(anyhow::anyhow!(e).context("storing the job"))).and_then(|()| {
            self.with_hosts(|c, now| {
                c.hosts.submit(id, spec, vec![origin], 0).map_err(|e| match e {
                    SubmitError::Policy(p) => SubmitFailure::Invalid(p.to_string()),
                    SubmitError::Duplicate(_) => SubmitFailure::Exists(e.to_string()),
                    SubmitError::Full(_) => SubmitFailure::Full(e.to_string()),
                })?;
                c.jobs.insert(id, meta);
                c.hosts.offer(&id, &candidates);
                c.hosts.look_at_roles(&id, now);
                Ok(())
            })
        });
        self.0.submitting.remove(&id);
        if let Err(e) = accepted {
            // Not accepted: forget what it counted, and whatever of it was written (unless the
            // job is held already, adopted meanwhile: that one stays).
            self.uncount(counted);
            if !matches!(e, SubmitFailure::Exists(_)) {
                drop(self.store().write(vec![Op::DeleteJob(id)]));
            }
            return Err(e);
        }
        self.0.metrics.jobs_accepted.inc();
        tracing::info!(job = %id, tasks = counted.tasks, "job accepted");
        // Answered once the list settled and is durable (the job is announced then): a job
        // accepted here outlives this peer from the moment the submitter hears of it.
        let settled = || self.core().hosts.host(&id).is_none_or(|h| !h.is_adopting());
        let wait = std::time::Duration::from_millis(2 * spare_protocol::peer::replication::ADOPT_TIMEOUT_MS);
        let _ = tokio::time::timeout(wait, async {
            while !settled() {
                if announced.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.0.work.notify_one();
        Ok(id)
    }

    /// The module must be stored here, within the size cap, and valid under the ABI. It is
    /// compiled now, so the first replica does not pay for it.
    /// Checks that module `id` is stored, within the cap, one the sandbox runs, and that a task
    /// memory limit of `memory_limit` bytes leaves room for the memory it starts with (else every
    /// task would fail `memory limit`: refused here, whatever client sent it).
    async fn check_module(&self, id: &BlobId, memory_limit: u64) -> Result<(), SubmitFailure> {
        let size = self
            .store()
            .blobs()
            .size(id)
            .await
            .ok_or_else(|| SubmitFailure::Missing(format!("module {id} is not stored at this peer; upload it with BlobService.Put first")))?;
        let max = self.config().max_module_bytes;
        if size > max as u64 {
            return Err(SubmitFailure::Invalid(format!("module is {size} bytes; this peer's cap is {max}")));
        }
        self.prepare_module(id).await.map_err(|e| match e {
            PrepareError::Module(e) => SubmitFailure::Invalid(format!("module {}: {e}", id.short())),
            PrepareError::Other(e) => SubmitFailure::Internal(e),
        })?;
        let initial = match self.sandbox().initial_memory(id) {
            Some(bytes) => bytes,
            // Evicted since: read it again.
            None => {
                let wasm = self.store().blobs().read(id).await.map_err(|e| SubmitFailure::Internal(e.into()))?;
                crate::sandbox::initial_memory_bytes(&wasm)
            }
        };
        if memory_limit < initial {
            return Err(SubmitFailure::Invalid(format!(
                "the task memory limit ({memory_limit} bytes) is below the {initial} bytes module {} starts with, so every task would fail; ask for at least {} MiB",
                id.short(),
                initial.div_ceil(1 << 20)
            )));
        }
        Ok(())
    }

    /// Compiles a stored module into the sandbox, once.
    pub(crate) async fn prepare_module(&self, id: &BlobId) -> Result<(), PrepareError> {
        if self.sandbox().is_prepared(id) {
            return Ok(());
        }
        let _one_at_a_time = self.0.prepare.lock().await;
        if self.sandbox().is_prepared(id) {
            return Ok(());
        }
        let wasm = self.store().blobs().read(id).await.map_err(|e| PrepareError::Other(e.into()))?;
        let sandbox = self.sandbox().clone();
        let id = *id;
        tokio::task::spawn_blocking(move || sandbox.prepare(id, &wasm).map(|_| ()))
            .await
            .map_err(|e| PrepareError::Other(anyhow::anyhow!("compile task failed: {e}")))?
            .map_err(PrepareError::Module)
    }
}

/// Refuses a job when the coordinator holds its most unfinished jobs (as its `submit` would,
/// but before anything is written).
fn coordinator_room(coord: &spare_protocol::Coordinator) -> Result<(), SubmitFailure> {
    let max = coord.max_jobs();
    if coord.open_jobs() >= max {
        return Err(SubmitFailure::Full(SubmitError::Full(max).to_string()));
    }
    Ok(())
}

/// Why a module could not be made ready.
#[derive(Debug)]
pub(crate) enum PrepareError {
    /// The module breaks the ABI.
    Module(ModuleError),
    /// The peer failed.
    Other(anyhow::Error),
}

/// A digest of everything that defines the job's results, and of its owner (its id is derived
/// from it, so a coordinator that checks the id checks the owner it was told).
pub fn digest(job: &NewJob) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("spare.v1 job content");
    // Jobs from before owners keep the ids they had.
    if let Some(owner) = &job.owner {
        h.update(b"owner");
        h.update(owner.as_bytes());
    }
    h.update(job.module.as_bytes());
    h.update(&postcard::to_stdvec(&job.policy).unwrap_or_default());
    h.update(&postcard::to_stdvec(&(&job.args, &job.env)).unwrap_or_default());
    h.update(&(job.inputs.len() as u64).to_le_bytes());
    for input in &job.inputs {
        match input {
            StoredInput::Inline(b) => {
                h.update(&[0]);
                h.update(blake3::hash(b).as_bytes());
            }
            StoredInput::Blob(id) => {
                h.update(&[1]);
                h.update(id.as_bytes());
            }
        }
    }
    // Not in the policy's postcard form; last, after the counted inputs. Jobs from before a job
    // carried it keep the ids they had.
    if let Some(d) = job.policy.diversity {
        h.update(b"diversity");
        h.update(&[crate::wire::convert::diversity_pb(Some(d)) as u8]);
    }
    *h.finalize().as_bytes()
}
