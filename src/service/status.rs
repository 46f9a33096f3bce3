//! Turns refusals into gRPC statuses a person can read and a program can act
//! on: a message with the numbers involved, a `google.rpc.ErrorInfo` whose
//! reason is a stable UPPER_SNAKE_CASE name, and for invalid arguments a
//! `google.rpc.BadRequest` naming each bad field.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth::AccessError;
use crate::ledger::{ErrorKind, LedgerError};
use crate::store::{AsOfRefusal, StoreError};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "points.v1.PointsService";

/// One bad field of a request.
#[derive(Debug, Clone)]
pub struct FieldViolation {
    /// The field's path in the request, as in the .proto (`timestamp.nanos`,
    /// `transactions[3].payer`).
    pub field: String,
    /// Stable UPPER_SNAKE_CASE name of the problem.
    pub reason: &'static str,
    /// What is wrong, for a person.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field` described by a ledger validation error.
    pub fn from_ledger(field: impl Into<String>, error: &LedgerError) -> Self {
        Self { field: field.into(), reason: error.reason(), description: error.to_string() }
    }

    /// This violation as one of entry `index` of the repeated field `list`.
    pub fn in_entry(self, list: &str, index: usize) -> Self {
        Self {
            field: format!("{list}[{index}].{}", self.field),
            description: format!("{list}[{index}]: {}", self.description),
            ..self
        }
    }
}

