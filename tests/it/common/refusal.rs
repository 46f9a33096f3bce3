//! What a refused call carries: its code, and an ErrorInfo whose reason is
//! the stable, machine-readable name of the refusal.

use points::ERROR_DOMAIN;
use tonic::{Code, Status};
use tonic_types::{ErrorInfo, StatusExt};

/// The ErrorInfo reason of `status`, or "" when it carries none.
pub fn reason(status: &Status) -> String {
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

/// Asserts that `status` is a refusal with `code` and `reason` in our
/// domain, with a message for people; returns its ErrorInfo for the
/// metadata.
pub fn assert_refusal(status: &Status, code: Code, reason: &str) -> ErrorInfo {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status.get_error_details().error_info().cloned();
    let info = info.unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "status: {status:?}");
    assert_eq!(info.domain, ERROR_DOMAIN, "status: {status:?}");
    assert!(!status.message().is_empty(), "no message in {status:?}");
    info
}
