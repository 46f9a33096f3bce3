//! Why the ledger refuses a command. Each refusal leaves the ledger unchanged.

use super::MAX_PAYER_BYTES;

/// The class of a refusal, so the transport can pick a status code without the
/// core knowing about gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command is malformed whatever the ledger holds.
    InvalidArgument,
    /// The command is well formed but the ledger's state does not allow it.
    FailedPrecondition,
    /// An amount would leave the range the ledger can represent exactly.
    OutOfRange,
    /// A request id was already used for a different command.
    AlreadyExists,
    /// A configured limit of the server would be passed.
    ResourceExhausted,
    /// The command names a hold or spend the user does not have.
    NotFound,
}

/// How a hold that is no longer open was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldResolution {
    /// Captured as a spend.
    Captured,
    /// Released by a call.
    Released,
    /// Released by the server when it timed out.
    TimedOut,
}

impl HoldResolution {
    /// Its name in error details: `captured`, `released` or `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Captured => "captured",
            Self::Released => "released",
            Self::TimedOut => "timed_out",
        }
    }

    /// The resolution named by [`HoldResolution::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Captured, Self::Released, Self::TimedOut]
            .into_iter()
            .find(|resolution| resolution.as_str() == name)
    }
}

/// A refused command, with the numbers a person needs to understand why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// One entry of a batch was refused, so the whole batch was.
    #[error("transaction {index} of the batch was refused, so none was recorded: {error}")]
    InBatch {
        /// The entry's position in the batch, from 0.
        index: usize,
        /// Why it was refused.
        error: Box<LedgerError>,
    },
    /// The payer name is empty or only whitespace.
    #[error("payer must contain a character other than whitespace")]
    BlankPayer,
    /// The payer name is longer than [`MAX_PAYER_BYTES`].
    #[error("payer is {length_bytes} bytes long; at most {MAX_PAYER_BYTES} bytes are allowed")]
    PayerTooLong {
        /// The length of the refused name in bytes of UTF-8.
        length_bytes: usize,
    },
    /// A transaction of 0 points records nothing and is almost certainly a bug.
    #[error("points must not be 0")]
    ZeroPoints,
    /// A spend must ask for at least one point.
    #[error("points to spend must be positive, got {points}")]
    NonPositiveSpend {
        /// The refused amount.
        points: i64,
    },
    /// A negative transaction would take a payer below zero.
    #[error(
        "insufficient points for payer {payer:?}: requested {requested}, available {available}"
    )]
    InsufficientPayerPoints {
        /// The payer the points were to be taken from.
        payer: String,
        /// The points the transaction takes back (its magnitude).
        requested: u64,
        /// The payer's balance.
        available: i64,
    },
    /// A spend asks for more than the user holds across all payers.
    #[error("insufficient points: requested {requested}, available {available}")]
    InsufficientPoints {
        /// The points the spend asked for.
        requested: i64,
        /// The user's total across all payers.
        available: i64,
    },
    /// Crediting would push one payer's balance past `i64::MAX`.
    #[error(
        "payer {payer:?} balance would pass the maximum of {max}: balance {balance}, adding {points}",
        max = i64::MAX
    )]
    PayerBalanceOverflow {
        /// The payer being credited.
        payer: String,
        /// The payer's current balance.
        balance: i64,
        /// The points being added.
        points: i64,
    },
    /// The request id was already used with different parameters.
    #[error(
        "request_id {request_id:?} was already used for a different request; use a new \
         request_id for a new request, and the same parameters to retry"
    )]
    RequestIdReused {
        /// The reused request id.
        request_id: String,
    },
    /// The user already has the most request ids remembered that one user
    /// may have; a command with a new request id must wait until older ones
    /// expire (or go without one).
    #[error(
        "this user already has the maximum of {limit} request ids remembered; retry after older \
         ones expire, or send the command without a request_id"
    )]
    RequestIdLimitReached {
        /// The limit.
        limit: usize,
    },
    /// The user has recorded the most transactions one user can.
    #[error("this user has recorded the maximum of {limit} transactions")]
    TransactionLimitReached {
        /// The limit.
        limit: u64,
    },
    /// Points to capture or refund must not be negative (0 means all).
    #[error("points must not be negative (0 means all), got {points}")]
    NegativePoints {
        /// The refused amount.
        points: i64,
    },
    /// A hold's timeout must be between 1 ms and 30 days.
    #[error(
        "a hold's timeout must be between 1 ms and 30 days ({max_ms} ms), got {timeout_ms} ms",
        max_ms = super::MAX_HOLD_TIMEOUT_MS
    )]
    HoldTimeoutOutOfRange {
        /// The refused timeout, in milliseconds.
        timeout_ms: i64,
    },
    /// The hold does not exist for this user.
    #[error("this user has no hold {hold_id}")]
    HoldNotFound {
        /// The hold id asked for.
        hold_id: u64,
    },
    /// The hold was already captured, released or timed out.
    #[error("hold {hold_id} is not open: it was {}", resolution.as_str().replace('_', " "))]
    HoldNotOpen {
        /// The hold.
        hold_id: u64,
        /// How it was resolved.
        resolution: HoldResolution,
    },
    /// A capture asks for more points than the hold holds.
    #[error("cannot capture {requested} points of a hold of {held}")]
    CaptureExceedsHold {
        /// The points asked for.
        requested: i64,
        /// The points the hold holds.
        held: i64,
    },
    /// The spend does not exist for this user.
    #[error("this user has no spend {spend_id}")]
    SpendNotFound {
        /// The spend id asked for.
        spend_id: u64,
    },
    /// Everything the spend took was refunded already.
    #[error("spend {spend_id} was refunded in full already")]
    NothingToRefund {
        /// The spend.
        spend_id: u64,
    },
    /// A refund asks for more than is left to refund of the spend.
    #[error("cannot refund {requested} points: {refundable} of the spend are left to refund")]
    RefundExceedsSpend {
        /// The points asked for.
        requested: i64,
        /// What is left to refund.
        refundable: i64,
    },
    /// Crediting would push the user's total past `i64::MAX`.
    #[error(
        "total points would pass the maximum of {max}: total {total}, adding {points}",
        max = i64::MAX
    )]
    TotalOverflow {
        /// The user's current total.
        total: i64,
        /// The points being added.
        points: i64,
    },
}

