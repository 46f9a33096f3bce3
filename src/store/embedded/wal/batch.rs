//! Batches: the unit the journal writes, syncs and tears. A batch is one
//! checksummed frame holding the sequence of its first record, its record
//! count, the highest sequence synced before it was written, and its records,
//! each length-prefixed. Generic: records are opaque bytes here.

use super::frame::{self, FRAME_HEADER_BYTES, MAX_PAYLOAD_BYTES};

/// Bytes of a batch header inside its frame: first sequence (u64 LE),
/// record count (u32 LE), synced-through sequence (u64 LE).
pub const BATCH_HEADER_BYTES: usize = 20;

/// Bytes of the length (u32 LE) before each record inside a batch. Records
/// carry no checksum of their own (the batch's covers them), so no record
/// inside a torn batch can pass for a valid frame when reading looks for
/// valid data after a torn one.
pub const RECORD_LENGTH_BYTES: usize = 4;

/// Appends `record` to `out`, length-prefixed, as batches hold it.
pub fn encode_record(record: &impl prost::Message, out: &mut Vec<u8>) {
    let length = record.encoded_len();
    assert!(
        length <= MAX_PAYLOAD_BYTES - BATCH_HEADER_BYTES - RECORD_LENGTH_BYTES,
        "record of {length} bytes is too large"
    );
    out.reserve(RECORD_LENGTH_BYTES + length);
    out.extend_from_slice(&(length as u32).to_le_bytes());
    record.encode_raw(out);
}

/// Frames the first records of `records` (length-prefixed by
/// [`encode_record`], `count` of them, the first with sequence
/// `first_sequence`) as one batch appended to `out`, taking as many as fit
/// under the frame size limit (at least one, or none for an empty batch when
/// `count` is 0). Returns how many records and bytes of `records` it took.
///
/// `synced_through` is the highest sequence fsynced before this batch is
/// written: reading uses it to tell damage (an invalid batch that a later
/// batch says was synced) from the unsynced end of a journal written under
/// `--fsync never`, whose batches may reach the disk in any order. `seed` is
/// the segment's checksum seed.
pub fn encode_batch(
    records: &[u8],
    count: usize,
    first_sequence: u64,
    synced_through: u64,
    seed: u32,
    out: &mut Vec<u8>,
) -> (usize, usize) {
    let (mut length, mut taken) = (0, 0);
    // Each turn takes one record, so this ends within `count` turns.
    while taken < count {
        let record = RECORD_LENGTH_BYTES + record_length(&records[length..]);
        if taken > 0 && BATCH_HEADER_BYTES + length + record > MAX_PAYLOAD_BYTES {
            break;
        }
        length += record;
        taken += 1;
    }
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    out.extend_from_slice(&first_sequence.to_le_bytes());
    out.extend_from_slice(&(taken as u32).to_le_bytes());
    out.extend_from_slice(&synced_through.to_le_bytes());
    out.extend_from_slice(&records[..length]);
    frame::seal(out, start, seed);
    (taken, length)
}

/// Frames all `count` records of `records` as batches, each marked as
/// written after everything before it was synced: for tools that write a
/// whole journal segment offline and sync it.
#[cfg(any(test, feature = "testing"))]
pub fn encode_batches(
    records: &[u8],
    count: usize,
    first_sequence: u64,
    seed: u32,
    out: &mut Vec<u8>,
) {
    let (mut rest, mut left, mut sequence) = (records, count, first_sequence);
    // Each turn takes at least one record, so this ends within `count` turns.
    while left > 0 {
        let (taken, bytes) = encode_batch(rest, left, sequence, sequence - 1, seed, out);
        (rest, left, sequence) = (&rest[bytes..], left - taken, sequence + taken as u64);
    }
    assert!(rest.is_empty(), "the record count must match the records");
}

/// The length of the record at the start of `bytes`, which this process
/// encoded itself.
fn record_length(bytes: &[u8]) -> usize {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
}

/// One batch as read back.
#[derive(Debug)]
pub struct Batch<'data> {
    /// The sequence of its first record.
    pub first_sequence: u64,
    /// The highest sequence fsynced before it was written.
    pub synced_through: u64,
    /// Its records, encoded.
    pub records: Vec<&'data [u8]>,
}

/// Reads one batch frame's payload.
pub fn decode_batch(payload: &[u8]) -> Result<Batch<'_>, String> {
    let Some(header) = payload.get(..BATCH_HEADER_BYTES) else {
        return Err("a journal batch shorter than its header".to_owned());
    };
    let first_sequence = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
    let synced_through = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let mut records = Vec::with_capacity(count.min(payload.len() / RECORD_LENGTH_BYTES));
    let mut rest = &payload[BATCH_HEADER_BYTES..];
    // Each turn consumes at least the length bytes, so this ends.
    while !rest.is_empty() {
        let Some(length) = rest.get(..RECORD_LENGTH_BYTES) else {
            return Err("a journal batch ends inside a record length".to_owned());
        };
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        let Some(record) = rest.get(RECORD_LENGTH_BYTES..RECORD_LENGTH_BYTES + length) else {
            return Err("a journal batch ends inside a record".to_owned());
        };
        records.push(record);
        rest = &rest[RECORD_LENGTH_BYTES + length..];
    }
    // The batch's own checksum passed, so anything odd inside is damage.
    if records.len() != count {
        return Err(format!(
            "a journal batch announces {count} records but holds {}",
            records.len()
        ));
    }
    Ok(Batch { first_sequence, synced_through, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    /// Batches read back as the records they were made of, with their sequence.
    #[test]
    fn batches_round_trip_with_their_first_sequence() {
        let records = record_frames(&[b"one", b"", b"three"]);
        let mut out = Vec::new();
        encode_batches(&records, 3, 41, 9, &mut out);
        let mut seen = Vec::new();
        let ending = frame::scan(&out, 0, 9, |_, payload| {
            let batch = decode_batch(payload)?;
            assert_eq!(batch.synced_through, 40);
            let records = batch.records.iter().map(|record| record.to_vec()).collect::<Vec<_>>();
            seen.push((batch.first_sequence, records));
            Ok(())
        });
        assert_eq!(ending, Ok(frame::Ending::Clean));
        assert_eq!(seen, vec![(41, vec![b"one".to_vec(), vec![], b"three".to_vec()])]);
    }

    /// Records past the frame size limit are split into several batches,
    /// each numbered from its own first record.
    #[test]
    fn large_batches_split_at_record_boundaries() {
        let big = vec![7u8; MAX_PAYLOAD_BYTES / 2];
        let records = record_frames(&[&big, &big, b"small"]);
        let mut out = Vec::new();
        encode_batches(&records, 3, 1, 0, &mut out);
        let mut firsts = Vec::new();
        frame::scan(&out, 0, 0, |_, payload| {
            let batch = decode_batch(payload)?;
            firsts.push((batch.first_sequence, batch.records.len()));
            Ok(())
        })
        .expect("valid batches");
        assert_eq!(firsts, vec![(1, 1), (2, 2)]);
    }

    /// A batch whose record count disagrees with its records is refused.
    #[test]
    fn batch_with_a_wrong_record_count_is_refused() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&2u32.to_le_bytes());
        payload.extend_from_slice(&0u64.to_le_bytes());
        payload.extend_from_slice(&record_frames(&[b"only one"]));
        assert!(decode_batch(&payload).is_err());
        assert!(decode_batch(&payload[..BATCH_HEADER_BYTES - 1]).is_err(), "a cut header");
    }
}
