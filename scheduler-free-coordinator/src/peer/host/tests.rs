//! Deterministic tests of [`Host`](super::Host): a few hosts joined by an in-memory network, in virtual time.
