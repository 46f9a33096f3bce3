//! Write-ahead-log mechanics, free of ledger types: records are opaque bytes
//! (any `prost::Message` when appended) numbered by a global sequence.
//!
//! - [`frame`]: checksummed, length-prefixed frames, and scanning them.
//! - [`batch`]: what one write holds: records after a header naming the
//!   first sequence and what was synced before it.
//! - [`segment`]: the file being appended to, kept preallocated.
//! - [`journal`]: the append side callers use (group commit, back-pressure,
//!   receipts) and [`writer`], the thread that writes, syncs and rotates.
//!
//! What the records mean, and replaying them into ledgers, lives outside:
//! `records` and `replay` beside this module.

pub mod batch;
pub mod frame;
pub mod journal;
pub mod read;
pub mod segment;
mod writer;

pub use journal::{
    DurableReceipt, FsyncPolicy, Journal, JournalFailed, JournalOptions, Refusal, SnapshotTrigger,
};
pub use segment::Segment;
