//! Snapshots: every user's whole ledger, so that start-up reads one compact
//! file instead of replaying all history, and old journal segments can be
//! removed.
//!
//! A snapshot is written to a temporary file, fsynced, renamed into place and
//! the directory fsynced, so a snapshot under its final name is always
//! complete; its footer, counts and checksums prove it on reading. A
//! snapshot that fails is removed, not left behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::file_system::{AppendWriter, FileSystem};
use super::files::{self, DataDir};
use super::records::{
    self, EventEntry, EventsChunk, HoldEntry, HoldsChunk, PayersChunk, RequestEntry, RequestsChunk,
    SnapshotFooter, SnapshotHeader, SnapshotPart, SnapshotRecord, SpendsChunk, TransactionsChunk,
    UserRecord,
};
use super::wal::frame;
use crate::ledger::{
    Event, EventRecord, HoldRecord, HoldState, InvariantViolation, Ledger, LedgerState,
    RequestRecord, SpendRecord, TransactionRecord,
};
use crate::store::OpenError;

/// Items per chunk record: large enough to amortise framing, small enough to
/// keep each frame far under the frame size limit.
const ITEMS_PER_CHUNK: usize = 4096;

/// Encoded bytes gathered before they are written, and the most the buffer
/// keeps between writes.
pub const ENCODED_KEEP_BYTES: usize = 1 << 20;

/// One user's state in a snapshot.
#[derive(Debug, Clone)]
pub struct UserSnapshot {
    /// The user id.
    pub user_id: String,
    /// The last journal sequence applied to this user.
    pub last_sequence: u64,
    /// The user's ledger.
    pub ledger: Ledger,
}

/// A snapshot being written to its temporary file, one user at a time, so
/// that the store never holds a second copy of the ledgers: each user is
/// encoded while the caller holds that user's lock (no I/O under it: a
/// stalled disk must not hold a user's lock), and the encoding is written
/// after the lock is released. Dropped before [`SnapshotFile::publish`], it
/// removes its temporary file.
pub struct SnapshotFile<'dir> {
    data_dir: &'dir DataDir,
    temporary_path: PathBuf,
    final_path: PathBuf,
    /// `None` once finished.
    out: Option<AppendWriter>,
    /// Frames encoded and not yet written.
    encoded: Vec<u8>,
    user_count: u64,
    size_bytes: u64,
}

impl<'dir> SnapshotFile<'dir> {
    /// Starts the snapshot named for `rotation_sequence` in a temporary file.
    pub fn create(data_dir: &'dir DataDir, rotation_sequence: u64) -> std::io::Result<Self> {
        let final_path = data_dir.snapshot_path(rotation_sequence);
        let temporary_path = final_path.with_extension("snap.tmp");
        // A leftover of an earlier failed attempt would make create_new fail.
        let _ = data_dir.fs().remove_file(&temporary_path);
        let file = data_dir.fs().create_new(&temporary_path)?;
        let mut snapshot = Self {
            data_dir,
            temporary_path,
            final_path,
            out: Some(AppendWriter(file)),
            encoded: Vec::new(),
            user_count: 0,
            size_bytes: files::FILE_HEADER_BYTES as u64,
        };
        let header = files::encode_header(
            files::SNAPSHOT_MAGIC,
            files::SNAPSHOT_FORMAT_VERSION,
            rotation_sequence,
        );
        snapshot.encoded.extend_from_slice(&header);
        snapshot.put(SnapshotPart::Header(SnapshotHeader { rotation_sequence }));
        Ok(snapshot)
    }

    fn put(&mut self, part: SnapshotPart) {
        let before = self.encoded.len();
        let record = SnapshotRecord { part: Some(part) };
        frame::encode_message(&record, frame::UNSALTED, &mut self.encoded);
        self.size_bytes += (self.encoded.len() - before) as u64;
    }

    /// Writes what was encoded so far once it passes `threshold_bytes`
    /// (0: always). Call it without holding any user's lock.
    pub fn write_encoded(&mut self, threshold_bytes: usize) -> std::io::Result<()> {
        if self.encoded.len() < threshold_bytes.max(1) {
            return Ok(());
        }
        let out =
            self.out.as_mut().ok_or_else(|| std::io::Error::other("the snapshot is finished"))?;
        out.write_all(&self.encoded)?;
        self.encoded.clear();
        self.encoded.shrink_to(ENCODED_KEEP_BYTES);
        Ok(())
    }

