//! The two pipes of a slot process, driven from its slot thread without helper threads: both
//! non-blocking, written as far as the pipe takes, read as far as there is, and waited on
//! together with `poll(2)` until a deadline. A full stdin (a batch of large inputs while the
//! process runs a loop) never blocks the thread that must see the deadline pass, and a reply
//! reaches it without a hand-off between threads (each costs a wake-up, about a tiny task's
//! whole run).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{ChildStdin, ChildStdout};
use std::time::Instant;

use super::slot_wire::{SlotReply, decode, frame_len};

/// Bytes read from the process at once.
const READ_CHUNK: usize = 64 << 10;

pub(crate) struct Pipes {
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Frames queued for stdin, and how much of them is written.
    out: Vec<u8>,
    written: usize,
    /// Bytes read from stdout not yet taken as a reply.
    inbuf: Vec<u8>,
}

fn nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Pipes {
    pub(crate) fn new(stdin: ChildStdin, stdout: ChildStdout) -> io::Result<Pipes> {
        nonblocking(&stdin)?;
        nonblocking(&stdout)?;
        Ok(Pipes { stdin, stdout, out: Vec::new(), written: 0, inbuf: Vec::new() })
    }

    /// Queues an encoded frame and writes what the pipe takes now.
    pub(crate) fn send(&mut self, frame: &[u8]) {
        self.out.extend_from_slice(frame);
        self.write_some();
    }

    /// Writes queued bytes until the pipe is full. A closed pipe (the process is gone) drops
    /// them: the read side says so.
    fn write_some(&mut self) {
        while self.written < self.out.len() {
            match self.stdin.write(&self.out[self.written..]) {
                Ok(0) => break,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.written = self.out.len();
                    break;
                }
            }
        }
        self.out.clear();
        self.written = 0;
    }

    /// The next reply, waiting until `until` at most: `Ok(None)` when it passed first; an
    /// error when the process closed its stdout or sent what is not a frame.
    pub(crate) fn next(&mut self, until: Instant) -> io::Result<Option<SlotReply>> {
        loop {
            if let Some(reply) = self.take()? {
                return Ok(Some(reply));
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            let pending = self.written < self.out.len();
            let mut fds = [
                libc::pollfd { fd: self.stdout.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                // Left out (a negative fd) with nothing to write: a closed read end would
                // otherwise wake every poll at once.
                libc::pollfd { fd: if pending { self.stdin.as_raw_fd() } else { -1 }, events: libc::POLLOUT, revents: 0 },
            ];
            // Rounded up, so a wait never ends just before its deadline and spins.
            let ms = (until - now).as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of two pollfd on this stack.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                self.write_some();
            }
            if fds[0].revents != 0 {
                self.read_some()?;
            }
        }
    }

    /// Reads what stdout holds now.
    fn read_some(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stdout.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the slot process closed its stdout")),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// A whole reply from what was read, if there is one.
    fn take(&mut self) -> io::Result<Option<SlotReply>> {
        let Some(head) = self.inbuf.first_chunk::<4>() else { return Ok(None) };
        let end = 4 + frame_len(*head)?;
        if self.inbuf.len() < end {
            return Ok(None);
        }
        let reply = decode(&self.inbuf[4..end]);
        self.inbuf.drain(..end);
        reply.map(Some)
    }
}
