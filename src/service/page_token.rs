//! Page tokens for ListTransactions (AIP-158): an opaque, URL-safe string
//! holding a history cursor, bound to the user it was issued for so that a
//! token cannot be replayed against another user's history.
//!
//! Layout before base64url: format version (1 byte), transactions before the
//! page (u64 LE), spends before the page (u64 LE), other events before the
//! page (u64 LE; not in version 1 tokens, which had none), CRC32C of the user
//! id and the preceding bytes (u32 LE). The checksum is integrity, not
//! secrecy: a token only ever reveals a position in the caller's own history.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::ledger::HistoryCursor;

/// The version written for positions after events; positions with none
/// before them are written as version 1 (the shorter token of servers that
/// had no events).
const VERSION: u8 = 2;
const TOKEN_BYTES: usize = 29;
const VERSION_1_TOKEN_BYTES: usize = 21;

/// The token for `cursor` in `user_id`'s history.
pub fn encode(user_id: &str, cursor: HistoryCursor) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_BYTES);
    bytes.push(if cursor.events == 0 { 1 } else { VERSION });
    bytes.extend_from_slice(&cursor.transactions.to_le_bytes());
    bytes.extend_from_slice(&cursor.spends.to_le_bytes());
    if cursor.events > 0 {
        bytes.extend_from_slice(&cursor.events.to_le_bytes());
    }
    let checksum = crc32c::crc32c_append(crc32c::crc32c(user_id.as_bytes()), &bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The cursor in `token`, if it is a token issued for `user_id`.
pub fn decode(user_id: &str, token: &str) -> Option<HistoryCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let length = match bytes.first() {
        Some(1) => VERSION_1_TOKEN_BYTES,
        Some(&VERSION) => TOKEN_BYTES,
        _ => return None,
    };
    if bytes.len() != length {
        return None;
    }
    let (body, checksum) = bytes.split_at(length - 4);
    let checksum = u32::from_le_bytes(checksum.try_into().ok()?);
    if crc32c::crc32c_append(crc32c::crc32c(user_id.as_bytes()), body) != checksum {
        return None;
    }
    let number = |at: usize| Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?));
    Some(HistoryCursor {
        transactions: number(1)?,
        spends: number(9)?,
        events: if length == TOKEN_BYTES { number(17)? } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token decodes to its cursor for its own user only.
    #[test]
    fn tokens_round_trip_for_their_user_only() {
        for events in [0, 2] {
            let cursor = HistoryCursor { transactions: 12, spends: 3, events };
            let token = encode("alice", cursor);
            assert_eq!(decode("alice", &token), Some(cursor));
        }
        let cursor = HistoryCursor { transactions: 12, spends: 3, events: 2 };
        let token = encode("alice", cursor);
        assert_eq!(decode("bob", &token), None);
        assert_eq!(decode("alice", "not a token"), None);
        assert_eq!(decode("alice", ""), None);
        let mut tampered = token.into_bytes();
        tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(decode("alice", &String::from_utf8(tampered).unwrap()), None);
    }
}
