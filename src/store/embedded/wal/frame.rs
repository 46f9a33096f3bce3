//! Checksummed, length-prefixed frames: the unit of every durable file.
//!
//! A frame is a 12-byte header, then the payload:
//! `payload length (u32 LE) | CRC32C of the length bytes (u32 LE) | CRC32C of the payload (u32 LE)`.
//! The length has its own checksum so that a damaged length is reported as
//! damage instead of being mistaken for a torn write at the end of the file.
//!
//! Reading tells three endings apart:
//! - clean: the last frame ends exactly at the end of the data;
//! - torn: a frame is invalid (cut short, zero-filled, or failing a checksum)
//!   and no valid frame starts anywhere after it. That is how an unfinished
//!   last write looks after a crash or power cut, whatever parts of it reached
//!   the disk, so the caller may cut it off, as PostgreSQL ends its WAL at the
//!   first invalid record;
//! - damaged: an invalid frame with a valid frame somewhere after it. Data
//!   that was written after it was complete, so this is not a torn write:
//!   nothing is dropped silently, the caller refuses to start.

/// The checksum seed of files whose frames are not salted (snapshots, and
/// journal segments of format version 1).
pub const UNSALTED: u32 = 0;

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 12;

/// The largest payload accepted. Journal records are well under 1 KiB and
/// snapshot records are chunked far below this; a larger length is damage.
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// Appends one frame holding `payload` to `out`, its checksums seeded with
/// `seed` (a file's salt, so that bytes a client chose can never pass for
/// a frame of that file; [`UNSALTED`] for none).
#[cfg(any(test, feature = "testing"))]
pub fn encode(payload: &[u8], seed: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    out.extend_from_slice(payload);
    seal(out, start, seed);
}

/// How a run of frames ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The last frame ended exactly at the end of the data.
    Clean,
    /// The data ends in an unfinished frame starting at `offset`.
    Torn {
        /// Where the unfinished frame starts; everything before it is valid.
        offset: usize,
        /// What was unfinished, for the log.
        reason: &'static str,
    },
}

/// Damage found while reading frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the damaged frame.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// Reads the frames in `data` from `start`, handing each payload and its
/// offset to `visit` (whose error is reported as damage at that offset).
pub fn scan<'data>(
    data: &'data [u8],
    start: usize,
    seed: u32,
    visit: impl FnMut(usize, &'data [u8]) -> Result<(), String>,
) -> Result<Ending, Damage> {
    match scan_until_invalid(data, start, seed, visit)? {
        None => Ok(Ending::Clean),
        Some((offset, reason)) => match valid_frames_after(data, offset, seed).next() {
            None => Ok(Ending::Torn { offset, reason }),
            Some((valid, _)) => Err(Damage {
                offset,
                reason: format!("{reason}, with a valid frame after it at byte offset {valid}"),
            }),
        },
    }
}

/// Reads the frames in `data` from `start` like [`scan`], stopping at the
/// first invalid frame: returns its offset and what is wrong with it, or
/// `None` if every frame was valid up to the end. The caller decides whether
/// that frame is a torn end or damage.
pub fn scan_until_invalid<'data>(
    data: &'data [u8],
    start: usize,
    seed: u32,
    mut visit: impl FnMut(usize, &'data [u8]) -> Result<(), String>,
) -> Result<Option<(usize, &'static str)>, Damage> {
    let mut offset = start;
    // Each turn consumes at least one header, so this ends within data.len() turns.
    while offset < data.len() {
        let payload = match check_frame(&data[offset..], seed) {
            Ok(payload) => payload,
            Err(reason) => {
                let zeros = data[offset..].iter().all(|&byte| byte == 0);
                return Ok(Some((offset, if zeros { "zero-filled tail" } else { reason })));
            }
        };
        visit(offset, payload).map_err(|reason| Damage { offset, reason })?;
        offset += FRAME_HEADER_BYTES + payload.len();
    }
    Ok(None)
}

/// Every valid frame that starts after byte `offset` of `data` (at any byte,
/// not only where the frame at `offset` claims to end), with its offset.
pub fn valid_frames_after(
    data: &[u8],
    offset: usize,
    seed: u32,
) -> impl Iterator<Item = (usize, &[u8])> {
    let mut candidate = offset + 1;
    // Bounded by the data's length; the length checksum rejects almost every
    // offset after four bytes, so this is linear in practice.
    std::iter::from_fn(move || {
        while candidate < data.len() {
            let at = candidate;
            if let Ok(payload) = check_frame(&data[at..], seed) {
                candidate = at + FRAME_HEADER_BYTES + payload.len();
                return Some((at, payload));
            }
            candidate += 1;
        }
        None
    })
}

/// The payload of the frame at the start of `data`, or why there is no
/// valid frame there.
fn check_frame(data: &[u8], seed: u32) -> Result<&[u8], &'static str> {
    let Some(header) = data.get(..FRAME_HEADER_BYTES) else {
        return Err("incomplete frame header");
    };
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    // O(1) per call: reading looks for valid frames at every byte after an
    // invalid one, so nothing here may scan the rest of the data.
    if crc32c::crc32c_append(seed, &header[0..4]) != word(4) {
        return Err("frame length checksum mismatch");
    }
    let length = word(0) as usize;
    if length > MAX_PAYLOAD_BYTES {
        return Err("frame length exceeds the maximum");
    }
    let Some(payload) = data.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length) else {
        return Err("incomplete frame payload");
    };
    if crc32c::crc32c_append(seed, payload) != word(8) {
        return Err("frame payload checksum mismatch");
    }
    Ok(payload)
}

