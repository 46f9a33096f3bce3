//! What the journal and snapshots hold, encoded with prost so that the format
//! can grow (new fields and commands get new tags; readers skip what they do
//! not know). Field tags are part of the on-disk format: never reuse one.

use chrono::{DateTime, Utc};

/// One accepted command, in the order it was applied. Replaying the journal
/// applies the same commands to the same state and so rebuilds the ledger.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalRecord {
    /// The command.
    #[prost(oneof = "Command", tags = "1, 2")]
    pub command: Option<Command>,
}

/// A command that changed the ledger.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Command {
    /// An accepted AddTransaction.
    #[prost(message, tag = "1")]
    AddTransaction(AddTransactionRecord),
    /// An accepted Spend.
    #[prost(message, tag = "2")]
    Spend(SpendRecord),
}

/// An accepted transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddTransactionRecord {
    /// The payer.
    #[prost(string, tag = "1")]
    pub payer: String,
    /// The points, positive or negative.
    #[prost(int64, tag = "2")]
    pub points: i64,
    /// The timestamp: seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "3")]
    pub timestamp_seconds: i64,
    /// The timestamp: nanoseconds within the second.
    #[prost(uint32, tag = "4")]
    pub timestamp_nanos: u32,
    /// The id the ledger assigned; replay checks it gets the same one.
    #[prost(uint64, tag = "5")]
    pub transaction_id: u64,
}

/// An accepted spend.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpendRecord {
    /// The points spent.
    #[prost(int64, tag = "1")]
    pub points: i64,
}

/// One frame of a snapshot. A snapshot is a header, then for each payer a
/// payer record followed by its lots in chunks, then a footer that proves the
/// snapshot is complete and cross-checks its counts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotRecord {
    /// The part.
    #[prost(oneof = "SnapshotPart", tags = "1, 2, 3, 4")]
    pub part: Option<SnapshotPart>,
}

/// A part of a snapshot.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum SnapshotPart {
    /// The first frame.
    #[prost(message, tag = "1")]
    Header(SnapshotHeader),
    /// Starts a payer; the lots that follow are its.
    #[prost(message, tag = "2")]
    Payer(PayerRecord),
    /// Some of the current payer's lots, oldest first, as parallel columns.
    #[prost(message, tag = "3")]
    Lots(LotsRecord),
    /// The last frame.
    #[prost(message, tag = "4")]
    Footer(SnapshotFooter),
}

/// What a snapshot covers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotHeader {
    /// The last journal sequence whose effect the snapshot includes.
    #[prost(uint64, tag = "1")]
    pub last_sequence: u64,
    /// The id the next transaction gets.
    #[prost(uint64, tag = "2")]
    pub next_transaction_id: u64,
}

/// A payer's name and balance.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayerRecord {
    /// The payer.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its balance.
    #[prost(int64, tag = "2")]
    pub balance: i64,
    /// How many lots follow in Lots records.
    #[prost(uint64, tag = "3")]
    pub lot_count: u64,
}

/// A chunk of lots; the four columns have one entry per lot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LotsRecord {
    /// Timestamp seconds since 1970-01-01T00:00:00Z.
    #[prost(sint64, repeated, tag = "1")]
    pub timestamp_seconds: Vec<i64>,
    /// Timestamp nanoseconds within the second.
    #[prost(uint32, repeated, tag = "2")]
    pub timestamp_nanos: Vec<u32>,
    /// The crediting transaction ids.
    #[prost(uint64, repeated, tag = "3")]
    pub transaction_ids: Vec<u64>,
    /// The points originally credited.
    #[prost(int64, repeated, tag = "4")]
    pub points: Vec<i64>,
}

/// Totals that prove the snapshot complete.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotFooter {
    /// Payers in the snapshot.
    #[prost(uint64, tag = "1")]
    pub payer_count: u64,
    /// Lots in the snapshot.
    #[prost(uint64, tag = "2")]
    pub lot_count: u64,
    /// The sum of all balances.
    #[prost(int64, tag = "3")]
    pub total: i64,
}

/// Rebuilds a timestamp from its stored parts.
pub fn timestamp(seconds: i64, nanos: u32) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp(seconds, nanos)
        .filter(|_| nanos < 1_000_000_000)
        .ok_or_else(|| format!("invalid timestamp {seconds}s {nanos}ns"))
}