    /// Encodes one user's whole ledger, whose last journal record is
    /// `last_sequence`, in memory; [`SnapshotFile::write_encoded`] writes it.
    pub fn encode_user(
        &mut self,
        user_id: &str,
        last_sequence: u64,
        ledger: &Ledger,
    ) -> Result<(), InvariantViolation> {
        self.user_count += 1;
        encode_user_parts(user_id, last_sequence, ledger, &mut |part| self.put(part))
    }

    /// Writes the footer and everything still encoded, and makes the
    /// temporary file durable; returns its size.
    pub fn finish(&mut self) -> std::io::Result<u64> {
        let user_count = self.user_count;
        self.put(SnapshotPart::Footer(SnapshotFooter { user_count }));
        self.write_encoded(0)?;
        let mut file = self.out.take().ok_or_else(|| std::io::Error::other("finished twice"))?.0;
        file.sync()?;
        Ok(self.size_bytes)
    }

    /// Renames the finished snapshot into place, durably, and returns its
    /// path. Only call once the journal holds everything the snapshot does.
    pub fn publish(mut self) -> std::io::Result<PathBuf> {
        if self.out.is_some() {
            return Err(std::io::Error::other("the snapshot is not finished"));
        }
        let fs = self.data_dir.fs();
        fs.rename(&self.temporary_path, &self.final_path)?;
        self.temporary_path = PathBuf::new();
        self.data_dir.sync()?;
        Ok(self.final_path.clone())
    }
}

impl Drop for SnapshotFile<'_> {
    fn drop(&mut self) {
        if self.temporary_path.as_os_str().is_empty() {
            return;
        }
        self.out = None;
        if let Err(error) = self.data_dir.fs().remove_file(&self.temporary_path) {
            tracing::warn!(
                path = %self.temporary_path.display(),
                %error,
                "cannot remove an unfinished snapshot; start-up will"
            );
        }
    }
}

/// Puts one user's whole ledger as snapshot parts: its [`UserRecord`], then
/// its items in chunks. Checks the ledger first: a ledger broken in memory
/// must not become the only copy kept.
fn encode_user_parts(
    user_id: &str,
    last_sequence: u64,
    ledger: &Ledger,
    put: &mut dyn FnMut(SnapshotPart),
) -> Result<(), InvariantViolation> {
    ledger.check_invariants()?;
    let state = ledger.view();
    put(SnapshotPart::User(UserRecord {
        user_id: user_id.to_owned(),
        last_sequence,
        payer_count: state.payers.len() as u64,
        transaction_count: state.transactions.len() as u64,
        spend_count: state.spends.len() as u64,
        request_count: state.requests.len() as u64,
        hold_count: state.holds.len() as u64,
        event_count: state.events.len() as u64,
        clock_ms: state.clock_ms,
    }));
    for chunk in state.payers.chunks(ITEMS_PER_CHUNK) {
        put(SnapshotPart::Payers(PayersChunk {
            names: chunk.iter().map(|&(name, _)| name.to_owned()).collect(),
            balances: chunk.iter().map(|&(_, balance)| balance).collect(),
        }));
    }
    for chunk in state.transactions.chunks(ITEMS_PER_CHUNK) {
        put(SnapshotPart::Transactions(TransactionsChunk {
            payer_indices: chunk.iter().map(|record| record.payer_index).collect(),
            points: chunk.iter().map(|record| record.points).collect(),
            timestamp_seconds: chunk.iter().map(|record| record.timestamp.timestamp()).collect(),
            timestamp_nanos: chunk
                .iter()
                .map(|record| record.timestamp.timestamp_subsec_nanos())
                .collect(),
            accepted_at_ms: optional_column(chunk, |record| record.accepted_at_ms),
        }));
    }
    for chunk in state.spends.chunks(ITEMS_PER_CHUNK) {
        let taken = chunk.iter().flat_map(|spend| spend.taken.iter());
        put(SnapshotPart::Spends(SpendsChunk {
            points: chunk.iter().map(|spend| spend.points).collect(),
            transactions_before: chunk.iter().map(|spend| spend.transactions_before).collect(),
            taken_counts: chunk.iter().map(|spend| spend.taken.len() as u32).collect(),
            taken_payers: taken.clone().map(|&(payer, _)| payer).collect(),
            taken_points: taken.map(|&(_, points)| points).collect(),
            // Columns most spends leave at 0 are left out when all do.
            refunded: optional_column(chunk, |spend| spend.refunded),
            hold_ids: optional_column(chunk, |spend| spend.hold_id),
            accepted_at_ms: optional_column(chunk, |spend| spend.accepted_at_ms),
        }));
    }
    for chunk in state.holds.chunks(ITEMS_PER_CHUNK) {
        put(SnapshotPart::Holds(HoldsChunk { holds: chunk.iter().map(hold_entry).collect() }));
    }
    for chunk in state.events.chunks(ITEMS_PER_CHUNK) {
        put(SnapshotPart::Events(EventsChunk { events: chunk.iter().map(event_entry).collect() }));
    }
    for chunk in state.requests.chunks(ITEMS_PER_CHUNK) {
        let requests = chunk
            .iter()
            .map(|request| RequestEntry {
                request_id: request.request_id.clone(),
                accepted_at_ms: request.accepted_at_ms,
                command: Some(records::request_command_of(&request.params)),
                outcome_id: *request.outcome.as_ref().unwrap_or(&0),
                refusal: request.outcome.as_ref().err().map(records::refusal_of),
            })
            .collect();
        put(SnapshotPart::Requests(RequestsChunk { requests }));
    }
    Ok(())
}

