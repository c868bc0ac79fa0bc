//! [`Job`] and [`JobBuilder`]: a module, its task inputs and the policy that bounds and verifies them.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::split::{self, MAX_TASKS};
use crate::{Error, Result, proto};

/// A job ready to submit: a WebAssembly module, one input per task, and a policy.
///
/// Build one with [`Job::builder`]; submit it with [`Client::submit`](crate::Client::submit).
/// Cloning is cheap: the module and inputs are shared.
#[derive(Clone, Debug)]
pub struct Job {
    module: Arc<[u8]>,
    tasks: Vec<Arc<[u8]>>,
    policy: proto::Policy,
    args: Vec<String>,
    env: Vec<(String, String)>,
    label: String,
    nonce: Option<Vec<u8>>,
}

impl Job {
    /// Starts describing a job.
    pub fn builder() -> JobBuilder {
        JobBuilder::new()
    }

    /// The WebAssembly module's bytes.
    pub fn module(&self) -> &[u8] {
        &self.module
    }

    /// The module's blob id: hex BLAKE3 of its bytes.
    pub fn module_id(&self) -> String {
        blake3::hash(&self.module).to_hex().to_string()
    }

    /// Number of tasks.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The input of task `index`, if there is such a task.
    pub fn task(&self, index: usize) -> Option<&[u8]> {
        self.tasks.get(index).map(|t| &t[..])
    }

    /// Every task's input, in task order.
    pub fn tasks(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.tasks.iter().map(|t| &t[..])
    }

    pub(crate) fn shared_tasks(&self) -> &[Arc<[u8]>] {
        &self.tasks
    }

    pub(crate) fn shared_module(&self) -> &Arc<[u8]> {
        &self.module
    }

    /// The policy sent with the job (zero fields take the peer's defaults).
    pub fn policy(&self) -> &proto::Policy {
        &self.policy
    }

    /// argv\[1..\] of every task.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Environment variables of every task, in the order given.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The free-form label shown by `List` and status.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The nonce set with [`JobBuilder::nonce`], if any (otherwise a random one is drawn at each submit).
    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }
}

/// Where the module comes from, resolved by [`JobBuilder::build`].
#[derive(Clone, Debug)]
enum ModuleSource {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Where some task inputs come from, resolved in order by [`JobBuilder::build`].
#[derive(Clone, Debug)]
enum TaskSource {
    Bytes(Vec<u8>),
    File(PathBuf),
    Dir(PathBuf),
    Lines(Vec<u8>),
    LinesFile(PathBuf),
    Range { range: Range<u64>, chunk: u64 },
}

/// Describes a [`Job`] step by step.
///
/// Task inputs accumulate in the order the methods are called (`task`, `tasks`, `task_files`,
/// `inputs_dir`, `lines`, `lines_file`, `range` can be mixed). Files are read by
/// [`build`](Self::build), whose errors name the path that could not be read. Policy fields left
/// unset (zero) take the peer's defaults: quorum 2, at most 5 replicas.
///
/// ```
/// use std::time::Duration;
/// let job = spare_sdk::Job::builder()
///     .module_bytes(b"\0asm\x01\0\0\0".to_vec())
///     .range(0..1000, 300)
///     .lines("extra 1\nextra 2\n")
///     .quorum(2)
///     .timeout(Duration::from_secs(30))
///     .label("demo")
///     .build()?;
/// assert_eq!(job.task_count(), 6);
/// assert_eq!(job.task(3), Some(&b"900 1000\n"[..]));
/// assert_eq!(job.task(4), Some(&b"extra 1\n"[..]));
/// # Ok::<(), spare_sdk::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a JobBuilder does nothing until build() is called"]
pub struct JobBuilder {
    module: Option<ModuleSource>,
    tasks: Vec<TaskSource>,
    policy: proto::Policy,
    limits: proto::Limits,
    args: Vec<String>,
    env: Vec<(String, String)>,
    label: String,
    nonce: Option<Vec<u8>>,
}

impl JobBuilder {
    /// An empty description: no module, no tasks, default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// The WebAssembly module (a WASI preview 1 command), given as bytes.
    pub fn module_bytes(mut self, wasm: impl Into<Vec<u8>>) -> Self {
        self.module = Some(ModuleSource::Bytes(wasm.into()));
        self
    }

    /// The WebAssembly module, read from `path` by [`build`](Self::build).
    pub fn module_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.module = Some(ModuleSource::File(path.into()));
        self
    }

