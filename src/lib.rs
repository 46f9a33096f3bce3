//! points: a loyalty-points ledger served over gRPC.
//!
//! Layout, from the wire inwards:
//! - [`ledger`]: the pure core. Payers, lots and the exact spending rules;
//!   no I/O, no async, no transport types.
pub mod ledger;