fn hold_entry(hold: &HoldRecord) -> HoldEntry {
    let (state, spend_id) = match hold.state {
        HoldState::Open => (0, 0),
        HoldState::Captured { spend_id } => (1, spend_id),
        HoldState::Released { timed_out: false } => (2, 0),
        HoldState::Released { timed_out: true } => (3, 0),
    };
    HoldEntry {
        points: hold.points,
        taken_payers: hold.taken.iter().map(|&(payer, _)| payer).collect(),
        taken_points: hold.taken.iter().map(|&(_, points)| points).collect(),
        expire_at_ms: hold.expire_at_ms,
        state,
        spend_id,
    }
}

fn hold_of(entry: HoldEntry) -> Result<HoldRecord, String> {
    if entry.taken_payers.len() != entry.taken_points.len() {
        return Err("hold columns of different lengths".to_owned());
    }
    let state = match (entry.state, entry.spend_id) {
        (0, 0) => HoldState::Open,
        (1, spend_id) if spend_id > 0 => HoldState::Captured { spend_id },
        (2, 0) => HoldState::Released { timed_out: false },
        (3, 0) => HoldState::Released { timed_out: true },
        (state, spend_id) => return Err(format!("hold state {state} with spend {spend_id}")),
    };
    Ok(HoldRecord {
        points: entry.points,
        taken: entry.taken_payers.into_iter().zip(entry.taken_points).collect(),
        expire_at_ms: entry.expire_at_ms,
        state,
    })
}

fn event_entry(record: &EventRecord) -> EventEntry {
    let mut entry = EventEntry {
        transactions_before: record.transactions_before,
        spends_before: record.spends_before,
        accepted_at_ms: record.accepted_at_ms,
        ..EventEntry::default()
    };
    let pairs = match &record.event {
        Event::Hold { hold_id } => {
            (entry.kind, entry.id) = (1, *hold_id);
            &[][..]
        }
        Event::Release { hold_id, timed_out } => {
            (entry.kind, entry.id) = (if *timed_out { 3 } else { 2 }, *hold_id);
            &[][..]
        }
        Event::Refund { spend_id, refunded, refundable_after } => {
            (entry.kind, entry.id, entry.refundable_after) = (4, *spend_id, *refundable_after);
            &refunded[..]
        }
        Event::Expiration { expired } => {
            entry.kind = 5;
            &expired[..]
        }
    };
    entry.payers = pairs.iter().map(|&(payer, _)| payer).collect();
    entry.points = pairs.iter().map(|&(_, points)| points).collect();
    entry
}

