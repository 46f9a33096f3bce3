//! Snapshots: the whole ledger as of one journal sequence, so that start-up
//! reads one compact file instead of replaying all history, and old journal
//! segments can be removed.
//!
//! A snapshot is written to a temporary file, fsynced, renamed into place and
//! the directory fsynced, so a snapshot under its final name is always
//! complete; its footer and checksums prove it on reading.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use prost::Message;

use super::OpenError;
use super::files::{self, DataDir};
use super::frame;
use super::records::{
    LotsRecord, PayerRecord, SnapshotFooter, SnapshotHeader, SnapshotPart, SnapshotRecord,
};
use crate::ledger::{Ledger, Lot, PayerState};

/// Lots per Lots record: large enough to amortise framing, small enough to
/// keep each frame far under the frame size limit (~100 KiB).
const LOTS_PER_RECORD: usize = 4096;

/// Writes `ledger`, which reflects every journal record up to `last_sequence`,
/// as a durable snapshot, and returns its size in bytes.
pub fn write(data_dir: &DataDir, last_sequence: u64, ledger: &Ledger) -> std::io::Result<u64> {
    let final_path = data_dir.snapshot_path(last_sequence);
    let temporary_path = final_path.with_extension("snap.tmp");
    let file = File::create(&temporary_path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&files::encode_header(files::SNAPSHOT_MAGIC, last_sequence))?;

    let mut frame_buffer = Vec::new();
    let mut put = |out: &mut BufWriter<File>, part: SnapshotPart| -> std::io::Result<()> {
        frame_buffer.clear();
        frame::encode_message(&SnapshotRecord { part: Some(part) }, &mut frame_buffer);
        out.write_all(&frame_buffer)
    };
    put(
        &mut out,
        SnapshotPart::Header(SnapshotHeader {
            last_sequence,
            next_transaction_id: ledger.next_transaction_id(),
        }),
    )?;
    let (mut payer_count, mut lot_count) = (0u64, 0u64);
    for state in ledger.payer_states() {
        payer_count += 1;
        lot_count += state.lots.len() as u64;
        put(
            &mut out,
            SnapshotPart::Payer(PayerRecord {
                name: state.name,
                balance: state.balance,
                lot_count: state.lots.len() as u64,
            }),
        )?;
        for chunk in state.lots.chunks(LOTS_PER_RECORD) {
            put(
                &mut out,
                SnapshotPart::Lots(LotsRecord {
                    timestamp_seconds: chunk.iter().map(|lot| lot.timestamp.timestamp()).collect(),
                    timestamp_nanos: chunk
                        .iter()
                        .map(|lot| lot.timestamp.timestamp_subsec_nanos())
                        .collect(),
                    transaction_ids: chunk.iter().map(|lot| lot.id).collect(),
                    points: chunk.iter().map(|lot| lot.points).collect(),
                }),
            )?;
        }
    }
    put(
        &mut out,
        SnapshotPart::Footer(SnapshotFooter { payer_count, lot_count, total: ledger.total() }),
    )?;

    let file = out.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()?;
    let size_bytes = file.metadata()?.len();
    drop(file);
    fs::rename(&temporary_path, &final_path)?;
    data_dir.sync()?;
    Ok(size_bytes)
}

/// Reads and fully checks the snapshot at `path`, named for `last_sequence`.
pub fn read(path: &Path, last_sequence: u64) -> Result<Ledger, OpenError> {
    let data = fs::read(path).map_err(files::io_error("read", path))?;
    let damaged = |offset: usize, reason: String| OpenError::Damaged {
        path: path.to_owned(),
        offset,
        reason,
    };
    let base = files::decode_header(path, &data, files::SNAPSHOT_MAGIC)?;
    if base != last_sequence {
        return Err(damaged(
            0,
            format!("header says sequence {base}, the name says {last_sequence}"),
        ));
    }

    let mut reader = SnapshotReader::default();
    let ending = frame::scan(&data, files::FILE_HEADER_BYTES, |_, payload| {
        let record = SnapshotRecord::decode(payload).map_err(|error| error.to_string())?;
        reader.accept(record.part.ok_or("a snapshot record with no part")?)
    })
    .map_err(|damage| damaged(damage.offset, damage.reason))?;
    if ending != frame::Ending::Clean {
        return Err(damaged(data.len(), format!("the snapshot is incomplete: {ending:?}")));
    }
    reader.finish().map_err(|reason| damaged(data.len(), reason))
}

/// Rebuilds payer states from snapshot records, checking their order.
#[derive(Default)]
struct SnapshotReader {
    header: Option<SnapshotHeader>,
    payers: Vec<PayerState>,
    lots_expected: u64,
    footer: Option<SnapshotFooter>,
}

impl SnapshotReader {
    fn accept(&mut self, part: SnapshotPart) -> Result<(), String> {
        if self.footer.is_some() {
            return Err("data after the snapshot footer".to_owned());
        }
        match part {
            SnapshotPart::Header(header) => {
                if self.header.replace(header).is_some() {
                    return Err("a second snapshot header".to_owned());
                }
            }
            _ if self.header.is_none() => {
                return Err("the snapshot does not start with a header".to_owned());
            }
            SnapshotPart::Payer(payer) => {
                self.check_lots_complete()?;
                self.lots_expected = payer.lot_count;
                self.payers.push(PayerState {
                    name: payer.name,
                    balance: payer.balance,
                    lots: Vec::new(),
                });
            }
            SnapshotPart::Lots(lots) => {
                let payer = self.payers.last_mut().ok_or("lots before any payer")?;
                let count = lots.points.len();
                if lots.timestamp_seconds.len() != count
                    || lots.timestamp_nanos.len() != count
                    || lots.transaction_ids.len() != count
                {
                    return Err("lot columns of different lengths".to_owned());
                }
                for index in 0..count {
                    payer.lots.push(Lot {
                        timestamp: super::records::timestamp(
                            lots.timestamp_seconds[index],
                            lots.timestamp_nanos[index],
                        )?,
                        id: lots.transaction_ids[index],
                        points: lots.points[index],
                    });
                }
            }
            SnapshotPart::Footer(footer) => {
                self.check_lots_complete()?;
                self.footer = Some(footer);
            }
        }
        Ok(())
    }

    fn check_lots_complete(&self) -> Result<(), String> {
        match self.payers.last() {
            Some(payer) if payer.lots.len() as u64 != self.lots_expected => Err(format!(
                "payer {:?} has {} lots, its record says {}",
                payer.name,
                payer.lots.len(),
                self.lots_expected
            )),
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<Ledger, String> {
        let header = self.header.ok_or("the snapshot has no header")?;
        let footer = self.footer.ok_or("the snapshot has no footer: it is incomplete")?;
        let lot_count: u64 = self.payers.iter().map(|payer| payer.lots.len() as u64).sum();
        if footer.payer_count != self.payers.len() as u64 || footer.lot_count != lot_count {
            return Err(format!(
                "the footer counts {} payers and {} lots, the snapshot holds {} and {lot_count}",
                footer.payer_count,
                footer.lot_count,
                self.payers.len()
            ));
        }
        let ledger = Ledger::restore(header.next_transaction_id, self.payers)?;
        if ledger.total() != footer.total {
            return Err(format!(
                "the footer total {} != restored total {}",
                footer.total,
                ledger.total()
            ));
        }
        Ok(ledger)
    }
}
