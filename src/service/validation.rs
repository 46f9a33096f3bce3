//! Checks requests field by field and turns them into ledger commands, so that
//! a bad request is answered with every bad field at once and never reaches
//! the ledger.

use chrono::{DateTime, Utc};

use super::page_token;
use super::status::FieldViolation;
use crate::ledger::{
    self, HistoryCursor, MAX_BATCH_TRANSACTIONS, MAX_REQUEST_ID_BYTES, NewTransaction,
};
use crate::proto::v1::{
    AddTransactionRequest, AddTransactionsRequest, CaptureHoldRequest, GetBalancesRequest,
    GetExpiringPointsRequest, HoldPointsRequest, ListTransactionsRequest, RefundSpendRequest,
    ReleaseHoldRequest, SpendRequest, WatchTransactionsRequest,
};
use crate::store::{AsOf, DEFAULT_USER, PayerName, RequestId, UserId};

/// Earliest accepted timestamp, 0001-01-01T00:00:00Z, in Unix seconds (the
/// range of google.protobuf.Timestamp and RFC 3339).
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Latest accepted second, 9999-12-31T23:59:59Z, in Unix seconds.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// The longest user id accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;
/// Entries per ListTransactions page when the request asks for none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most entries per ListTransactions page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A transaction that passed validation.
#[derive(Debug)]
pub struct ValidTransaction<'request> {
    pub user_id: UserId<'request>,
    pub request_id: Option<RequestId<'request>>,
    pub payer: PayerName<'request>,
    pub points: i64,
    pub timestamp: DateTime<Utc>,
}

/// A spend that passed validation.
#[derive(Debug)]
pub struct ValidSpend<'request> {
    pub user_id: UserId<'request>,
    pub request_id: Option<RequestId<'request>>,
    pub points: i64,
}

/// A history page request that passed validation.
#[derive(Debug)]
pub struct ValidPage<'request> {
    pub user_id: UserId<'request>,
    pub cursor: HistoryCursor,
    pub page_size: usize,
}

/// Validates every field of an AddTransaction request.
pub fn transaction(
    request: &AddTransactionRequest,
) -> Result<ValidTransaction<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let fields = transaction_fields(
        &request.payer,
        request.points,
        request.timestamp.as_ref(),
        &mut violations,
    );
    let user_id = user_id(&request.user_id, &mut violations);
    let request_id = request_id(&request.request_id, &mut violations);
    match fields {
        Some(fields) if violations.is_empty() => Ok(ValidTransaction {
            user_id,
            request_id,
            payer: PayerName::new(fields.payer),
            points: fields.points,
            timestamp: fields.timestamp,
        }),
        _ => Err(violations),
    }
}

/// Checks the fields every transaction has, single or in a batch, adding a
/// violation for each bad one; `Some` when all three are good.
fn transaction_fields<'request>(
    payer: &'request str,
    points: i64,
    timestamp_field: Option<&prost_types::Timestamp>,
    violations: &mut Vec<FieldViolation>,
) -> Option<NewTransaction<'request>> {
    let mut good = true;
    if let Err(error) = ledger::validate_payer(payer) {
        violations.push(FieldViolation::from_ledger("payer", &error));
        good = false;
    }
    if let Err(error) = ledger::validate_transaction_points(points) {
        violations.push(FieldViolation::from_ledger("points", &error));
        good = false;
    }
    match timestamp("timestamp", timestamp_field) {
        Ok(timestamp) if good => Some(NewTransaction { payer, points, timestamp }),
        Ok(_) => None,
        Err(violation) => {
            violations.push(violation);
            None
        }
    }
}

/// A batch that passed validation.
#[derive(Debug)]
pub struct ValidBatch<'request> {
    pub user_id: UserId<'request>,
    pub transactions: Vec<NewTransaction<'request>>,
}

