//! The names a call gives, typed where they cross from the service into the
//! store, so that a user id, a request id and a payer name cannot be passed
//! for one another. The service checks the API's rules before it makes one
//! (`service::validation`); the store takes any string it is given.

use std::fmt;

/// Declares a borrowed name type: `new`, `as_str` and `Display`.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name<'a>(&'a str);

        impl<'a> $name<'a> {
            /// `name` as this kind of name.
            pub const fn new(name: &'a str) -> Self {
                Self(name)
            }

            /// The name itself.
            pub const fn as_str(self) -> &'a str {
                self.0
            }
        }

        impl fmt::Display for $name<'_> {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.0)
            }
        }
    };
}

name_type!(
    /// Whose ledger a call is for: the store keeps one ledger per user id.
    UserId
);
name_type!(
    /// A client's name for one command, so that a retry is applied once
    /// (AIP-155).
    RequestId
);
name_type!(
    /// A partner whose points a user earns, such as DANNON.
    PayerName
);