    /// Adds one task whose stdin is `input`.
    pub fn task(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.tasks.push(TaskSource::Bytes(input.into()));
        self
    }

    /// Adds one task per input.
    pub fn tasks<I>(mut self, inputs: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Vec<u8>>,
    {
        self.tasks
            .extend(inputs.into_iter().map(|i| TaskSource::Bytes(i.into())));
        self
    }

    /// Adds one task per file, whose input is the file's contents (read by `build`).
    pub fn task_files<I>(mut self, paths: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<PathBuf>,
    {
        self.tasks
            .extend(paths.into_iter().map(|p| TaskSource::File(p.into())));
        self
    }

    /// Adds one task per regular file directly inside `dir`, sorted by file name.
    ///
    /// Symbolic links are followed, subdirectories are skipped, hidden files are included
    /// (see [`split::dir_files`]).
    pub fn inputs_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tasks.push(TaskSource::Dir(dir.into()));
        self
    }

    /// Adds one task per non-blank line of `text`; each input is the line followed by `"\n"`.
    ///
    /// So a guest that reads a line such as `"LO HI\n"` from stdin works unchanged. CRLF line ends
    /// become `"\n"`; empty and whitespace-only lines are skipped (see [`split::line_inputs`]).
    pub fn lines(mut self, text: impl AsRef<[u8]>) -> Self {
        self.tasks.push(TaskSource::Lines(text.as_ref().to_vec()));
        self
    }

    /// Like [`lines`](Self::lines), with the text read from `path` by `build`.
    pub fn lines_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tasks.push(TaskSource::LinesFile(path.into()));
        self
    }

    /// Adds tasks covering `range` in chunks of `chunk` numbers, the last one shorter if needed.
    ///
    /// Each input is `"A B\n"` in decimal, meaning the half-open chunk `A..B`
    /// (see [`split::range_inputs`]). `build` fails with [`Error::InvalidJob`] if `chunk` is 0.
    pub fn range(mut self, range: Range<u64>, chunk: u64) -> Self {
        self.tasks.push(TaskSource::Range { range, chunk });
        self
    }

    /// Distinct peers that must agree bit for bit before a task is verified (peer default: 2).
    pub fn quorum(mut self, quorum: u32) -> Self {
        self.policy.quorum = quorum;
        self
    }

    /// Most replicas a task may get before it is declared inconclusive (peer default: 5).
    pub fn max_replicas(mut self, max_replicas: u32) -> Self {
        self.policy.max_replicas = max_replicas;
        self
    }

    /// Adaptive replication (off unless called): a peer with at least `min_agreed` attestations
    /// that agreed with quorum verdicts at the coordinator, and none that disagreed, may run a
    /// task alone and decide it; `spot_check_per_mille` out of 1,000 of those tasks still get the
    /// full quorum, and a disagreement there ends the peer's trust. Fewer replicas per task, at
    /// the risk of accepting a wrong result from a peer that behaved until it was trusted (see
    /// `docs/trust.md`). Peers refuse `min_agreed` below 10 and a rate above 1,000.
    pub fn adaptive(mut self, min_agreed: u32, spot_check_per_mille: u32) -> Self {
        self.policy.adaptive = Some(proto::Adaptive { min_agreed, spot_check_per_mille: Some(spot_check_per_mille) });
        self
    }