fn event_of(entry: EventEntry) -> Result<EventRecord, String> {
    if entry.payers.len() != entry.points.len() {
        return Err("event columns of different lengths".to_owned());
    }
    let pairs: Vec<(u32, i64)> = entry.payers.into_iter().zip(entry.points).collect();
    let event = match (entry.kind, pairs.is_empty()) {
        (1, true) => Event::Hold { hold_id: entry.id },
        (2 | 3, true) => Event::Release { hold_id: entry.id, timed_out: entry.kind == 3 },
        (4, false) => Event::Refund {
            spend_id: entry.id,
            refunded: pairs,
            refundable_after: entry.refundable_after,
        },
        (5, false) => Event::Expiration { expired: pairs },
        (kind, _) => return Err(format!("an event of kind {kind} is malformed")),
    };
    Ok(EventRecord {
        transactions_before: entry.transactions_before,
        spends_before: entry.spends_before,
        accepted_at_ms: entry.accepted_at_ms,
        event,
    })
}

/// A column most items leave at 0, left out (empty) when all of them do.
fn optional_column<T, V: Default + PartialEq>(items: &[T], value: impl Fn(&T) -> V) -> Vec<V> {
    if items.iter().any(|item| value(item) != V::default()) {
        items.iter().map(value).collect()
    } else {
        Vec::new()
    }
}

/// One user's snapshot on its own, as framed, checksummed snapshot parts:
/// what a database keeps per user so that loading a user with a long
/// history does not replay all of it.
pub fn encode_one_user(
    user_id: &str,
    last_sequence: u64,
    ledger: &Ledger,
) -> Result<Vec<u8>, InvariantViolation> {
    let mut encoded = Vec::new();
    encode_user_parts(user_id, last_sequence, ledger, &mut |part| {
        frame::encode_message(&SnapshotRecord { part: Some(part) }, frame::UNSALTED, &mut encoded);
    })?;
    Ok(encoded)
}

/// Reads and fully checks what [`encode_one_user`] wrote.
pub fn decode_one_user(encoded: &[u8]) -> Result<UserSnapshot, String> {
    let mut user: Option<UserReader> = None;
    let ending = frame::scan(encoded, 0, frame::UNSALTED, |_, payload| {
        let record = SnapshotRecord::decode(payload).map_err(|error| error.to_string())?;
        match (record.part.ok_or("a snapshot record with no part")?, &mut user) {
            (SnapshotPart::User(record), None) => {
                user = Some(UserReader::new(record));
                Ok(())
            }
            (SnapshotPart::User(_), Some(_)) => Err("a second user".to_owned()),
            (_, None) => Err("user data before the user".to_owned()),
            (part, Some(reader)) => reader.accept(part),
        }
    })
    .map_err(|damage| format!("at byte {}: {}", damage.offset, damage.reason))?;
    if ending != frame::Ending::Clean {
        return Err(format!("the snapshot is incomplete: {ending:?}"));
    }
    user.ok_or("the snapshot holds no user")?.finish()
}

/// Reads and fully checks the snapshot at `path`, named for `rotation_sequence`.
pub fn read(
    fs: &dyn FileSystem,
    path: &Path,
    rotation_sequence: u64,
) -> Result<Vec<UserSnapshot>, OpenError> {
    let data = fs.read(path).map_err(files::io_error("read", path))?;
    let damaged = |offset: usize, reason: String| OpenError::Damaged {
        path: path.to_owned(),
        offset,
        reason,
    };
    let base = files::decode_header(
        path,
        &data,
        files::SNAPSHOT_MAGIC,
        &[files::SNAPSHOT_FORMAT_VERSION],
    )?
    .base_sequence;
    if base != rotation_sequence {
        return Err(damaged(
            0,
            format!("header says sequence {base}, the name says {rotation_sequence}"),
        ));
    }
    let mut reader = SnapshotReader::default();
    let ending = frame::scan(&data, files::FILE_HEADER_BYTES, frame::UNSALTED, |_, payload| {
        let record = SnapshotRecord::decode(payload).map_err(|error| error.to_string())?;
        reader.accept(record.part.ok_or("a snapshot record with no part")?)
    })
    .map_err(|damage| damaged(damage.offset, damage.reason))?;
    if ending != frame::Ending::Clean {
        return Err(damaged(data.len(), format!("the snapshot is incomplete: {ending:?}")));
    }
    reader.finish(rotation_sequence).map_err(|reason| damaged(data.len(), reason))
}

