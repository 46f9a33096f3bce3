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
            | Self::NonPositiveSpend { .. } => ErrorKind::InvalidArgument,
            Self::InsufficientPayerPoints { .. } | Self::InsufficientPoints { .. } => {
                ErrorKind::FailedPrecondition
            }
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
        matches!(self.kind(), ErrorKind::FailedPrecondition | ErrorKind::OutOfRange)
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
        }
    }
}