/// Validates an AddTransactions request: the user, the batch size, and every
/// field of every entry; reports the bad fields of the first bad entry.
pub fn batch(request: &AddTransactionsRequest) -> Result<ValidBatch<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    let count = request.transactions.len();
    if count == 0 || count > MAX_BATCH_TRANSACTIONS {
        violations.push(FieldViolation {
            field: "transactions".to_owned(),
            reason: "BATCH_SIZE_INVALID",
            description: format!(
                "transactions must hold 1 to {MAX_BATCH_TRANSACTIONS} entries, got {count}"
            ),
        });
        return Err(violations);
    }
    let mut transactions = Vec::with_capacity(count);
    for (index, entry) in request.transactions.iter().enumerate() {
        let mut entry_violations = Vec::new();
        let fields = transaction_fields(
            &entry.payer,
            entry.points,
            entry.timestamp.as_ref(),
            &mut entry_violations,
        );
        match fields {
            Some(transaction) => transactions.push(transaction),
            None => {
                violations.extend(
                    entry_violations
                        .into_iter()
                        .map(|violation| violation.in_entry("transactions", index)),
                );
                return Err(violations);
            }
        }
    }
    if violations.is_empty() { Ok(ValidBatch { user_id, transactions }) } else { Err(violations) }
}

/// Validates every field of a Spend request.
pub fn spend(request: &SpendRequest) -> Result<ValidSpend<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if let Err(error) = ledger::validate_spend_points(request.points) {
        violations.push(FieldViolation::from_ledger("points", &error));
    }
    let user_id = user_id(&request.user_id, &mut violations);
    let request_id = request_id(&request.request_id, &mut violations);
    if violations.is_empty() {
        Ok(ValidSpend { user_id, request_id, points: request.points })
    } else {
        Err(violations)
    }
}

/// A hold, capture, release or refund that passed validation: the user,
/// the request id, and the command.
#[derive(Debug)]
pub struct ValidCommand<'request> {
    pub user_id: UserId<'request>,
    pub request_id: Option<RequestId<'request>>,
    pub params: ledger::RequestParams,
}

/// Checks points that may be 0 (meaning all) but not negative.
fn all_or_some_points(points: i64, violations: &mut Vec<FieldViolation>) {
    if points < 0 {
        violations.push(FieldViolation::from_ledger(
            "points",
            &ledger::LedgerError::NegativePoints { points },
        ));
    }
}

/// A google.protobuf.Duration field in milliseconds (`None` when unset),
/// refusing negative ones, mixed signs and more than `max_ms`.
fn duration_ms(
    field: &str,
    duration: Option<&prost_types::Duration>,
    max_ms: i64,
    violations: &mut Vec<FieldViolation>,
) -> Option<i64> {
    let duration = duration?;
    let nanos_fit = (0..=999_999_999).contains(&duration.nanos);
    let millis = duration
        .seconds
        .checked_mul(1000)
        .and_then(|millis| millis.checked_add(i64::from(duration.nanos).div_euclid(1_000_000)))
        .filter(|&millis| duration.seconds >= 0 && nanos_fit && millis <= max_ms);
    if millis.is_none() {
        violations.push(FieldViolation {
            field: field.to_owned(),
            reason: "DURATION_OUT_OF_RANGE",
            description: format!(
                "{field} must be between 0 and {max_ms} ms with 0..=999999999 nanos, got {}s \
                 {}ns",
                duration.seconds, duration.nanos
            ),
        });
    }
    millis
}

