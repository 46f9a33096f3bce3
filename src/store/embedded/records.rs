//! What the journal and snapshots hold, encoded with prost so that the format
//! can grow (new fields and commands get new tags; readers skip what they do
//! not know). Field tags are part of the on-disk format: never reuse one.

use chrono::{DateTime, Utc};

use crate::ledger::{HoldResolution, LedgerError, RequestParams};

/// One executed command, in the order it was executed for its user.
/// Replaying the journal executes the same commands on the same state and so
/// rebuilds every user's ledger, including remembered request ids.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalRecord {
    /// The command.
    #[prost(oneof = "Command", tags = "1, 2, 7, 9, 10, 11, 12, 13")]
    pub command: Option<Command>,
    /// The user whose ledger it changed ("default" for none given).
    #[prost(string, tag = "3")]
    pub user_id: String,
    /// The caller's request id, empty if none.
    #[prost(string, tag = "4")]
    pub request_id: String,
    /// When it was executed, in milliseconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "5")]
    pub accepted_at_ms: i64,
    /// The command was refused (recorded only with a request id, so that
    /// retries get the same refusal); replay must refuse it too.
    #[prost(bool, tag = "6")]
    pub refused: bool,
    /// How long points stayed valid when it was executed, in milliseconds
    /// (0: they never expired). Replay advances the ledger's clock to
    /// `accepted_at_ms` with it before the command, as execution did.
    #[prost(int64, tag = "8")]
    pub points_validity_ms: i64,
}

/// A command that was executed.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Command {
    /// AddTransaction.
    #[prost(message, tag = "1")]
    AddTransaction(AddTransactionRecord),
    /// Spend.
    #[prost(message, tag = "2")]
    Spend(SpendRecord),
    /// AddTransactions: a whole batch in one record, so one fsync.
    #[prost(message, tag = "7")]
    AddTransactions(AddTransactionsRecord),
    /// HoldPoints.
    #[prost(message, tag = "9")]
    Hold(HoldCommand),
    /// CaptureHold.
    #[prost(message, tag = "10")]
    Capture(CaptureCommand),
    /// ReleaseHold.
    #[prost(message, tag = "11")]
    Release(ReleaseCommand),
    /// RefundSpend.
    #[prost(message, tag = "12")]
    Refund(RefundCommand),
    /// Only the clock moved: holds timed out or points expired, with no
    /// command kept (a read, the server's sweep, or a call refused without
    /// a record).
    #[prost(message, tag = "13")]
    AdvanceClock(AdvanceClockCommand),
}

/// A HoldPoints.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HoldCommand {
    /// The points.
    #[prost(int64, tag = "1")]
    pub points: i64,
    /// The timeout, in milliseconds.
    #[prost(int64, tag = "2")]
    pub timeout_ms: i64,
    /// The hold id the ledger assigned (0 if refused); replay checks it.
    #[prost(uint64, tag = "3")]
    pub hold_id: u64,
}

/// A CaptureHold.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CaptureCommand {
    /// The hold.
    #[prost(uint64, tag = "1")]
    pub hold_id: u64,
    /// The points (0: all).
    #[prost(int64, tag = "2")]
    pub points: i64,
    /// The spend id the ledger assigned (0 if refused); replay checks it.
    #[prost(uint64, tag = "3")]
    pub spend_id: u64,
}

/// A ReleaseHold.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReleaseCommand {
    /// The hold.
    #[prost(uint64, tag = "1")]
    pub hold_id: u64,
}

/// A RefundSpend.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefundCommand {
    /// The spend.
    #[prost(uint64, tag = "1")]
    pub spend_id: u64,
    /// The points (0: all that is left).
    #[prost(int64, tag = "2")]
    pub points: i64,
    /// The refund's place among the history's events, plus one (0 if
    /// refused); replay checks it.
    #[prost(uint64, tag = "3")]
    pub refund_id: u64,
}

/// A record that only moves the clock.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdvanceClockCommand {}

/// An accepted batch of transactions, applied in order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddTransactionsRecord {
    /// The transactions, with the ids they got.
    #[prost(message, repeated, tag = "1")]
    pub transactions: Vec<AddTransactionRecord>,
}

/// An AddTransaction.
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
    /// The id the ledger assigned (0 if refused); replay checks it.
    #[prost(uint64, tag = "5")]
    pub transaction_id: u64,
}

/// A Spend.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpendRecord {
    /// The points spent.
    #[prost(int64, tag = "1")]
    pub points: i64,
    /// The id the ledger assigned (0 if refused); replay checks it.
    #[prost(uint64, tag = "2")]
    pub spend_id: u64,
}

