//! One batch out at a time, and a batch waiting to be tried again at a set time: the part of
//! sending that the report and replication queues share.

use crate::Millis;

/// Where a queue's sending stands.
#[derive(Debug)]
pub(crate) struct Outbox<B> {
    retry: Option<(B, Millis)>,
    out: bool,
}

impl<B> Default for Outbox<B> {
    fn default() -> Outbox<B> {
        Outbox { retry: None, out: false }
    }
}

/// What [`Outbox::poll`] found.
pub(crate) enum Polled<B> {
    /// A batch is out, or the one to retry is not due yet: nothing to send.
    Busy,
    /// The batch to retry is due: send it (it is out now).
    Retry(B),
    /// Free: the queue may make a new batch (and mark it out with [`Outbox::send`]).
    Free,
}

impl<B> Outbox<B> {
    /// Whether no batch is out and none waits to be retried.
    pub fn is_idle(&self) -> bool {
        !self.out && self.retry.is_none()
    }

    /// What may be sent at `now`.
    pub fn poll(&mut self, now: Millis) -> Polled<B> {
        if self.out || self.retry.as_ref().is_some_and(|(_, at)| *at > now) {
            return Polled::Busy;
        }
        match self.retry.take() {
            Some((batch, _)) => {
                self.out = true;
                Polled::Retry(batch)
            }
            None => Polled::Free,
        }
    }

    /// A new batch goes out.
    pub fn send(&mut self) {
        self.out = true;
    }

    /// The batch out came back.
    pub fn returned(&mut self) {
        self.out = false;
    }

    /// Tries `batch` again at `at`.
    pub fn retry_at(&mut self, batch: B, at: Millis) {
        self.retry = Some((batch, at));
    }

    /// The batch waiting to be retried.
    pub fn retry_mut(&mut self) -> Option<&mut B> {
        self.retry.as_mut().map(|(b, _)| b)
    }

    /// Forgets the batch waiting to be retried.
    pub fn drop_retry(&mut self) {
        self.retry = None;
    }

    /// `None` while a batch is out; `Some(at)` when a retry waits until `at`; `Some(None)`
    /// when free.
    pub fn next(&self) -> Option<Option<Millis>> {
        if self.out {
            return None;
        }
        Some(self.retry.as_ref().map(|(_, at)| *at))
    }
}