/// Rebuilds users from snapshot records, checking their order and counts.
#[derive(Default)]
struct SnapshotReader {
    header: Option<SnapshotHeader>,
    /// Finished users.
    users: Vec<UserSnapshot>,
    /// The user being read.
    current: Option<UserReader>,
    footer: Option<SnapshotFooter>,
}

impl SnapshotReader {
    fn accept(&mut self, part: SnapshotPart) -> Result<(), String> {
        if self.footer.is_some() {
            return Err("data after the snapshot footer".to_owned());
        }
        if self.header.is_none() && !matches!(part, SnapshotPart::Header(_)) {
            return Err("the snapshot does not start with a header".to_owned());
        }
        match part {
            SnapshotPart::Header(header) => {
                if self.header.replace(header).is_some() {
                    return Err("a second snapshot header".to_owned());
                }
            }
            SnapshotPart::User(user) => {
                self.finish_user()?;
                self.current = Some(UserReader::new(user));
            }
            SnapshotPart::Footer(footer) => {
                self.finish_user()?;
                self.footer = Some(footer);
            }
            part => {
                self.current.as_mut().ok_or("user data before any user")?.accept(part)?;
            }
        }
        Ok(())
    }

    fn finish_user(&mut self) -> Result<(), String> {
        if let Some(user) = self.current.take() {
            self.users.push(user.finish()?);
        }
        Ok(())
    }

    fn finish(self, rotation_sequence: u64) -> Result<Vec<UserSnapshot>, String> {
        let header = self.header.ok_or("the snapshot has no header")?;
        let footer = self.footer.ok_or("the snapshot has no footer: it is incomplete")?;
        if header.rotation_sequence != rotation_sequence {
            return Err(format!("the header says sequence {}", header.rotation_sequence));
        }
        if footer.user_count != self.users.len() as u64 {
            return Err(format!(
                "the footer counts {} users, the snapshot holds {}",
                footer.user_count,
                self.users.len()
            ));
        }
        Ok(self.users)
    }
}

/// Rebuilds one user from the parts after its [`UserRecord`], checking
/// their counts against it.
struct UserReader {
    user: UserRecord,
    state: LedgerState,
}

impl UserReader {
    fn new(user: UserRecord) -> Self {
        Self { user, state: LedgerState::default() }
    }

    /// Takes one chunk of the user's items.
    fn accept(&mut self, part: SnapshotPart) -> Result<(), String> {
        let state = &mut self.state;
        match part {
            SnapshotPart::Payers(chunk) => {
                if chunk.names.len() != chunk.balances.len() {
                    return Err("payer columns of different lengths".to_owned());
                }
                state.payers.extend(chunk.names.into_iter().zip(chunk.balances));
            }
            SnapshotPart::Transactions(chunk) => {
                let count = chunk.points.len();
                if [
                    chunk.payer_indices.len(),
                    chunk.timestamp_seconds.len(),
                    chunk.timestamp_nanos.len(),
                ]
                .iter()
                .any(|&length| length != count)
                    || !(chunk.accepted_at_ms.is_empty() || chunk.accepted_at_ms.len() == count)
                {
                    return Err("transaction columns of different lengths".to_owned());
                }
                for index in 0..count {
                    state.transactions.push(TransactionRecord {
                        payer_index: chunk.payer_indices[index],
                        points: chunk.points[index],
                        timestamp: records::timestamp(
                            chunk.timestamp_seconds[index],
                            chunk.timestamp_nanos[index],
                        )?,
                        accepted_at_ms: chunk.accepted_at_ms.get(index).copied().unwrap_or(0),
                    });
                }
            }
            SnapshotPart::Spends(chunk) => {
                let count = chunk.points.len();
                let pairs: usize = chunk.taken_counts.iter().map(|&count| count as usize).sum();
                let optional_fits = |length: usize| length == 0 || length == count;
                if chunk.transactions_before.len() != count
                    || chunk.taken_counts.len() != count
                    || chunk.taken_payers.len() != pairs
                    || chunk.taken_points.len() != pairs
                    || !optional_fits(chunk.refunded.len())
                    || !optional_fits(chunk.hold_ids.len())
                    || !optional_fits(chunk.accepted_at_ms.len())
                {
                    return Err("spend columns of different lengths".to_owned());
                }
                let mut taken = chunk.taken_payers.into_iter().zip(chunk.taken_points);
                for index in 0..count {
                    state.spends.push(SpendRecord {
                        points: chunk.points[index],
                        transactions_before: chunk.transactions_before[index],
                        taken: taken.by_ref().take(chunk.taken_counts[index] as usize).collect(),
                        refunded: chunk.refunded.get(index).copied().unwrap_or(0),
                        hold_id: chunk.hold_ids.get(index).copied().unwrap_or(0),
                        accepted_at_ms: chunk.accepted_at_ms.get(index).copied().unwrap_or(0),
                    });
                }
            }
            SnapshotPart::Holds(chunk) => {
                for entry in chunk.holds {
                    state.holds.push(hold_of(entry)?);
                }
            }
            SnapshotPart::Events(chunk) => {
                for entry in chunk.events {
                    state.events.push(event_of(entry)?);
                }
            }
            SnapshotPart::Requests(chunk) => {
                for entry in chunk.requests {
                    let command = entry.command.as_ref().ok_or("a request without parameters")?;
                    let outcome = match &entry.refusal {
                        Some(refusal) => Err(records::error_of(refusal)?),
                        None => Ok(entry.outcome_id),
                    };
                    state.requests.push(RequestRecord {
                        request_id: entry.request_id,
                        params: records::params_of(command)?,
                        outcome,
                        accepted_at_ms: entry.accepted_at_ms,
                    });
                }
            }
            SnapshotPart::Header(_) | SnapshotPart::User(_) | SnapshotPart::Footer(_) => {
                return Err("a snapshot header, user or footer inside a user".to_owned());
            }
        }
        Ok(())
    }