/// One frame of a snapshot: a header, then for each user a user record
/// followed by its payers, transactions, spends and requests in chunks, then
/// a footer that proves the snapshot complete.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotRecord {
    /// The part.
    #[prost(oneof = "SnapshotPart", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub part: Option<SnapshotPart>,
}

/// A part of a snapshot.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum SnapshotPart {
    /// The first frame.
    #[prost(message, tag = "1")]
    Header(SnapshotHeader),
    /// Starts a user; the parts up to the next user record are its.
    #[prost(message, tag = "2")]
    User(UserRecord),
    /// Some of the current user's payers.
    #[prost(message, tag = "3")]
    Payers(PayersChunk),
    /// Some of the current user's transactions, by id, as parallel columns.
    #[prost(message, tag = "4")]
    Transactions(TransactionsChunk),
    /// Some of the current user's spends, by id.
    #[prost(message, tag = "5")]
    Spends(SpendsChunk),
    /// Some of the current user's remembered requests, oldest first.
    #[prost(message, tag = "6")]
    Requests(RequestsChunk),
    /// The last frame.
    #[prost(message, tag = "7")]
    Footer(SnapshotFooter),
    /// Some of the current user's holds, by id.
    #[prost(message, tag = "8")]
    Holds(HoldsChunk),
    /// Some of the current user's other history events, in order.
    #[prost(message, tag = "9")]
    Events(EventsChunk),
}

/// Holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HoldsChunk {
    /// The holds.
    #[prost(message, repeated, tag = "1")]
    pub holds: Vec<HoldEntry>,
}

/// One hold.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HoldEntry {
    /// Points held.
    #[prost(int64, tag = "1")]
    pub points: i64,
    /// Payer index of each (payer, points) pair taken, in the order taken.
    #[prost(uint32, repeated, tag = "2")]
    pub taken_payers: Vec<u32>,
    /// Points of each pair.
    #[prost(int64, repeated, tag = "3")]
    pub taken_points: Vec<i64>,
    /// When it times out, in milliseconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "4")]
    pub expire_at_ms: i64,
    /// 0 open, 1 captured, 2 released, 3 timed out.
    #[prost(uint32, tag = "5")]
    pub state: u32,
    /// The spend it was captured as (state 1).
    #[prost(uint64, tag = "6")]
    pub spend_id: u64,
}

/// Events.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventsChunk {
    /// The events.
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<EventEntry>,
}

/// One history event that is neither a transaction nor a spend.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventEntry {
    /// Transactions before it.
    #[prost(uint64, tag = "1")]
    pub transactions_before: u64,
    /// Spends before it.
    #[prost(uint64, tag = "2")]
    pub spends_before: u64,
    /// 1 hold, 2 release, 3 timed-out release, 4 refund, 5 expiration.
    #[prost(uint32, tag = "3")]
    pub kind: u32,
    /// The hold (kinds 1–3) or spend (kind 4).
    #[prost(uint64, tag = "4")]
    pub id: u64,
    /// Payer index of each (payer, points) pair refunded or expired.
    #[prost(uint32, repeated, tag = "5")]
    pub payers: Vec<u32>,
    /// Points of each pair.
    #[prost(int64, repeated, tag = "6")]
    pub points: Vec<i64>,
    /// What stayed refundable after a refund.
    #[prost(int64, tag = "7")]
    pub refundable_after: i64,
    /// When it was accepted, in milliseconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "8")]
    pub accepted_at_ms: i64,
}

/// What a snapshot covers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotHeader {
    /// Every journal record up to this sequence is in the snapshot; records
    /// after it are in it only up to each user's own `last_sequence`.
    #[prost(uint64, tag = "1")]
    pub rotation_sequence: u64,
}

/// A user and how much of its state follows.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// The user id.
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// The sequence of the last journal record applied to this user.
    #[prost(uint64, tag = "2")]
    pub last_sequence: u64,
    /// Payers that follow.
    #[prost(uint64, tag = "3")]
    pub payer_count: u64,
    /// Transactions that follow.
    #[prost(uint64, tag = "4")]
    pub transaction_count: u64,
    /// Spends that follow.
    #[prost(uint64, tag = "5")]
    pub spend_count: u64,
    /// Requests that follow.
    #[prost(uint64, tag = "6")]
    pub request_count: u64,
    /// Holds that follow.
    #[prost(uint64, tag = "7")]
    pub hold_count: u64,
    /// Events that follow.
    #[prost(uint64, tag = "8")]
    pub event_count: u64,
    /// The ledger's time, in milliseconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "9")]
    pub clock_ms: i64,
}

