//! Who may call what: bearer tokens with roles, optionally limited to some
//! users, loaded from a TOML tokens file.
//!
//! The file holds each client's name, the SHA-256 of its token (never the
//! token itself, so the file is not a secret), its roles, and optionally the
//! user ids it may act for:
//!
//! ```toml
//! [[client]]
//! name = "checkout"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! roles = ["spend", "read"]
//! user_ids = ["alice", "bob"]   # optional; absent means every user
//! ```
//!
//! A call presents `authorization: Bearer <token>`. The token's SHA-256 is
//! compared with every client's in constant time, so neither the token nor
//! which client matched leaks through timing; tokens are never logged.
//!
//! With mutual TLS, a client may instead be named by the common name (CN) of
//! the certificate it presents, which the TLS layer has already verified
//! against the configured client CA:
//!
//! ```toml
//! [[client]]
//! name = "reporting"
//! certificate_common_name = "reporting.internal"
//! roles = ["read"]
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GetBalances and ListTransactions.
    Read,
    /// AddTransaction.
    Earn,
    /// Spend.
    Spend,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name as written in the tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Earn => "earn",
            Role::Spend => "spend",
            Role::Admin => "admin",
        }
    }
}

/// A caller that presented a known token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The client's name from the tokens file; recorded in each call's span.
    pub name: String,
    roles: HashSet<Role>,
    /// `None`: every user.
    user_ids: Option<HashSet<String>>,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No bearer token in the call.
    #[error("this call needs a bearer token: send the metadata \"authorization: Bearer <token>\"")]
    MissingToken,
    /// A token that is not in the tokens file (or a malformed header).
    #[error("the bearer token is not valid")]
    UnknownToken,
    /// A known client without the role the call needs.
    #[error("client {client:?} does not have the {role:?} role this call needs")]
    MissingRole {
        /// The client's name.
        client: String,
        /// The role needed.
        role: &'static str,
    },
    /// A known client that may not act for this user.
    #[error("client {client:?} may not act for user {user_id:?}")]
    UserNotAllowed {
        /// The client's name.
        client: String,
        /// The user asked for.
        user_id: String,
    },
}

impl AccessError {
    /// A stable UPPER_SNAKE_CASE name for the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            AccessError::MissingToken => "TOKEN_MISSING",
            AccessError::UnknownToken => "TOKEN_UNKNOWN",
            AccessError::MissingRole { .. } => "ROLE_MISSING",
            AccessError::UserNotAllowed { .. } => "USER_NOT_ALLOWED",
        }
    }

    /// Whether the caller is unknown (UNAUTHENTICATED) rather than known but
    /// not allowed (PERMISSION_DENIED).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, AccessError::MissingToken | AccessError::UnknownToken)
    }
}

impl Principal {
    /// Checks that this client has `role` (or admin) and may act for `user_id`.
    pub fn authorize(&self, role: Role, user_id: &str) -> Result<(), AccessError> {
        if !self.roles.contains(&role) && !self.roles.contains(&Role::Admin) {
            return Err(AccessError::MissingRole { client: self.name.clone(), role: role.name() });
        }
        if let Some(user_ids) = &self.user_ids
            && !user_ids.contains(user_id)
        {
            return Err(AccessError::UserNotAllowed {
                client: self.name.clone(),
                user_id: user_id.to_owned(),
            });
        }
        Ok(())
    }
}

/// Why the tokens file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// It could not be read.
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("the tokens file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    name: String,
    token_sha256: Option<String>,
    certificate_common_name: Option<String>,
    roles: Vec<Role>,
    user_ids: Option<Vec<String>>,
}

/// The known clients.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// Clients with a token, by the token's SHA-256.
    by_token: Vec<([u8; 32], Arc<Principal>)>,
    /// Clients named by their TLS certificate, by its common name.
    by_certificate: HashMap<String, Arc<Principal>>,
}

