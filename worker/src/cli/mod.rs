//! The `spare` command line: `peer` runs a peer; `submit`, `status`, `jobs`, `cancel`,
//! `results`, `logs` and `peers` talk to one over gRPC through the SDK (signing submits and
//! cancels with the client key `whoami` prints); `demo` runs a whole job
//! on an embedded mesh; `completions` prints a shell's completion script.

mod check;
mod demo;
mod jobs;
mod logs;
mod new;
mod peer;
mod peers;
mod progress;
mod results;
mod sim;
mod status;
mod submit;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The peer the client commands talk to unless `--peer` or `SPARE_PEER` says otherwise.
pub const DEFAULT_PEER: &str = "127.0.0.1:7070";

/// Spare: volunteer computing with WebAssembly tasks, verified by redundant execution.
#[derive(Parser, Debug)]
#[command(name = "spare", version, about, propagate_version = true, after_help = "Examples:
  spare demo                                                   # an example job on an embedded mesh
  spare peer --data-dir /tmp/spare-a &                         # a peer on 127.0.0.1:7070
  spare submit examples/wasm/primes.wasm --inputs-dir DIR --quorum 1 --wait
  spare jobs                                                   # what the peer holds

Client commands talk to 127.0.0.1:7070 unless --peer or SPARE_PEER says otherwise: in plaintext
to this machine, over TLS to any other (--peer ADDR@PEERID checks the peer's id; otherwise the
first id met at an address is pinned in ~/.config/spare/known_peers).")]
struct Cli {
    /// The client key that signs submits and cancels (the jobs' owner); made on first use.
    /// Default: $XDG_CONFIG_HOME/spare/client.key, else ~/.config/spare/client.key.
    #[arg(long, global = true, env = "SPARE_IDENTITY", value_name = "FILE")]
    identity: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The key file `--identity` (or `SPARE_IDENTITY`) names, for the client commands.
static IDENTITY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

// Every command's `--help` ends with examples (`after_help`), kept here beside each other.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a peer: serve the gRPC API, run tasks in local slots, keep jobs in a data directory.
    #[command(after_help = "Examples:
  spare peer --data-dir /tmp/spare-a                      # on 127.0.0.1:7070, every CPU
  spare peer --listen localhost:7071 --data-dir /tmp/spare-b --cpus 2 --bootstrap 127.0.0.1:7070")]
    Peer(peer::PeerArgs),
    /// Submit a job: one task per input, all running the same WebAssembly module.
    #[command(after_help = "Examples:
  spare submit examples/wasm/primes.wasm --inputs-dir /tmp/ranges --wait
  spare submit task.wasm --stdin-lines inputs.txt --quorum 3 --memory 256MiB --timeout 30s
  spare submit task.wasm --input a.bin --input b.bin --arg --verbose --env MODE=fast --json")]
    Submit(submit::SubmitArgs),
    /// Show a job's status, and why tasks failed.
    #[command(after_help = "Examples:
  spare status 3f2a9c01                 # a job id may be shortened to a unique start
  spare status 3f2a9c01 --watch         # live until it ends, with rate and ETA
  spare status 3f2a9c01 --tasks --json  # every task, for a script")]
    Status(status::StatusArgs),
    /// List the jobs a peer holds, newest first, with state and progress.
    #[command(after_help = "Examples:
  spare jobs
  spare jobs --limit 10 --json --peer 127.0.0.1:7071")]
    Jobs(jobs::JobsArgs),
    /// Cancel a job: no more of its tasks run; verified results are kept.
    #[command(after_help = "Examples:
  spare cancel 3f2a9c01")]
    Cancel(jobs::CancelArgs),
    /// Print this client's key: the owner of the jobs it submits (made on first use).
    #[command(after_help = "Examples:
  spare whoami
  spare whoami --identity ~/keys/ci.key --json")]
    Whoami(jobs::WhoamiArgs),
    /// List the peers of the mesh as a peer sees them.
    #[command(after_help = "Examples:
  spare peers
  spare peers --json --peer 127.0.0.1:7071")]
    Peers(peers::PeersArgs),
    /// Write a job's verified outputs to a directory, one file per task.
    #[command(after_help = "Examples:
  spare results 3f2a9c01 --out /tmp/out            # waits for the job to end
  spare results 3f2a9c01 --out /tmp/out --no-wait  # what is verified now
  spare results 3f2a9c01 --out /tmp/out --force    # into a directory that holds files already")]
    Results(results::ResultsArgs),
    /// Show what a job's tasks wrote to stderr: why they failed.
    #[command(after_help = "Examples:
  spare logs 3f2a9c01          # the stderr of every task without a verified result
  spare logs 3f2a9c01 17       # task 17's stderr alone, as the guest wrote it
  spare logs 3f2a9c01 --all    # verified tasks' stderr too")]
    Logs(logs::LogsArgs),
    /// Run an example job on an embedded mesh, check it against a native run, and time it.
    #[command(after_help = "Examples:
  spare demo
  spare demo --peers 5 --quorum 3 --tasks 200")]
    Demo(demo::DemoArgs),
    /// Simulate a mesh of virtual peers running one job, with liars, loss and churn.
    #[command(after_help = "Examples:
  spare sim --peers 1000 --liars 0.1
  spare sim --peers 10000 --churn 0.05 --loss 0.01 --json")]
    Sim(sim::SimArgs),
    /// Start a new task: write a Rust guest project (Cargo.toml, src/main.rs, build.sh, README).
    #[command(after_help = "Examples:
  spare new word-count                 # then: cd word-count && ./build.sh
  spare new ~/tasks/render --force     # into a directory that holds files already")]
    New(new::NewArgs),
    /// Print a completion script for a shell.
    #[command(after_help = "Examples:
  spare completions bash > ~/.local/share/bash-completion/completions/spare
  spare completions zsh > \"${fpath[1]}/_spare\"
  spare completions fish > ~/.config/fish/completions/spare.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// A peer's compiler process (not for people): compiles the module on stdin into the
    /// peer's disk cache of compiled modules.
    #[command(hide = true)]
    CompileModule(crate::sandbox::CompileArgs),
    /// A peer's slot process (not for people): runs the tasks its peer sends on stdin in the
    /// sandbox, answering on stdout; the peer kills it at a task's deadline.
    #[command(hide = true)]
    SandboxSlot(crate::sandbox::SlotArgs),
}