/// Payers as parallel columns.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayersChunk {
    /// Names.
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
    /// Balances.
    #[prost(int64, repeated, tag = "2")]
    pub balances: Vec<i64>,
}

/// Transactions as parallel columns.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TransactionsChunk {
    /// Payer indices.
    #[prost(uint32, repeated, tag = "1")]
    pub payer_indices: Vec<u32>,
    /// Points.
    #[prost(sint64, repeated, tag = "2")]
    pub points: Vec<i64>,
    /// Timestamp seconds since 1970-01-01T00:00:00Z.
    #[prost(sint64, repeated, tag = "3")]
    pub timestamp_seconds: Vec<i64>,
    /// Timestamp nanoseconds within the second.
    #[prost(uint32, repeated, tag = "4")]
    pub timestamp_nanos: Vec<u32>,
    /// When each was accepted, in milliseconds since
    /// 1970-01-01T00:00:00Z; empty when all are unknown (0).
    #[prost(sint64, repeated, tag = "5")]
    pub accepted_at_ms: Vec<i64>,
}

/// Spends; `taken_counts[i]` entries of the flat taken columns belong to spend i.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpendsChunk {
    /// Points spent.
    #[prost(int64, repeated, tag = "1")]
    pub points: Vec<i64>,
    /// Transactions before each spend.
    #[prost(uint64, repeated, tag = "2")]
    pub transactions_before: Vec<u64>,
    /// How many (payer, points) pairs each spend took.
    #[prost(uint32, repeated, tag = "3")]
    pub taken_counts: Vec<u32>,
    /// Payer index of each pair.
    #[prost(uint32, repeated, tag = "4")]
    pub taken_payers: Vec<u32>,
    /// Points of each pair.
    #[prost(int64, repeated, tag = "5")]
    pub taken_points: Vec<i64>,
    /// Points refunded of each spend; empty when none was.
    #[prost(int64, repeated, tag = "6")]
    pub refunded: Vec<i64>,
    /// The hold each spend captured (0: none); empty when none did.
    #[prost(uint64, repeated, tag = "7")]
    pub hold_ids: Vec<u64>,
    /// When each was accepted, as for transactions; empty when all are
    /// unknown (0).
    #[prost(sint64, repeated, tag = "8")]
    pub accepted_at_ms: Vec<i64>,
}

/// Remembered requests.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestsChunk {
    /// The requests.
    #[prost(message, repeated, tag = "1")]
    pub requests: Vec<RequestEntry>,
}

/// One remembered request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestEntry {
    /// The request id.
    #[prost(string, tag = "1")]
    pub request_id: String,
    /// When it was accepted, in milliseconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "2")]
    pub accepted_at_ms: i64,
    /// Its parameters.
    #[prost(oneof = "RequestCommand", tags = "3, 4, 7, 8, 9, 10")]
    pub command: Option<RequestCommand>,
    /// The id it produced, or 0 if refused.
    #[prost(uint64, tag = "5")]
    pub outcome_id: u64,
    /// Its refusal, if refused.
    #[prost(message, optional, tag = "6")]
    pub refusal: Option<RefusalRecord>,
}

/// The parameters of a remembered request. Its own oneof: a oneof's tags are
/// fields of the message that holds it, so the journal's [`Command`] (tags 1
/// and 2) cannot be reused here.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RequestCommand {
    /// AddTransaction.
    #[prost(message, tag = "3")]
    AddTransaction(AddTransactionRecord),
    /// Spend.
    #[prost(message, tag = "4")]
    Spend(SpendRecord),
    /// HoldPoints.
    #[prost(message, tag = "7")]
    Hold(HoldCommand),
    /// CaptureHold.
    #[prost(message, tag = "8")]
    Capture(CaptureCommand),
    /// ReleaseHold.
    #[prost(message, tag = "9")]
    Release(ReleaseCommand),
    /// RefundSpend.
    #[prost(message, tag = "10")]
    Refund(RefundCommand),
}

/// A remembered refusal: one of the state-dependent ledger errors.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefusalRecord {
    /// Its reason (an ErrorInfo reason such as INSUFFICIENT_POINTS).
    #[prost(string, tag = "1")]
    pub reason: String,
    /// The payer involved, if any.
    #[prost(string, tag = "2")]
    pub payer: String,
    /// The first number of the refusal (requested, or balance/total).
    #[prost(int64, tag = "3")]
    pub first: i64,
    /// The second number (available, or points).
    #[prost(int64, tag = "4")]
    pub second: i64,
    /// A magnitude that may not fit i64 (the requested points of a negative
    /// transaction can be 2^63).
    #[prost(uint64, tag = "5")]
    pub requested_magnitude: u64,
}