/// Validates every field of a HoldPoints request.
pub fn hold(request: &HoldPointsRequest) -> Result<ValidCommand<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    let request_id = request_id(&request.request_id, &mut violations);
    if let Err(error) = ledger::validate_spend_points(request.points) {
        violations.push(FieldViolation::from_ledger("points", &error));
    }
    let timeout_ms = duration_ms(
        "timeout",
        request.timeout.as_ref(),
        ledger::MAX_HOLD_TIMEOUT_MS,
        &mut violations,
    )
    .unwrap_or(ledger::DEFAULT_HOLD_TIMEOUT_MS);
    if timeout_ms == 0 {
        violations.push(FieldViolation::from_ledger(
            "timeout",
            &ledger::LedgerError::HoldTimeoutOutOfRange { timeout_ms },
        ));
    }
    let params = ledger::RequestParams::Hold { points: request.points, timeout_ms };
    if violations.is_empty() {
        Ok(ValidCommand { user_id, request_id, params })
    } else {
        Err(violations)
    }
}

/// Validates every field of a CaptureHold request.
pub fn capture(request: &CaptureHoldRequest) -> Result<ValidCommand<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    let request_id = request_id(&request.request_id, &mut violations);
    all_or_some_points(request.points, &mut violations);
    let params =
        ledger::RequestParams::Capture { hold_id: request.hold_id, points: request.points };
    if violations.is_empty() {
        Ok(ValidCommand { user_id, request_id, params })
    } else {
        Err(violations)
    }
}

/// Validates every field of a ReleaseHold request.
pub fn release(request: &ReleaseHoldRequest) -> Result<ValidCommand<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    let request_id = request_id(&request.request_id, &mut violations);
    let params = ledger::RequestParams::Release { hold_id: request.hold_id };
    if violations.is_empty() {
        Ok(ValidCommand { user_id, request_id, params })
    } else {
        Err(violations)
    }
}

/// Validates every field of a RefundSpend request.
pub fn refund(request: &RefundSpendRequest) -> Result<ValidCommand<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    let request_id = request_id(&request.request_id, &mut violations);
    all_or_some_points(request.points, &mut violations);
    let params =
        ledger::RequestParams::Refund { spend_id: request.spend_id, points: request.points };
    if violations.is_empty() {
        Ok(ValidCommand { user_id, request_id, params })
    } else {
        Err(violations)
    }
}

/// Validates a GetExpiringPoints request: the user, and the window in
/// milliseconds.
pub fn expiring(
    request: &GetExpiringPointsRequest,
) -> Result<(UserId<'_>, i64), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    let within_ms = duration_ms(
        "within",
        request.within.as_ref(),
        ledger::MAX_POINTS_VALIDITY_MS,
        &mut violations,
    )
    .unwrap_or(0);
    if violations.is_empty() { Ok((user_id, within_ms)) } else { Err(violations) }
}

/// Validates a WatchTransactions request and returns the user and the
/// position to follow from.
pub fn watch(request: &WatchTransactionsRequest) -> Result<(UserId<'_>, u64), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    if violations.is_empty() { Ok((user_id, request.after_position)) } else { Err(violations) }
}

/// Validates a GetBalances request and returns the user and when to read
/// the balances as of.
pub fn balances(request: &GetBalancesRequest) -> Result<(UserId<'_>, AsOf), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    let as_of = match (request.as_of_position, &request.as_of_time) {
        (0, None) => AsOf::Now,
        (position, None) => AsOf::Position(position),
        // A time past every entry reads as now.
        (0, Some(time)) => match timestamp("as_of_time", Some(time)) {
            Ok(time) => AsOf::Time(time.timestamp_millis()),
            Err(violation) => {
                violations.push(violation);
                AsOf::Now
            }
        },
        (_, Some(_)) => {
            violations.push(FieldViolation {
                field: "as_of_time".to_owned(),
                reason: "AS_OF_CONFLICT",
                description: "give as_of_position or as_of_time, not both".to_owned(),
            });
            AsOf::Now
        }
    };
    if violations.is_empty() { Ok((user_id, as_of)) } else { Err(violations) }
}