impl LedgerError {
    /// The class of this refusal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InBatch { error, .. } => error.kind(),
            Self::BlankPayer
            | Self::PayerTooLong { .. }
            | Self::ZeroPoints
            | Self::NonPositiveSpend { .. }
            | Self::NegativePoints { .. }
            | Self::HoldTimeoutOutOfRange { .. } => ErrorKind::InvalidArgument,
            Self::InsufficientPayerPoints { .. }
            | Self::InsufficientPoints { .. }
            | Self::HoldNotOpen { .. }
            | Self::CaptureExceedsHold { .. }
            | Self::NothingToRefund { .. }
            | Self::RefundExceedsSpend { .. } => ErrorKind::FailedPrecondition,
            Self::HoldNotFound { .. } | Self::SpendNotFound { .. } => ErrorKind::NotFound,
            Self::PayerBalanceOverflow { .. } | Self::TotalOverflow { .. } => ErrorKind::OutOfRange,
            Self::RequestIdReused { .. } => ErrorKind::AlreadyExists,
            Self::TransactionLimitReached { .. } | Self::RequestIdLimitReached { .. } => {
                ErrorKind::ResourceExhausted
            }
        }
    }

    /// Whether the refusal depends on the ledger's state (rather than on the
    /// request alone): such a refusal of a request with a request id is
    /// remembered, so that its retries get the same answer even after the
    /// state has changed.
    pub fn depends_on_state(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::FailedPrecondition | ErrorKind::OutOfRange | ErrorKind::NotFound
        )
    }

    /// A stable UPPER_SNAKE_CASE name for this refusal that clients can branch on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InBatch { error, .. } => error.reason(),
            Self::BlankPayer => "PAYER_BLANK",
            Self::PayerTooLong { .. } => "PAYER_TOO_LONG",
            Self::ZeroPoints => "POINTS_ZERO",
            Self::NonPositiveSpend { .. } => "POINTS_NOT_POSITIVE",
            Self::InsufficientPayerPoints { .. } => "INSUFFICIENT_PAYER_POINTS",
            Self::InsufficientPoints { .. } => "INSUFFICIENT_POINTS",
            Self::PayerBalanceOverflow { .. } => "PAYER_BALANCE_OVERFLOW",
            Self::TotalOverflow { .. } => "TOTAL_OVERFLOW",
            Self::RequestIdReused { .. } => "REQUEST_ID_REUSED",
            Self::TransactionLimitReached { .. } => "TRANSACTION_LIMIT_REACHED",
            Self::RequestIdLimitReached { .. } => "REQUEST_ID_LIMIT_REACHED",
            Self::NegativePoints { .. } => "POINTS_NEGATIVE",
            Self::HoldTimeoutOutOfRange { .. } => "HOLD_TIMEOUT_OUT_OF_RANGE",
            Self::HoldNotFound { .. } => "HOLD_NOT_FOUND",
            Self::HoldNotOpen { .. } => "HOLD_NOT_OPEN",
            Self::CaptureExceedsHold { .. } => "CAPTURE_EXCEEDS_HOLD",
            Self::SpendNotFound { .. } => "SPEND_NOT_FOUND",
            Self::NothingToRefund { .. } => "NOTHING_TO_REFUND",
            Self::RefundExceedsSpend { .. } => "REFUND_EXCEEDS_SPEND",
        }
    }
}