/// Totals that prove the snapshot complete.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotFooter {
    /// Users in the snapshot.
    #[prost(uint64, tag = "1")]
    pub user_count: u64,
}

impl AddTransactionRecord {
    /// The stored form of a transaction; `transaction_id` is 0 when refused.
    pub fn new(payer: &str, points: i64, timestamp: DateTime<Utc>, transaction_id: u64) -> Self {
        Self {
            payer: payer.to_owned(),
            points,
            timestamp_seconds: timestamp.timestamp(),
            timestamp_nanos: timestamp.timestamp_subsec_nanos(),
            transaction_id,
        }
    }

    /// The stored timestamp, checked.
    pub fn timestamp(&self) -> Result<DateTime<Utc>, String> {
        timestamp(self.timestamp_seconds, self.timestamp_nanos)
    }
}

/// Rebuilds a timestamp from its stored parts.
pub fn timestamp(seconds: i64, nanos: u32) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp(seconds, nanos)
        .filter(|_| nanos < 1_000_000_000)
        .ok_or_else(|| format!("invalid timestamp {seconds}s {nanos}ns"))
}

/// The stored form of a request's parameters (ids 0: a request command
/// holds no outcome). With [`params_of`], the one place where request
/// parameters and their stored fields meet.
pub fn request_command_of(params: &RequestParams) -> RequestCommand {
    match params {
        RequestParams::AddTransaction { payer, points, timestamp } => {
            RequestCommand::AddTransaction(AddTransactionRecord::new(payer, *points, *timestamp, 0))
        }
        RequestParams::Spend { points } => {
            RequestCommand::Spend(SpendRecord { points: *points, spend_id: 0 })
        }
        &RequestParams::Hold { points, timeout_ms } => {
            RequestCommand::Hold(HoldCommand { points, timeout_ms, hold_id: 0 })
        }
        &RequestParams::Capture { hold_id, points } => {
            RequestCommand::Capture(CaptureCommand { hold_id, points, spend_id: 0 })
        }
        &RequestParams::Release { hold_id } => RequestCommand::Release(ReleaseCommand { hold_id }),
        &RequestParams::Refund { spend_id, points } => {
            RequestCommand::Refund(RefundCommand { spend_id, points, refund_id: 0 })
        }
    }
}

/// A request's parameters from their stored form.
pub fn params_of(command: &RequestCommand) -> Result<RequestParams, String> {
    Ok(match command {
        RequestCommand::AddTransaction(add) => RequestParams::AddTransaction {
            payer: add.payer.clone(),
            points: add.points,
            timestamp: add.timestamp()?,
        },
        RequestCommand::Spend(spend) => RequestParams::Spend { points: spend.points },
        RequestCommand::Hold(hold) => {
            RequestParams::Hold { points: hold.points, timeout_ms: hold.timeout_ms }
        }
        RequestCommand::Capture(capture) => {
            RequestParams::Capture { hold_id: capture.hold_id, points: capture.points }
        }
        RequestCommand::Release(release) => RequestParams::Release { hold_id: release.hold_id },
        RequestCommand::Refund(refund) => {
            RequestParams::Refund { spend_id: refund.spend_id, points: refund.points }
        }
    })
}

/// The journal command of a request whose outcome assigned `id` (0 for a
/// refusal; unused by a release, which assigns none).
pub fn command_of(params: &RequestParams, id: u64) -> Command {
    let mut command = Command::from(request_command_of(params));
    if let Some(outcome_id) = command.outcome_id_mut() {
        *outcome_id = id;
    }
    command
}

impl From<RequestCommand> for Command {
    fn from(command: RequestCommand) -> Self {
        match command {
            RequestCommand::AddTransaction(add) => Command::AddTransaction(add),
            RequestCommand::Spend(spend) => Command::Spend(spend),
            RequestCommand::Hold(hold) => Command::Hold(hold),
            RequestCommand::Capture(capture) => Command::Capture(capture),
            RequestCommand::Release(release) => Command::Release(release),
            RequestCommand::Refund(refund) => Command::Refund(refund),
        }
    }
}