    /// The user, once the counts its record announced are all there.
    fn finish(self) -> Result<UserSnapshot, String> {
        let Self { user, mut state } = self;
        state.clock_ms = user.clock_ms;
        let counts = [
            state.payers.len(),
            state.transactions.len(),
            state.spends.len(),
            state.requests.len(),
            state.holds.len(),
            state.events.len(),
        ]
        .map(|count| count as u64);
        let announced = [
            user.payer_count,
            user.transaction_count,
            user.spend_count,
            user.request_count,
            user.hold_count,
            user.event_count,
        ];
        if counts != announced {
            return Err(format!(
                "user {:?} holds {counts:?} items, its record says {announced:?}",
                user.user_id
            ));
        }
        let ledger = Ledger::restore(state)
            .map_err(|reason| format!("user {:?}: {reason}", user.user_id))?;
        Ok(UserSnapshot { user_id: user.user_id, last_sequence: user.last_sequence, ledger })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::{decode_one_user, encode_one_user};
    use crate::ledger::Ledger;

    fn ledger() -> Ledger {
        let mut ledger = Ledger::new();
        for (day, payer, points) in [(1, "DANNON", 300), (2, "UNILEVER", 200), (3, "DANNON", -200)]
        {
            let when = Utc.with_ymd_and_hms(2024, 1, day, 0, 0, 0).single().expect("a time");
            ledger.add_transaction(payer, points, when).expect("accepted");
        }
        ledger.spend(150).expect("spent");
        ledger
    }

    /// Serialised state, for comparing ledgers.
    fn encoded(ledger: &Ledger) -> Vec<u8> {
        encode_one_user("u", 0, ledger).expect("a consistent ledger")
    }

    #[test]
    fn one_users_snapshot_reads_back_as_the_same_ledger() {
        let ledger = ledger();
        let bytes = encode_one_user("user-1", 42, &ledger).expect("a consistent ledger");
        let read = decode_one_user(&bytes).expect("reads back");
        assert_eq!((read.user_id.as_str(), read.last_sequence), ("user-1", 42));
        assert_eq!(encoded(&read.ledger), encoded(&ledger));
    }

    #[test]
    fn a_cut_or_changed_snapshot_of_one_user_is_refused() {
        let bytes = encode_one_user("user-1", 42, &ledger()).expect("a consistent ledger");
        for length in 0..bytes.len() {
            assert!(decode_one_user(&bytes[..length]).is_err(), "cut at {length} accepted");
        }
        for index in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[index] ^= 0x10;
            assert!(decode_one_user(&changed).is_err(), "a flip at byte {index} accepted");
        }
    }
}
