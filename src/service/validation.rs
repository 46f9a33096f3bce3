//! Checks requests field by field and turns them into ledger commands, so that
//! a bad request is answered with every bad field at once and never reaches
//! the ledger.

use chrono::{DateTime, Utc};

use super::status::FieldViolation;
use crate::ledger;
use crate::proto::v1::{AddTransactionRequest, GetBalancesRequest, SpendRequest};

/// Earliest accepted timestamp, 0001-01-01T00:00:00Z, in Unix seconds (the
/// range of google.protobuf.Timestamp and RFC 3339).
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Latest accepted second, 9999-12-31T23:59:59Z, in Unix seconds.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A transaction that passed validation.
#[derive(Debug)]
pub struct ValidTransaction<'request> {
    pub payer: &'request str,
    pub points: i64,
    pub timestamp: DateTime<Utc>,
}

/// Validates every field of an AddTransaction request.
pub fn transaction(
    request: &AddTransactionRequest,
) -> Result<ValidTransaction<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if let Err(error) = ledger::validate_payer(&request.payer) {
        violations.push(FieldViolation::from_ledger("payer", &error));
    }
    if let Err(error) = ledger::validate_transaction_points(request.points) {
        violations.push(FieldViolation::from_ledger("points", &error));
    }
    let timestamp = match timestamp(request.timestamp.as_ref()) {
        Ok(timestamp) => Some(timestamp),
        Err(violation) => {
            violations.push(violation);
            None
        }
    };
    reserved_field_is_empty("user_id", &request.user_id, &mut violations);
    reserved_field_is_empty("request_id", &request.request_id, &mut violations);
    match timestamp {
        Some(timestamp) if violations.is_empty() => {
            Ok(ValidTransaction { payer: &request.payer, points: request.points, timestamp })
        }
        _ => Err(violations),
    }
}

/// Validates every field of a Spend request and returns the points to spend.
pub fn spend(request: &SpendRequest) -> Result<i64, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if let Err(error) = ledger::validate_spend_points(request.points) {
        violations.push(FieldViolation::from_ledger("points", &error));
    }
    reserved_field_is_empty("user_id", &request.user_id, &mut violations);
    reserved_field_is_empty("request_id", &request.request_id, &mut violations);
    if violations.is_empty() { Ok(request.points) } else { Err(violations) }
}

/// Validates a GetBalances request.
pub fn balances(request: &GetBalancesRequest) -> Result<(), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    reserved_field_is_empty("user_id", &request.user_id, &mut violations);
    if violations.is_empty() { Ok(()) } else { Err(violations) }
}

/// Converts a protobuf timestamp, refusing what RFC 3339 cannot express.
fn timestamp(timestamp: Option<&prost_types::Timestamp>) -> Result<DateTime<Utc>, FieldViolation> {
    let Some(timestamp) = timestamp else {
        return Err(FieldViolation {
            field: "timestamp",
            reason: "TIMESTAMP_MISSING",
            description: "timestamp is required".to_owned(),
        });
    };
    let nanos = u32::try_from(timestamp.nanos).ok().filter(|&nanos| nanos <= 999_999_999);
    let Some(nanos) = nanos else {
        return Err(FieldViolation {
            field: "timestamp.nanos",
            reason: "TIMESTAMP_NANOS_OUT_OF_RANGE",
            description: format!(
                "timestamp.nanos must be within 0..=999999999, got {}",
                timestamp.nanos
            ),
        });
    };
    let in_range = (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&timestamp.seconds);
    match DateTime::from_timestamp(timestamp.seconds, nanos).filter(|_| in_range) {
        Some(timestamp) => Ok(timestamp),
        None => Err(FieldViolation {
            field: "timestamp.seconds",
            reason: "TIMESTAMP_OUT_OF_RANGE",
            description: format!(
                "timestamp must be within 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z, \
                 got {} seconds since 1970-01-01",
                timestamp.seconds
            ),
        }),
    }
}

/// user_id and request_id are part of the contract but not served yet:
/// refusing them beats silently ignoring a caller who relies on them.
fn reserved_field_is_empty(field: &'static str, value: &str, violations: &mut Vec<FieldViolation>) {
    if !value.is_empty() {
        violations.push(FieldViolation {
            field,
            reason: "FIELD_NOT_SUPPORTED",
            description: format!("{field} is not supported yet; leave it empty"),
        });
    }
}

/// The protobuf form of a ledger timestamp.
pub fn to_proto_timestamp(timestamp: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: timestamp.timestamp(),
        // chrono counts a leap second as nanos >= 10^9; a timestamp built from
        // a valid protobuf one never carries one, and the clamp keeps it so.
        nanos: timestamp.timestamp_subsec_nanos().min(999_999_999) as i32,
    }
}