impl Command {
    /// The id the command's outcome assigned, where it assigns one.
    fn outcome_id_mut(&mut self) -> Option<&mut u64> {
        match self {
            Command::AddTransaction(add) => Some(&mut add.transaction_id),
            Command::Spend(spend) => Some(&mut spend.spend_id),
            Command::Hold(hold) => Some(&mut hold.hold_id),
            Command::Capture(capture) => Some(&mut capture.spend_id),
            Command::Refund(refund) => Some(&mut refund.refund_id),
            Command::Release(_) | Command::AddTransactions(_) | Command::AdvanceClock(_) => None,
        }
    }

    /// A single request's command as the request's parameters and the id
    /// its outcome assigned (`None`: it assigns none); `Ok(None)` for the
    /// commands that are not one request (a batch, the clock's record).
    pub fn into_request(mut self) -> Result<Option<(RequestParams, Option<u64>)>, String> {
        let id = self.outcome_id_mut().map(|id| *id);
        let command = match self {
            Command::AddTransaction(add) => RequestCommand::AddTransaction(add),
            Command::Spend(spend) => RequestCommand::Spend(spend),
            Command::Hold(hold) => RequestCommand::Hold(hold),
            Command::Capture(capture) => RequestCommand::Capture(capture),
            Command::Release(release) => RequestCommand::Release(release),
            Command::Refund(refund) => RequestCommand::Refund(refund),
            Command::AddTransactions(_) | Command::AdvanceClock(_) => return Ok(None),
        };
        Ok(Some((params_of(&command)?, id)))
    }
}

/// The stored form of a remembered refusal.
pub fn refusal_of(error: &LedgerError) -> RefusalRecord {
    let mut record =
        RefusalRecord { reason: error.reason().to_owned(), ..RefusalRecord::default() };
    match error {
        LedgerError::InsufficientPayerPoints { payer, requested, available } => {
            record.payer = payer.clone();
            record.requested_magnitude = *requested;
            record.second = *available;
        }
        LedgerError::InsufficientPoints { requested, available } => {
            (record.first, record.second) = (*requested, *available);
        }
        LedgerError::PayerBalanceOverflow { payer, balance, points } => {
            record.payer = payer.clone();
            (record.first, record.second) = (*balance, *points);
        }
        LedgerError::TotalOverflow { total, points } => {
            (record.first, record.second) = (*total, *points);
        }
        LedgerError::HoldNotFound { hold_id: id }
        | LedgerError::SpendNotFound { spend_id: id }
        | LedgerError::NothingToRefund { spend_id: id } => record.requested_magnitude = *id,
        LedgerError::HoldNotOpen { hold_id, resolution } => {
            record.requested_magnitude = *hold_id;
            resolution.as_str().clone_into(&mut record.payer);
        }
        LedgerError::CaptureExceedsHold { requested, held: available }
        | LedgerError::RefundExceedsSpend { requested, refundable: available } => {
            (record.first, record.second) = (*requested, *available);
        }
        _ => {}
    }
    record
}

/// A remembered refusal from its stored form.
pub fn error_of(record: &RefusalRecord) -> Result<LedgerError, String> {
    Ok(match record.reason.as_str() {
        "INSUFFICIENT_PAYER_POINTS" => LedgerError::InsufficientPayerPoints {
            payer: record.payer.clone(),
            requested: record.requested_magnitude,
            available: record.second,
        },
        "INSUFFICIENT_POINTS" => {
            LedgerError::InsufficientPoints { requested: record.first, available: record.second }
        }
        "PAYER_BALANCE_OVERFLOW" => LedgerError::PayerBalanceOverflow {
            payer: record.payer.clone(),
            balance: record.first,
            points: record.second,
        },
        "TOTAL_OVERFLOW" => {
            LedgerError::TotalOverflow { total: record.first, points: record.second }
        }
        "HOLD_NOT_FOUND" => LedgerError::HoldNotFound { hold_id: record.requested_magnitude },
        "SPEND_NOT_FOUND" => LedgerError::SpendNotFound { spend_id: record.requested_magnitude },
        "NOTHING_TO_REFUND" => {
            LedgerError::NothingToRefund { spend_id: record.requested_magnitude }
        }
        "HOLD_NOT_OPEN" => LedgerError::HoldNotOpen {
            hold_id: record.requested_magnitude,
            resolution: HoldResolution::from_name(&record.payer)
                .ok_or_else(|| format!("unknown hold resolution {:?}", record.payer))?,
        },
        "CAPTURE_EXCEEDS_HOLD" => {
            LedgerError::CaptureExceedsHold { requested: record.first, held: record.second }
        }
        "REFUND_EXCEEDS_SPEND" => {
            LedgerError::RefundExceedsSpend { requested: record.first, refundable: record.second }
        }
        other => return Err(format!("unknown remembered refusal {other:?}")),
    })
}