/// The executable of this process, to start its compiler and slot processes from. On Linux
/// `/proc/self/exe`, which execs the very file this process runs even once a package upgrade
/// has replaced or removed it at its path: a slot process of a newer build would build another
/// engine, and find none of the compiled modules this peer wrote.
pub(crate) fn own_executable() -> std::io::Result<std::path::PathBuf> {
    let proc_self = std::path::Path::new("/proc/self/exe");
    if proc_self.exists() {
        return Ok(proc_self.to_path_buf());
    }
    std::env::current_exe()
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any logging or async runtime: the compiler process needs neither, and starts fast.
    if let Command::CompileModule(a) = &cli.command {
        return crate::sandbox::compile_module(a);
    }
    if let Command::SandboxSlot(a) = &cli.command {
        return crate::sandbox::serve_slot(a);
    }
    if let Some(path) = &cli.identity {
        let _ = IDENTITY.set(path.clone());
    }
    if !matches!(cli.command, Command::Peer(_)) {
        quiet_on_closed_stdout();
    }
    let default = if matches!(cli.command, Command::Peer(_)) { "info" } else { "warn" };
    let spec = log_filter(std::env::var("SPARE_LOG").ok().as_deref(), default);
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: SPARE_LOG={spec:?} is not a log filter ({e}); using {default}");
        tracing_subscriber::EnvFilter::new(log_filter(None, default))
    });
    // Colour codes only for a person at a terminal, and never when NO_COLOR is set.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Peer(a) => peer::run(a).await,
            Command::Submit(a) => submit::run(a).await,
            Command::Status(a) => status::run(a).await,
            Command::Peers(a) => peers::run(a).await,
            Command::Results(a) => results::run(a).await,
            Command::Logs(a) => logs::run(a).await,
            Command::Jobs(a) => jobs::run(a).await,
            Command::Cancel(a) => jobs::cancel(a).await,
            Command::New(a) => new::run(a),
            Command::Whoami(a) => jobs::whoami(a),
            Command::Completions { shell } => {
                // Into a buffer first: clap_complete panics when its writer fails.
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "spare", &mut script);
                match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                    // The reader left early (`| head`): nothing more to say.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::from(141)),
                    r => r.map(|()| ExitCode::SUCCESS).map_err(anyhow::Error::from),
                }
            }
            Command::Demo(a) => demo::run(a).await,
            Command::Sim(a) => sim::run(a),
            Command::CompileModule(a) => Ok(crate::sandbox::compile_module(&a)),
            Command::SandboxSlot(a) => Ok(crate::sandbox::serve_slot(&a)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so once a reader of stdout is gone (`spare jobs | head`) the next print
/// fails with EPIPE and `println!` panics. Restoring SIGPIPE's default would end that quietly, but
/// it would also kill a client whose connection to a peer closes under a write (a socket raises
/// SIGPIPE too), before it could say what happened. So only that one panic is turned into a quiet
/// exit, with the status a shell gives a process SIGPIPE ended (128 + 13).
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Spare's own crates, whose lines a bare level in `SPARE_LOG` selects.
const OWN_CRATES: [&str; 4] = ["spare", "spare_peer", "spare_protocol", "spare_sdk"];

/// The log filter for `SPARE_LOG` (or `default` when unset): a bare level (`debug`) applies to
/// Spare's own crates only, the libraries staying at `warn`, so `debug` shows Spare's lines and
/// not every HTTP/2 frame; `trace`, or a full filter (`h2=debug,spare_peer=info`), is taken as
/// written.
fn log_filter(spare_log: Option<&str>, default: &str) -> String {
    let spec = spare_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(default);
    let level = spec.to_ascii_lowercase();
    match level.as_str() {
        "trace" => level,
        "error" | "off" => level,
        "warn" | "info" | "debug" => {
            let own: Vec<String> = OWN_CRATES.iter().map(|c| format!("{c}={level}")).collect();
            format!("warn,{}", own.join(","))
        }
        _ => spec.to_string(),
    }
}

/// Connects the SDK to a peer and checks that a peer answers there; an error keeps its cause
/// and says what to do.
async fn connect(peer: &str) -> anyhow::Result<spare_sdk::Client> {
    let mut client = spare_sdk::Client::connect(peer.to_string()).await.map_err(|e| sdk_error(e, peer))?;
    if let Some(path) = IDENTITY.get() {
        client = client.with_identity(spare_sdk::ClientIdentity::load_or_create(path)?);
    }
    match client.info().await {
        Ok(_) => Ok(client),
        // Something took the connection, then failed below gRPC: not a peer's API.
        Err(spare_sdk::Error::Status(s)) if matches!(s.code(), tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled) => {
            anyhow::bail!(
                "{peer} took the connection but did not answer as a Spare peer ({}); is it the address `spare peer --listen` serves?",
                spare_sdk::Error::Status(s)
            )
        }
        Err(e) => Err(sdk_error(e, peer)),
    }
}

/// An SDK error as the client commands show it: with a hint when the peer cannot be reached or
/// is not a peer.
fn sdk_error(e: spare_sdk::Error, peer: &str) -> anyhow::Error {
    use spare_sdk::Error as E;
    match &e {
        E::Connect { .. } => anyhow::anyhow!(
            "{e}; is a peer running there? Start one with `spare peer --data-dir DIR`, or pass --peer HOST:PORT (or set SPARE_PEER)"
        ),
        E::NotAPeer { .. } => anyhow::anyhow!("{peer}: {e}"),
        E::Status(s) if s.code() == tonic::Code::Unavailable => {
            anyhow::anyhow!("{peer} stopped answering: {e}; is the peer still running?")
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

/// The client key the commands sign with: `--identity`, else the SDK's default (made on first use).
fn identity() -> anyhow::Result<spare_sdk::ClientIdentity> {
    Ok(match IDENTITY.get() {
        Some(path) => spare_sdk::ClientIdentity::load_or_create(path)?,
        None => spare_sdk::ClientIdentity::load_default()?,
    })
}

/// The job an id, or a unique prefix of one as `spare` prints them, names at `client`'s peer.
async fn job_id(client: &spare_sdk::Client, id: &str) -> anyhow::Result<spare_sdk::JobId> {
    client.find_job(id).await.map_err(|e| sdk_error(e, client.addr()))
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn a_bare_level_selects_spares_own_lines() {
        assert_eq!(log_filter(Some("debug"), "warn"), "warn,spare=debug,spare_peer=debug,spare_protocol=debug,spare_sdk=debug");
        assert_eq!(log_filter(None, "info"), "warn,spare=info,spare_peer=info,spare_protocol=info,spare_sdk=info");
        assert_eq!(log_filter(Some("trace"), "info"), "trace", "trace shows everything");
        assert_eq!(log_filter(Some("h2=debug,spare_peer=info"), "info"), "h2=debug,spare_peer=info", "a named filter as written");
        assert_eq!(log_filter(Some(""), "warn"), log_filter(None, "warn"));
    }
}
