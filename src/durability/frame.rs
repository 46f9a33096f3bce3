//! Checksummed, length-prefixed frames: the unit of every durable file.
//!
//! A frame is a 12-byte header, then the payload:
//! `payload length (u32 LE) | CRC32C of the length bytes (u32 LE) | CRC32C of the payload (u32 LE)`.
//! The length has its own checksum so that a damaged length is reported as
//! damage instead of being mistaken for a torn write at the end of the file.
//!
//! Reading tells three endings apart:
//! - clean: the last frame ends exactly at the end of the file;
//! - torn: the file ends inside its last frame (a write cut short by a crash),
//!   or everything from the last frame on is zero bytes (a file extended but
//!   never written); the caller may cut it off;
//! - damaged: anything else, such as a bad checksum with more data after it.
//!   Nothing is dropped silently: the caller refuses to start.

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 12;

/// The largest payload accepted. Journal records are well under 1 KiB and
/// snapshot records are chunked far below this; a larger length is damage.
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// Appends one frame holding `payload` to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    assert!(payload.len() <= MAX_PAYLOAD_BYTES, "payload of {} bytes is too large", payload.len());
    let length = (payload.len() as u32).to_le_bytes();
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length);
    out.extend_from_slice(&crc32c::crc32c(&length).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
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
pub fn scan(
    data: &[u8],
    start: usize,
    mut visit: impl FnMut(usize, &[u8]) -> Result<(), String>,
) -> Result<Ending, Damage> {
    let mut offset = start;
    // Each turn consumes at least one header, so this ends within data.len() turns.
    while offset < data.len() {
        let rest = &data[offset..];
        if rest.len() < FRAME_HEADER_BYTES {
            return torn_or_damaged(
                rest,
                offset,
                "incomplete frame header",
                "truncated frame header",
            );
        }
        let length_bytes: [u8; 4] = rest[0..4].try_into().expect("4 bytes");
        let length_checksum = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let payload_checksum = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if crc32c::crc32c(&length_bytes) != length_checksum {
            return torn_or_damaged(
                rest,
                offset,
                "zero-filled tail",
                "frame length checksum mismatch",
            );
        }
        let length = u32::from_le_bytes(length_bytes) as usize;
        if length > MAX_PAYLOAD_BYTES {
            return Err(Damage {
                offset,
                reason: format!("frame length {length} exceeds the maximum of {MAX_PAYLOAD_BYTES}"),
            });
        }
        let Some(payload) = rest.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length) else {
            return Ok(Ending::Torn { offset, reason: "incomplete frame payload" });
        };
        if crc32c::crc32c(payload) != payload_checksum {
            return Err(Damage { offset, reason: "frame payload checksum mismatch".to_owned() });
        }
        visit(offset, payload).map_err(|reason| Damage { offset, reason })?;
        offset += FRAME_HEADER_BYTES + length;
    }
    Ok(Ending::Clean)
}

/// A bad frame is a torn tail only if nothing but zeros follows it; any real
/// data after it means damage in the middle.
fn torn_or_damaged(
    rest: &[u8],
    offset: usize,
    torn_reason: &'static str,
    damage_reason: &str,
) -> Result<Ending, Damage> {
    let all_zero = rest.iter().all(|&byte| byte == 0);
    if rest.len() < FRAME_HEADER_BYTES || all_zero {
        Ok(Ending::Torn { offset, reason: if all_zero { "zero-filled tail" } else { torn_reason } })
    } else {
        Err(Damage { offset, reason: damage_reason.to_owned() })
    }
}

/// Appends one frame holding `message`, encoded in place (no extra copy).
pub fn encode_message(message: &impl prost::Message, out: &mut Vec<u8>) {
    let length = message.encoded_len();
    assert!(length <= MAX_PAYLOAD_BYTES, "record of {length} bytes is too large");
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    message.encode_raw(out);
    debug_assert_eq!(out.len() - start - FRAME_HEADER_BYTES, length);
    let length_bytes = (length as u32).to_le_bytes();
    let payload_checksum = crc32c::crc32c(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&length_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc32c::crc32c(&length_bytes).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&payload_checksum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            encode(payload, &mut out);
        }
        out
    }

    fn collect(data: &[u8]) -> (Vec<Vec<u8>>, Result<Ending, Damage>) {
        let mut seen = Vec::new();
        let ending = scan(data, 0, |_, payload| {
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
        encode_message(&message, &mut in_place);
        let mut separate = Vec::new();
        encode(&prost::Message::encode_to_vec(&message), &mut separate);
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

    /// A visitor's refusal is reported as damage at the frame's offset.
    #[test]
    fn visitor_error_is_damage_at_the_frame() {
        let data = frames(&[b"ok", b"bad"]);
        let ending =
            scan(&data, 0, |_, payload| if payload == b"bad" { Err("no".into()) } else { Ok(()) });
        assert_eq!(ending, Err(Damage { offset: FRAME_HEADER_BYTES + 2, reason: "no".into() }));
    }
}