impl Authenticator {
    /// Loads and checks a tokens file.
    pub fn from_file(path: &Path) -> Result<Self, TokensFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokensFileError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text)
            .map_err(|reason| TokensFileError::Invalid { path: path.to_owned(), reason })
    }

    /// Parses and checks the contents of a tokens file.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|error| error.to_string())?;
        if file.client.is_empty() {
            return Err("it lists no [[client]]".to_owned());
        }
        let mut authenticator = Self { by_token: Vec::new(), by_certificate: HashMap::new() };
        let mut names = HashSet::new();
        for entry in file.client {
            if entry.name.trim().is_empty() || !names.insert(entry.name.clone()) {
                return Err(format!("client name {:?} is empty or repeated", entry.name));
            }
            if entry.roles.is_empty() {
                return Err(format!("client {:?} has no roles", entry.name));
            }
            let principal = Arc::new(Principal {
                name: entry.name.clone(),
                roles: entry.roles.into_iter().collect(),
                user_ids: entry.user_ids.map(|user_ids| user_ids.into_iter().collect()),
            });
            if entry.token_sha256.is_none() && entry.certificate_common_name.is_none() {
                return Err(format!(
                    "client {:?} needs token_sha256 or certificate_common_name",
                    entry.name
                ));
            }
            if let Some(token_sha256) = &entry.token_sha256 {
                let hash: [u8; 32] = hex::decode(token_sha256.trim())
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| {
                        format!(
                            "client {:?}: token_sha256 must be 64 hexadecimal digits",
                            entry.name
                        )
                    })?;
                authenticator.by_token.push((hash, Arc::clone(&principal)));
            }
            if let Some(common_name) = entry.certificate_common_name
                && authenticator.by_certificate.insert(common_name.clone(), principal).is_some()
            {
                return Err(format!("certificate_common_name {common_name:?} is repeated"));
            }
        }
        Ok(authenticator)
    }

    /// The client presenting the call's bearer token, or else the verified
    /// TLS client certificate with `certificate_common_name`.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        certificate_common_name: Option<&str>,
    ) -> Result<&Arc<Principal>, AccessError> {
        self.authenticate_headers(metadata.as_ref(), certificate_common_name)
    }

    /// [`Authenticator::authenticate`] on a request's HTTP headers, as they
    /// arrive before its body.
    pub fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
        certificate_common_name: Option<&str>,
    ) -> Result<&Arc<Principal>, AccessError> {
        let Some(header) = headers.get(http::header::AUTHORIZATION) else {
            return certificate_common_name
                .and_then(|common_name| self.by_certificate.get(common_name))
                .ok_or(AccessError::MissingToken);
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(AccessError::UnknownToken)?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Look at every client, whatever matches, so timing says nothing.
        let mut found = None;
        for (hash, principal) in &self.by_token {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(principal);
            }
        }
        found.ok_or(AccessError::UnknownToken)
    }
}

/// The common name (CN) of a DER-encoded X.509 certificate's subject.
pub fn certificate_common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = certificate.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(common_name)
}

/// The lowercase hexadecimal SHA-256 of a token, as the tokens file wants it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        let text = format!(
            "[[client]]\nname = \"checkout\"\ntoken_sha256 = \"{}\"\nroles = [\"spend\", \"read\"]\nuser_ids = [\"alice\"]\n\n\
             [[client]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nroles = [\"admin\"]\n",
            token_sha256("checkout-token"),
            token_sha256("ops-token")
        );
        Authenticator::from_toml(&text).expect("valid tokens file")
    }

    fn bearer(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        metadata
    }

    /// Tokens map to their clients, whose roles and users are enforced.
    #[test]
    fn tokens_roles_and_users_are_enforced() {
        let authenticator = authenticator();
        let checkout = authenticator.authenticate(&bearer("checkout-token"), None).expect("known");
        assert_eq!(checkout.name, "checkout");
        assert_eq!(checkout.authorize(Role::Spend, "alice"), Ok(()));
        assert_eq!(checkout.authorize(Role::Read, "alice"), Ok(()));
        assert!(matches!(
            checkout.authorize(Role::Earn, "alice"),
            Err(AccessError::MissingRole { .. })
        ));
        assert!(matches!(
            checkout.authorize(Role::Spend, "bob"),
            Err(AccessError::UserNotAllowed { .. })
        ));
        let ops = authenticator.authenticate(&bearer("ops-token"), None).expect("known");
        assert_eq!(ops.authorize(Role::Earn, "anyone"), Ok(()));
        assert_eq!(
            authenticator.authenticate(&MetadataMap::new(), None).unwrap_err(),
            AccessError::MissingToken
        );
        assert_eq!(
            authenticator.authenticate(&bearer("nope"), None).unwrap_err(),
            AccessError::UnknownToken
        );
        // A bearer token, when sent, decides even if a certificate is present.
        assert_eq!(
            authenticator.authenticate(&bearer("nope"), Some("anything")).unwrap_err(),
            AccessError::UnknownToken
        );
    }

    /// A certificate common name names its client when no token is sent.
    #[test]
    fn certificate_common_names_name_clients() {
        let text = "[[client]]\nname = \"reporting\"\n\
                    certificate_common_name = \"reporting.internal\"\nroles = [\"read\"]\n";
        let authenticator = Authenticator::from_toml(text).expect("valid");
        let client = authenticator
            .authenticate(&MetadataMap::new(), Some("reporting.internal"))
            .expect("known");
        assert_eq!(client.name, "reporting");
        assert_eq!(
            authenticator.authenticate(&MetadataMap::new(), Some("stranger")).unwrap_err(),
            AccessError::MissingToken
        );
    }

    /// Bad tokens files are refused with a reason.
    #[test]
    fn invalid_tokens_files_are_refused() {
        for text in [
            "",
            "[[client]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nroles = [\"read\"]\n",
            "[[client]]\nname = \"a\"\ntoken_sha256 = \"00\"\nroles = [\"reader\"]\n",
            &format!(
                "[[client]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nroles = []\n",
                token_sha256("t")
            ),
            &format!("[[client]]\nname = \"a\"\ntoken = \"{}\"\nroles = [\"read\"]\n", "plain"),
            "[[client]]\nname = \"a\"\nroles = [\"read\"]\n",
        ] {
            assert!(Authenticator::from_toml(text).is_err(), "accepted: {text}");
        }
    }
}