/// Validates a ListTransactions request: the user, the page size, and that
/// the page token was issued for this user.
pub fn page(request: &ListTransactionsRequest) -> Result<ValidPage<'_>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let user_id = user_id(&request.user_id, &mut violations);
    let page_size = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        size if size < 0 => {
            violations.push(FieldViolation {
                field: "page_size".to_owned(),
                reason: "PAGE_SIZE_NEGATIVE",
                description: format!("page_size must not be negative, got {size}"),
            });
            0
        }
        size => (size as usize).min(MAX_PAGE_SIZE),
    };
    let cursor = if request.page_token.is_empty() {
        HistoryCursor::default()
    } else {
        page_token::decode(user_id.as_str(), &request.page_token).unwrap_or_else(|| {
            violations.push(invalid_page_token());
            HistoryCursor::default()
        })
    };
    if violations.is_empty() {
        Ok(ValidPage { user_id, cursor, page_size })
    } else {
        Err(violations)
    }
}

/// The violation for a page token this server did not issue for the user.
pub fn invalid_page_token() -> FieldViolation {
    FieldViolation {
        field: "page_token".to_owned(),
        reason: "PAGE_TOKEN_INVALID",
        description: "page_token is not a next_page_token this server issued for this user_id; \
                      start again with an empty page_token"
            .to_owned(),
    }
}

/// Converts the protobuf timestamp in `field`, refusing what RFC 3339
/// cannot express.
fn timestamp(
    field: &str,
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<DateTime<Utc>, FieldViolation> {
    let Some(timestamp) = timestamp else {
        return Err(FieldViolation {
            field: field.to_owned(),
            reason: "TIMESTAMP_MISSING",
            description: format!("{field} is required"),
        });
    };
    let nanos = u32::try_from(timestamp.nanos).ok().filter(|&nanos| nanos <= 999_999_999);
    let Some(nanos) = nanos else {
        return Err(FieldViolation {
            field: format!("{field}.nanos"),
            reason: "TIMESTAMP_NANOS_OUT_OF_RANGE",
            description: format!(
                "{field}.nanos must be within 0..=999999999, got {}",
                timestamp.nanos
            ),
        });
    };
    let in_range = (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&timestamp.seconds);
    match DateTime::from_timestamp(timestamp.seconds, nanos).filter(|_| in_range) {
        Some(timestamp) => Ok(timestamp),
        None => Err(FieldViolation {
            field: format!("{field}.seconds"),
            reason: "TIMESTAMP_OUT_OF_RANGE",
            description: format!(
                "{field} must be within 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z, \
                 got {} seconds since 1970-01-01",
                timestamp.seconds
            ),
        }),
    }
}

/// The user a call is for: "default" when empty; at most
/// [`MAX_USER_ID_BYTES`] bytes with no control characters (they end up in
/// logs and file contents).
fn user_id<'request>(
    value: &'request str,
    violations: &mut Vec<FieldViolation>,
) -> UserId<'request> {
    if value.is_empty() {
        return UserId::new(DEFAULT_USER);
    }
    if let Some(problem) = identifier_problem(value, MAX_USER_ID_BYTES) {
        violations.push(FieldViolation {
            field: "user_id".to_owned(),
            reason: "USER_ID_INVALID",
            description: format!("user_id {problem}"),
        });
    }
    UserId::new(value)
}

/// The request id of a call, if any (AIP-155).
fn request_id<'request>(
    value: &'request str,
    violations: &mut Vec<FieldViolation>,
) -> Option<RequestId<'request>> {
    if value.is_empty() {
        return None;
    }
    if let Some(problem) = identifier_problem(value, MAX_REQUEST_ID_BYTES) {
        violations.push(FieldViolation {
            field: "request_id".to_owned(),
            reason: "REQUEST_ID_INVALID",
            description: format!("request_id {problem}"),
        });
    }
    Some(RequestId::new(value))
}

fn identifier_problem(value: &str, max_bytes: usize) -> Option<String> {
    if value.len() > max_bytes {
        Some(format!("is {} bytes long; at most {max_bytes} bytes are allowed", value.len()))
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
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
