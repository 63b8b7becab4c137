//! What an upstream provider's answer means for the key that produced it: the classification of
//! a status and body into an [`Outcome`](crate::pool::Outcome) (`classify`) and the rate-limit
//! hints of its headers (`headers`); and the pool's secrets scrubbed out of whatever it answers
//! before a client sees it (`scrub`).
//!
//! Pure functions over `http` types: no I/O, no clock of their own, no store.

pub mod classify;
pub mod headers;
pub mod scrub;