/// Appends one frame holding `message`, encoded in place (no extra copy).
pub fn encode_message(message: &impl prost::Message, seed: u32, out: &mut Vec<u8>) {
    let length = message.encoded_len();
    assert!(length <= MAX_PAYLOAD_BYTES, "record of {length} bytes is too large");
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    message.encode_raw(out);
    debug_assert_eq!(out.len() - start - FRAME_HEADER_BYTES, length);
    seal(out, start, seed);
}

/// Completes the frame that starts at `start` in `out`: its header was
/// reserved (any bytes) and its payload is everything after the header.
pub fn seal(out: &mut [u8], start: usize, seed: u32) {
    let payload_start = start + FRAME_HEADER_BYTES;
    let length = out.len() - payload_start;
    assert!(length <= MAX_PAYLOAD_BYTES, "payload of {length} bytes is too large");
    let length_bytes = (length as u32).to_le_bytes();
    let payload_checksum = crc32c::crc32c_append(seed, &out[payload_start..]);
    out[start..start + 4].copy_from_slice(&length_bytes);
    let length_checksum = crc32c::crc32c_append(seed, &length_bytes);
    out[start + 4..start + 8].copy_from_slice(&length_checksum.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&payload_checksum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            encode(payload, UNSALTED, &mut out);
        }
        out
    }

    fn collect(data: &[u8]) -> (Vec<Vec<u8>>, Result<Ending, Damage>) {
        let mut seen = Vec::new();
        let ending = scan(data, 0, UNSALTED, |_, payload| {
            seen.push(payload.to_vec());
            Ok(())
        });
        (seen, ending)
    }

    /// A message encoded in place reads back like one encoded separately.
    #[test]
    fn encode_message_matches_encode() {
        let message = prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 };
        let mut in_place = Vec::new();
        encode_message(&message, 7, &mut in_place);
        let mut separate = Vec::new();
        encode(&prost::Message::encode_to_vec(&message), 7, &mut separate);
        assert_eq!(in_place, separate);
    }

    /// Frames read back exactly, in order, ending clean.
    #[test]
    fn frames_round_trip() {
        let data = frames(&[b"one", b"", b"three"]);
        let (seen, ending) = collect(&data);
        assert_eq!(seen, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(ending, Ok(Ending::Clean));
    }

    /// Cutting the data anywhere inside the last frame is a torn tail at its start.
    #[test]
    fn every_cut_inside_the_last_frame_is_torn() {
        let data = frames(&[b"first", b"second record"]);
        let last = FRAME_HEADER_BYTES + 5;
        for cut in last + 1..data.len() {
            let (seen, ending) = collect(&data[..cut]);
            assert_eq!(seen, vec![b"first".to_vec()], "cut at {cut}");
            assert!(
                matches!(ending, Ok(Ending::Torn { offset, .. }) if offset == last),
                "cut at {cut}: {ending:?}"
            );
        }
    }

    /// Zeros after the last frame (a file extended but never written) are torn, not damage.
    #[test]
    fn zero_filled_tail_is_torn() {
        let mut data = frames(&[b"first"]);
        data.extend_from_slice(&[0; 100]);
        let (seen, ending) = collect(&data);
        assert_eq!(seen.len(), 1);
        assert!(matches!(ending, Ok(Ending::Torn { reason: "zero-filled tail", .. })));
    }

    /// A flipped bit anywhere in a frame followed by another frame is damage at its offset.
    #[test]
    fn flipped_byte_before_the_last_frame_is_damage() {
        let data = frames(&[b"first", b"second", b"third"]);
        let second = FRAME_HEADER_BYTES + 5;
        for index in second..second + FRAME_HEADER_BYTES + 6 {
            let mut damaged = data.clone();
            damaged[index] ^= 0x40;
            let (_, ending) = collect(&damaged);
            assert_eq!(ending.map_err(|damage| damage.offset), Err(second), "byte {index}");
        }
    }

    /// A last frame whose header landed but whose payload did not (zeros, or
    /// only some of its sectors) is the torn end, not damage.
    #[test]
    fn last_frame_failing_its_payload_checksum_is_torn() {
        let data = frames(&[b"first", b"a second record, long enough"]);
        let last = FRAME_HEADER_BYTES + 5;
        for index in last..data.len() {
            let mut damaged = data.clone();
            damaged[index] ^= 0x5a;
            let (seen, ending) = collect(&damaged);
            assert_eq!(seen, vec![b"first".to_vec()], "byte {index}");
            assert!(
                matches!(ending, Ok(Ending::Torn { offset, .. }) if offset == last),
                "byte {index}: {ending:?}"
            );
        }
        let mut zero_payload = data.clone();
        zero_payload[last + FRAME_HEADER_BYTES..].fill(0);
        assert!(
            matches!(collect(&zero_payload).1, Ok(Ending::Torn { offset, .. }) if offset == last)
        );
    }

    /// An invalid frame followed by garbage that is not a valid frame is torn.
    #[test]
    fn garbage_after_a_torn_frame_is_still_torn() {
        let mut data = frames(&[b"first"]);
        data.extend_from_slice(&[7u8; 40]);
        assert!(
            matches!(collect(&data).1, Ok(Ending::Torn { offset, .. }) if offset == FRAME_HEADER_BYTES + 5)
        );
    }

    /// A visitor's refusal is reported as damage at the frame's offset.
    #[test]
    fn visitor_error_is_damage_at_the_frame() {
        let data = frames(&[b"ok", b"bad"]);
        let ending =
            scan(
                &data,
                0,
                UNSALTED,
                |_, payload| {
                    if payload == b"bad" { Err("no".into()) } else { Ok(()) }
                },
            );
        assert_eq!(ending, Err(Damage { offset: FRAME_HEADER_BYTES + 2, reason: "no".into() }));
    }
}