/// INVALID_ARGUMENT naming every bad field; the ErrorInfo carries the first
/// violation's reason so a client can branch on it.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    assert!(!violations.is_empty(), "an invalid request has at least one violation");
    let message = violations
        .iter()
        .map(|violation| violation.description.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for violation in violations {
        details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
    }
    let metadata = HashMap::from([("field".to_owned(), violations[0].field.clone())]);
    details.set_error_info(violations[0].reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The status for a command the ledger refused.
pub fn ledger_refusal(error: &LedgerError) -> Status {
    // A batch entry's bad field is named by its path in the request; any
    // other refusal of an entry takes its code and reason from the entry
    // (see `LedgerError::kind`), with the index in the metadata.
    if let LedgerError::InBatch { index, error: entry_error } = error
        && entry_error.kind() == ErrorKind::InvalidArgument
    {
        let violation = FieldViolation::from_ledger(field_of(entry_error), entry_error);
        return invalid_argument(&[violation.in_entry("transactions", *index)]);
    }
    if error.kind() == ErrorKind::InvalidArgument {
        return invalid_argument(&[FieldViolation::from_ledger(field_of(error), error)]);
    }
    let code = match error.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::OutOfRange => Code::OutOfRange,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::NotFound => Code::NotFound,
    };
    let mut details = ErrorDetails::new();
    details.set_error_info(error.reason(), ERROR_DOMAIN, metadata_of(error));
    Status::with_error_details(code, error.to_string(), details)
}

/// UNAUTHENTICATED for an unknown caller, PERMISSION_DENIED for a known one
/// without the role or user.
pub fn access_refusal(error: &AccessError) -> Status {
    let code =
        if error.is_unauthenticated() { Code::Unauthenticated } else { Code::PermissionDenied };
    let mut details = ErrorDetails::new();
    details.set_error_info(error.reason(), ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code, error.to_string(), details)
}

/// Why there is nothing as of a place: OUT_OF_RANGE for `field`'s
/// `position` past the end of the history, or FAILED_PRECONDITION
/// (`ACCEPT_TIME_UNKNOWN`) for an as_of_time among entries kept before
/// accept times were.
pub fn as_of_refusal(refusal: &AsOfRefusal, field: &str, position: u64) -> Status {
    match *refusal {
        AsOfRefusal::PastTheEnd { history_len } => {
            position_out_of_range(field, position, history_len)
        }
        AsOfRefusal::AcceptTimeUnknown { unknown } => {
            let mut details = ErrorDetails::new();
            let metadata = HashMap::from([
                ("field".to_owned(), "as_of_time".to_owned()),
                ("unknown_entries".to_owned(), unknown.to_string()),
            ]);
            details.set_error_info("ACCEPT_TIME_UNKNOWN", ERROR_DOMAIN, metadata);
            Status::with_error_details(
                Code::FailedPrecondition,
                format!(
                    "as_of_time falls among the first {unknown} entries of the user's history,                      which were stored before accept times were kept; ask by as_of_position                      instead (their positions are 1 to {unknown})"
                ),
                details,
            )
        }
    }
}

/// OUT_OF_RANGE (`POSITION_OUT_OF_RANGE`) for a history position past the
/// end of a history of `length` entries.
fn position_out_of_range(field: &str, position: u64, length: u64) -> Status {
    let mut details = ErrorDetails::new();
    let metadata = HashMap::from([
        ("field".to_owned(), field.to_owned()),
        ("history_length".to_owned(), length.to_string()),
    ]);
    details.set_error_info("POSITION_OUT_OF_RANGE", ERROR_DOMAIN, metadata);
    Status::with_error_details(
        Code::OutOfRange,
        format!("{field} {position} is past the end of the user's history ({length} entries)"),
        details,
    )
}

/// RESOURCE_EXHAUSTED for a call shed because the server is at a limit.
pub fn resource_exhausted(reason: &'static str, message: String) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// The status for a store operation that did not happen: the ledger's
/// refusal, or UNAVAILABLE when the store can no longer serve (its journal
/// failed), so that callers retry elsewhere or later.
pub fn store_error(error: &StoreError) -> Status {
    match error {
        StoreError::Refused(refusal) => ledger_refusal(refusal),
        StoreError::LimitReached { reason, message } => resource_exhausted(reason, message.clone()),
        StoreError::PayerLimitReached { limit, batch_index } => {
            let mut metadata = HashMap::from([("limit".to_owned(), limit.to_string())]);
            if let Some(index) = batch_index {
                metadata.insert("index".to_owned(), index.to_string());
            }
            let mut details = ErrorDetails::new();
            details.set_error_info("PAYER_LIMIT_REACHED", ERROR_DOMAIN, metadata);
            Status::with_error_details(Code::ResourceExhausted, error.to_string(), details)
        }
        StoreError::Busy { reason, message } => {
            let mut details = ErrorDetails::new();
            details.set_error_info(*reason, ERROR_DOMAIN, HashMap::new());
            Status::with_error_details(Code::Unavailable, message.as_str(), details)
        }
        StoreError::Conflict { .. } => {
            let mut details = ErrorDetails::new();
            details.set_error_info("WRITE_CONFLICT", ERROR_DOMAIN, HashMap::new());
            Status::with_error_details(Code::Aborted, error.to_string(), details)
        }
        StoreError::Unavailable(reason) => {
            let mut details = ErrorDetails::new();
            details.set_error_info("STORE_UNAVAILABLE", ERROR_DOMAIN, HashMap::new());
            Status::with_error_details(Code::Unavailable, reason.as_str(), details)
        }
    }
}

/// The request field a ledger validation error is about.
fn field_of(error: &LedgerError) -> &'static str {
    match error {
        LedgerError::BlankPayer | LedgerError::PayerTooLong { .. } => "payer",
        LedgerError::HoldTimeoutOutOfRange { .. } => "timeout",
        _ => "points",
    }
}

/// The numbers behind a refusal, as ErrorInfo metadata.
fn metadata_of(error: &LedgerError) -> HashMap<String, String> {
    let pairs: Vec<(&str, String)> = match error {
        LedgerError::InBatch { index, error } => {
            let mut metadata = metadata_of(error);
            metadata.insert("index".to_owned(), index.to_string());
            return metadata;
        }
        LedgerError::InsufficientPayerPoints { payer, requested, available } => vec![
            ("payer", payer.clone()),
            ("requested", requested.to_string()),
            ("available", available.to_string()),
        ],
        LedgerError::InsufficientPoints { requested, available } => {
            vec![("requested", requested.to_string()), ("available", available.to_string())]
        }
        LedgerError::PayerBalanceOverflow { payer, balance, points } => vec![
            ("payer", payer.clone()),
            ("balance", balance.to_string()),
            ("points", points.to_string()),
        ],
        LedgerError::TotalOverflow { total, points } => {
            vec![("total", total.to_string()), ("points", points.to_string())]
        }
        LedgerError::RequestIdReused { request_id } => vec![("request_id", request_id.clone())],
        LedgerError::TransactionLimitReached { limit } => vec![("limit", limit.to_string())],
        LedgerError::RequestIdLimitReached { limit } => vec![("limit", limit.to_string())],
        LedgerError::HoldNotFound { hold_id } => vec![("hold_id", hold_id.to_string())],
        LedgerError::HoldNotOpen { hold_id, resolution } => {
            vec![("hold_id", hold_id.to_string()), ("state", resolution.as_str().to_owned())]
        }
        LedgerError::CaptureExceedsHold { requested, held } => {
            vec![("requested", requested.to_string()), ("held", held.to_string())]
        }
        LedgerError::SpendNotFound { spend_id } | LedgerError::NothingToRefund { spend_id } => {
            vec![("spend_id", spend_id.to_string())]
        }
        LedgerError::RefundExceedsSpend { requested, refundable } => {
            vec![("requested", requested.to_string()), ("refundable", refundable.to_string())]
        }
        LedgerError::BlankPayer
        | LedgerError::PayerTooLong { .. }
        | LedgerError::ZeroPoints
        | LedgerError::NonPositiveSpend { .. }
        | LedgerError::NegativePoints { .. }
        | LedgerError::HoldTimeoutOutOfRange { .. } => Vec::new(),
    };
    pairs.into_iter().map(|(key, value)| (key.to_owned(), value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal backlog is UNAVAILABLE (retry shortly) with its own reason,
    /// told apart from a failed store.
    #[test]
    fn journal_backlog_is_unavailable_with_its_own_reason() {
        let busy = StoreError::Busy { reason: "JOURNAL_BACKLOG", message: "retry".to_owned() };
        let failed = StoreError::Unavailable("the journal failed".to_owned());
        for (error, reason) in [(busy, "JOURNAL_BACKLOG"), (failed, "STORE_UNAVAILABLE")] {
            let status = store_error(&error);
            assert_eq!(status.code(), Code::Unavailable);
            let info = status.get_details_error_info().expect("an ErrorInfo");
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (reason, ERROR_DOMAIN));
        }
    }
}