    /// Deterministic instruction budget per replica; running out is a result like any other.
    /// Without one, only the timeout stops a task, and peers run it without fuel metering
    /// (faster: metering costs up to ~1.6x on tight loops).
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.limits.fuel = fuel;
        self
    }

    /// Linear memory a task may grow to, in bytes.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.limits.memory_bytes = bytes;
        self
    }

    /// Wall-clock deadline per replica (rounded up to whole milliseconds). A replica that misses
    /// it is retried elsewhere; it is not a result.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        let ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        let rounded = if Duration::from_millis(ms) < timeout {
            ms.saturating_add(1)
        } else {
            ms
        };
        self.limits.timeout_ms = rounded;
        self
    }

    /// Largest stdout a task may write, in bytes.
    pub fn output_bytes(mut self, bytes: u64) -> Self {
        self.limits.output_bytes = bytes;
        self
    }

    /// How far apart the networks of one task's replicas must be: [`proto::Diversity::Prefix`]
    /// (no two in one /24 or /48), [`proto::Diversity::Wide`] (nor one /16 or /32, stricter) or
    /// [`proto::Diversity::Off`] (distinct keys only). Unset: the origin peer's default (its
    /// `diversity` setting, `prefix` unless set). See `docs/trust.md`.
    pub fn diversity(mut self, diversity: proto::Diversity) -> Self {
        self.policy.set_diversity(diversity);
        self
    }

    /// Higher runs first among jobs competing for the same slots.
    pub fn priority(mut self, priority: i32) -> Self {
        self.policy.priority = priority;
        self
    }

    /// Appends one argument to argv\[1..\] of every task (argv\[0\] is the module id).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments to argv\[1..\] of every task.
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of every task (the last value set for a key wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// A free-form name shown by `List` and status.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// A fixed nonce instead of a fresh random one per submit.
    ///
    /// The JobId is derived from the submitter, the content and the nonce, so resubmitting the
    /// same job with the same nonce names the same job: a retry after a lost reply is safe.
    pub fn nonce(mut self, nonce: impl Into<Vec<u8>>) -> Self {
        self.nonce = Some(nonce.into());
        self
    }

    /// Reads the files named so far and checks the description.
    ///
    /// # Errors
    /// [`Error::NoModule`], [`Error::EmptyModule`], [`Error::NoTasks`], [`Error::Io`] naming an
    /// unreadable path, or [`Error::InvalidJob`] (zero range chunk, quorum above `max_replicas`,
    /// more than [`MAX_TASKS`] tasks).
    pub fn build(self) -> Result<Job> {
        let module = match self.module {
            None => return Err(Error::NoModule),
            Some(ModuleSource::Bytes(bytes)) => bytes,
            Some(ModuleSource::File(path)) => split::read_file(&path)?,
        };
        if module.is_empty() {
            return Err(Error::EmptyModule);
        }
        let mut tasks: Vec<Arc<[u8]>> = Vec::new();
        for source in self.tasks {
            match source {
                TaskSource::Bytes(bytes) => tasks.push(bytes.into()),
                TaskSource::File(path) => tasks.push(split::read_file(&path)?.into()),
                TaskSource::Dir(dir) => {
                    for path in split::dir_files(&dir)? {
                        tasks.push(split::read_file(&path)?.into());
                    }
                }
                TaskSource::Lines(text) => {
                    tasks.extend(split::line_inputs(&text).into_iter().map(Into::into))
                }
                TaskSource::LinesFile(path) => {
                    let text = split::read_file(&path)?;
                    tasks.extend(split::line_inputs(&text).into_iter().map(Into::into));
                }
                TaskSource::Range { range, chunk } => tasks.extend(
                    split::range_inputs(range, chunk)?
                        .into_iter()
                        .map(Into::into),
                ),
            }
            if tasks.len() as u64 > MAX_TASKS {
                return Err(Error::InvalidJob(format!("more than {MAX_TASKS} tasks")));
            }
        }
        if tasks.is_empty() {
            return Err(Error::NoTasks);
        }
        let (quorum, max_replicas) = (self.policy.quorum, self.policy.max_replicas);
        if quorum != 0 && max_replicas != 0 && quorum > max_replicas {
            return Err(Error::InvalidJob(format!(
                "quorum {quorum} exceeds max_replicas {max_replicas}"
            )));
        }
        let mut policy = self.policy;
        policy.limits = Some(self.limits);
        Ok(Job {
            module: module.into(),
            tasks,
            policy,
            args: self.args,
            env: self.env,
            label: self.label,
            nonce: self.nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM: &[u8] = b"\0asm\x01\0\0\0";

    fn inputs(job: &Job) -> Vec<String> {
        job.tasks()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect()
    }

    #[test]
    fn mixes_sources_in_call_order() {
        let job = Job::builder()
            .module_bytes(WASM)
            .task("one")
            .tasks(["two", "three"])
            .range(10..15, 3)
            .lines("x\n\ny\n")
            .build()
            .unwrap();
        assert_eq!(
            inputs(&job),
            ["one", "two", "three", "10 13\n", "13 15\n", "x\n", "y\n"]
        );
        assert_eq!(job.module(), WASM);
        assert_eq!(job.module_id(), blake3::hash(WASM).to_hex().as_str());
    }

    #[test]
    fn policy_fields_are_carried() {
        let job = Job::builder()
            .module_bytes(WASM)
            .task("t")
            .quorum(3)
            .max_replicas(7)
            .fuel(1_000)
            .memory_bytes(1 << 20)
            .timeout(Duration::from_micros(1500))
            .output_bytes(4096)
            .priority(-2)
            .diversity(proto::Diversity::Off)
            .arg("--fast")
            .args(["a", "b"])
            .env("K", "1")
            .env("L", "2")
            .env("K", "3")
            .label("lbl")
            .nonce(vec![9; 16])
            .build()
            .unwrap();
        let p = job.policy();
        assert_eq!((p.quorum, p.max_replicas, p.priority), (3, 7, -2));
        assert_eq!(p.diversity(), proto::Diversity::Off);
        let l = p.limits.unwrap();
        assert_eq!(
            (l.fuel, l.memory_bytes, l.timeout_ms, l.output_bytes),
            (1_000, 1 << 20, 2, 4096)
        );
        assert_eq!(job.args(), ["--fast", "a", "b"]);
        assert_eq!(
            job.env(),
            [("L".into(), "2".into()), ("K".into(), "3".into())]
        );
        assert_eq!(job.label(), "lbl");
        assert_eq!(job.nonce(), Some(&[9u8; 16][..]));
    }

    #[test]
    fn defaults_are_zero() {
        let job = JobBuilder::new()
            .module_bytes(WASM)
            .task("t")
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let p = job.policy();
        assert_eq!((p.quorum, p.max_replicas, p.priority), (0, 0, 0));
        assert_eq!(p.limits.unwrap().timeout_ms, 2000);
        assert!(job.nonce().is_none());
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Job::builder().task("t").build(),
            Err(Error::NoModule)
        ));
        assert!(matches!(
            Job::builder().module_bytes(WASM).build(),
            Err(Error::NoTasks)
        ));
        assert!(matches!(
            Job::builder().module_bytes(WASM).lines("\n \n").build(),
            Err(Error::NoTasks)
        ));
        assert!(matches!(
            Job::builder().module_bytes(WASM).range(5..5, 1).build(),
            Err(Error::NoTasks)
        ));
        assert!(matches!(
            Job::builder().module_bytes(Vec::new()).task("t").build(),
            Err(Error::EmptyModule)
        ));
        assert!(matches!(
            Job::builder().module_bytes(WASM).range(0..5, 0).build(),
            Err(Error::InvalidJob(_))
        ));
        let too_strict = Job::builder()
            .module_bytes(WASM)
            .task("t")
            .quorum(4)
            .max_replicas(3)
            .build();
        assert!(matches!(too_strict, Err(Error::InvalidJob(_))));
        // A quorum with the default max_replicas is the peer's business.
        assert!(
            Job::builder()
                .module_bytes(WASM)
                .task("t")
                .quorum(9)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.wasm");
        let expect_path = |r: Result<Job>, want: &PathBuf| match r {
            Err(Error::Io { path, .. }) => assert_eq!(&path, want),
            other => panic!("expected Io for {}, got {other:?}", want.display()),
        };
        expect_path(
            Job::builder().module_file(&missing).task("t").build(),
            &missing,
        );
        expect_path(
            Job::builder()
                .module_bytes(WASM)
                .task_files([&missing])
                .build(),
            &missing,
        );
        expect_path(
            Job::builder()
                .module_bytes(WASM)
                .lines_file(&missing)
                .build(),
            &missing,
        );
        expect_path(
            Job::builder()
                .module_bytes(WASM)
                .inputs_dir(&missing)
                .build(),
            &missing,
        );
        let err = Job::builder()
            .module_file(&missing)
            .task("t")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("missing.wasm"), "{err}");
    }

    #[test]
    fn files_dirs_and_line_files() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, WASM).unwrap();
        let inputs_dir = dir.path().join("inputs");
        std::fs::create_dir(&inputs_dir).unwrap();
        for (name, body) in [("02", "b"), ("10", "c"), ("01", "a")] {
            std::fs::write(inputs_dir.join(name), body).unwrap();
        }
        std::fs::create_dir(inputs_dir.join("00-subdir")).unwrap();
        let lines = dir.path().join("lines.txt");
        std::fs::write(&lines, "1 2\r\n\n3 4").unwrap();
        let single = dir.path().join("single.bin");
        std::fs::write(&single, [0u8, 1, 2]).unwrap();

        let job = Job::builder()
            .module_file(&module)
            .inputs_dir(&inputs_dir)
            .lines_file(&lines)
            .task_files([&single])
            .build()
            .unwrap();
        assert_eq!(job.module(), WASM);
        assert_eq!(
            inputs(&job),
            ["a", "b", "c", "1 2\n", "3 4\n", "\0\u{1}\u{2}"]
        );
    }
}
