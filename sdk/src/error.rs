//! The SDK's error type: every way connecting, building, submitting or following a job can fail.

use std::path::PathBuf;

/// Shorthand for results whose error is the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer address is malformed or the peer could not be reached. Shown with the deepest
    /// cause the transport gave (e.g. `Connection refused`).
    #[error("cannot connect to {addr}: {}", root_cause(source))]
    Connect {
        /// The address as given to [`Client::connect`](crate::Client::connect).
        addr: String,
        /// What the transport reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// The address cannot be used as given (e.g. a malformed `@PEERID`).
    #[error("cannot use the peer address {addr}: {reason}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why, and what to give instead.
        reason: String,
    },
    /// Something answered at the address, but not as a Spare peer: plain HTTP rather than
    /// gRPC, or not HTTP/2 at all (another program listens there).
    #[error(
        "the server there is not a Spare peer: {answer} (is the address the one `spare peer --listen` serves?)"
    )]
    NotAPeer {
        /// What it did instead, e.g. "it answered HTTP 404 instead of gRPC".
        answer: String,
    },
    /// No job, or more than one, matches a shortened job id.
    #[error("{0}")]
    UnknownJob(String),
    /// The peer answered with a gRPC error (shown as `"{code}: {message}"`, and the transport's
    /// own cause when the call failed below gRPC).
    #[error("{}: {}{}", code_name(.0.code()), .0.message(), transport_cause(.0))]
    Status(#[source] tonic::Status),
    /// A file or directory named in a job could not be read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The job has no tasks.
    #[error("the job has no tasks")]
    NoTasks,
    /// The job has no module.
    #[error("the job has no module")]
    NoModule,
    /// The job's module is zero bytes long.
    #[error("the job's module is empty")]
    EmptyModule,
    /// The job's description is inconsistent (a zero chunk size, a quorum above `max_replicas`...).
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// A string that should be a job id (64 hex characters) is not one.
    #[error("not a job id (64 hex characters): {0:?}")]
    InvalidId(String),
    /// Even with every input uploaded as a blob, the submit request exceeds the message budget.
    #[error(
        "job too large to submit: {tasks} tasks need a {bytes}-byte request even with every input as a blob"
    )]
    JobTooLarge {
        /// Number of tasks in the job.
        tasks: usize,
        /// Encoded size of the smallest possible submit request.
        bytes: usize,
    },
    /// The peer sent something the protocol does not allow (a malformed id, a stream that ended early).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer at the address is not the one expected: its TLS certificate carries another
    /// PeerId than the one given (`ADDR@PEERID`) or pinned in `known_peers`.
    #[error("{0}")]
    PeerIdentity(String),
    /// The client's key could not be read or made.
    #[error("{0}")]
    Identity(String),
    /// The operating system could not provide randomness for the job's nonce.
    #[error("no system randomness for the job nonce: {0}")]
    Random(getrandom::Error),
}

impl Error {
    /// The gRPC status code, when the peer answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            _ => None,
        }
    }

    /// True when the peer said the job or blob does not exist (`NOT_FOUND`).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        // What tonic makes of an HTTP reply without gRPC in it.
        const NOT_GRPC: &str = "grpc-status header missing, mapped from HTTP status code ";
        if let Some(code) = status.message().strip_prefix(NOT_GRPC) {
            return Error::NotAPeer {
                answer: format!("it answered HTTP {} instead of gRPC", code.trim()),
            };
        }
        // What hyper makes of a server that does not speak HTTP/2 (an HTTP/1 server, TLS).
        if status.message().starts_with("h2 protocol error") {
            return Error::NotAPeer {
                answer: format!("it does not speak gRPC's HTTP/2 ({})", status.message()),
            };
        }
        Error::Status(status)
    }
}

/// `" (cause)"` for a status tonic made of a transport failure, which says only "transport
/// error" by itself; empty otherwise.
fn transport_cause(status: &tonic::Status) -> String {
    use std::error::Error as _;
    match status.source() {
        Some(source) => format!(" ({})", root_cause(source)),
        None => String::new(),
    }
}

/// The innermost error of a chain, which says what actually went wrong (tonic's own top-level
/// message is a bare "transport error").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A short lowercase name for a gRPC status code, as shown in error messages.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "deadline exceeded",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_code_and_message() {
        let err = Error::from(tonic::Status::not_found("no job abc"));
        assert_eq!(err.to_string(), "not found: no job abc");
        assert!(err.is_not_found());
        assert_eq!(Error::NoTasks.code(), None);
    }

    #[test]
    fn an_http_reply_without_grpc_is_not_a_peer() {
        let status = tonic::Status::unimplemented(
            "grpc-status header missing, mapped from HTTP status code 404",
        );
        let err = Error::from(status);
        assert!(err.to_string().contains("not a Spare peer: it answered HTTP 404"), "{err}");
    }

    #[test]
    fn io_error_names_the_path() {
        let err = Error::io(
            "/no/such/file.wasm",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(err.to_string().starts_with("/no/such/file.wasm: "), "{err}");
    }
}
