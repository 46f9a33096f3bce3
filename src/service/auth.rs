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
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GetBalances, ListTransactions and GetExpiringPoints.
    Read,
    /// AddTransaction and AddTransactions.
    Earn,
    /// Spend, HoldPoints, CaptureHold and ReleaseHold.
    Spend,
    /// RefundSpend.
    Refund,
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
            Role::Refund => "refund",
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
    /// The payers it may credit or debit; `None`: every payer.
    payers: Option<HashSet<String>>,
    /// When its tokens stop working.
    not_after: Option<DateTime<Utc>>,
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
    /// A client certificate whose identities name more than one client.
    #[error(
        "the client certificate's names match more than one client of the tokens file; \
         the operator must give each certificate identity to one client"
    )]
    AmbiguousCertificate,
    /// A known client whose tokens stopped working at its `not_after`.
    #[error("client {client:?}'s tokens stopped working at {not_after} (not_after)")]
    TokenExpired {
        /// The client's name.
        client: String,
        /// When, RFC 3339.
        not_after: String,
    },
    /// A known client limited to other payers.
    #[error("client {client:?} may not credit or debit payer {payer:?}")]
    PayerNotAllowed {
        /// The client's name.
        client: String,
        /// The payer asked for.
        payer: String,
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
            AccessError::TokenExpired { .. } => "TOKEN_EXPIRED",
            AccessError::AmbiguousCertificate => "CERTIFICATE_AMBIGUOUS",
            AccessError::PayerNotAllowed { .. } => "PAYER_NOT_ALLOWED",
        }
    }

    /// Whether the caller is unknown (UNAUTHENTICATED) rather than known but
    /// not allowed (PERMISSION_DENIED).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AccessError::MissingToken
                | AccessError::UnknownToken
                | AccessError::TokenExpired { .. }
        )
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

    /// Refuses a client past its `not_after`, however it authenticated.
    fn unexpired(&self, now: DateTime<Utc>) -> Result<(), AccessError> {
        match self.not_after {
            Some(not_after) if now > not_after => Err(AccessError::TokenExpired {
                client: self.name.clone(),
                not_after: not_after.to_rfc3339(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks that this client may credit or debit every one of `payers`.
    pub fn authorize_payers<'a>(
        &self,
        mut payers: impl Iterator<Item = &'a str>,
    ) -> Result<(), AccessError> {
        let Some(allowed) = &self.payers else { return Ok(()) };
        match payers.find(|payer| !allowed.contains(*payer)) {
            None => Ok(()),
            Some(payer) => Err(AccessError::PayerNotAllowed {
                client: self.name.clone(),
                payer: payer.to_owned(),
            }),
        }
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
    client: Vec<toml::Spanned<ClientEntry>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    name: String,
    token_sha256: Option<TokenHashes>,
    certificate_identity: Option<String>,
    certificate_common_name: Option<String>,
    roles: Vec<Role>,
    user_ids: Option<Vec<String>>,
    payers: Option<Vec<String>>,
    not_after: Option<NotAfter>,
}

/// `token_sha256`: one hash, or a list, so that a new token can be added
/// before the old one is removed.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum TokenHashes {
    One(String),
    Many(Vec<String>),
}

/// `not_after`: an RFC 3339 time, quoted or as a TOML date-time.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NotAfter {
    Text(String),
    Toml(toml::value::Datetime),
}

impl NotAfter {
    fn parse(&self) -> Result<DateTime<Utc>, String> {
        let text = match self {
            NotAfter::Text(text) => text.clone(),
            NotAfter::Toml(datetime) => datetime.to_string(),
        };
        DateTime::parse_from_rfc3339(text.trim()).map(|time| time.with_timezone(&Utc)).map_err(
            |error| {
                format!(
                    "not_after {text:?} is not an RFC 3339 time with an offset, such as \
                     2026-12-31T23:59:59Z: {error}"
                )
            },
        )
    }
}

/// A client as the tokens file lists it, for `points-server check-tokens`:
/// everything but its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    /// The line of its `[[client]]` entry.
    pub line: usize,
    /// Its name.
    pub name: String,
    /// Its roles, by name.
    pub roles: Vec<&'static str>,
    /// How many token hashes it has.
    pub token_count: usize,
    /// The certificate identity naming it, if any.
    pub certificate_identity: Option<String>,
    /// The users it may act for (`None`: every user).
    pub user_ids: Option<Vec<String>>,
    /// The payers it may credit or debit (`None`: every payer).
    pub payers: Option<Vec<String>>,
    /// When its tokens stop working.
    pub not_after: Option<DateTime<Utc>>,
}

impl std::fmt::Display for ClientSummary {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "line {}: client {:?} roles {}",
            self.line,
            self.name,
            self.roles.join(",")
        )?;
        write!(formatter, "; {} token(s)", self.token_count)?;
        if let Some(identity) = &self.certificate_identity {
            write!(formatter, "; certificate {identity:?}")?;
        }
        match &self.user_ids {
            Some(user_ids) => write!(formatter, "; users {user_ids:?}")?,
            None => write!(formatter, "; every user")?,
        }
        match &self.payers {
            Some(payers) => write!(formatter, "; payers {payers:?}")?,
            None => write!(formatter, "; every payer")?,
        }
        if let Some(not_after) = self.not_after {
            write!(formatter, "; not after {}", not_after.to_rfc3339())?;
        }
        Ok(())
    }
}

/// A token's hash and the client it names.
#[derive(Debug, Clone)]
struct TokenEntry {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

/// The known clients.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// Clients with tokens, one entry per token hash.
    by_token: Vec<TokenEntry>,
    /// Clients named by their TLS certificate, by identity.
    by_certificate: HashMap<String, Arc<Principal>>,
    /// What the file lists, without secrets.
    summaries: Vec<ClientSummary>,
}

/// The line (1-based) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&byte| byte == b'\n').count() + 1
}

impl Authenticator {
    /// Loads and checks a tokens file.
    pub fn from_file(path: &Path) -> Result<Self, TokensFileError> {
        Self::from_file_text(path, &Self::read_file(path)?)
    }

    /// The text of the tokens file at `path`.
    pub fn read_file(path: &Path) -> Result<String, TokensFileError> {
        std::fs::read_to_string(path)
            .map_err(|source| TokensFileError::Read { path: path.to_owned(), source })
    }

    /// Parses and checks `text`, read from the tokens file at `path`.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Self, TokensFileError> {
        Self::from_toml(text)
            .map_err(|reason| TokensFileError::Invalid { path: path.to_owned(), reason })
    }

    /// Parses and checks the contents of a tokens file: every client has a
    /// name no other has, roles, and a token hash or a certificate identity
    /// no other has; each problem names its line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|error| error.to_string())?;
        if file.client.is_empty() {
            return Err("it lists no [[client]]".to_owned());
        }
        let mut authenticator =
            Self { by_token: Vec::new(), by_certificate: HashMap::new(), summaries: Vec::new() };
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut hashes: HashMap<[u8; 32], (String, usize)> = HashMap::new();
        let mut identities: HashMap<String, usize> = HashMap::new();
        for spanned in file.client {
            let line = line_of(text, spanned.span().start);
            let entry = spanned.into_inner();
            let name = entry.name.clone();
            let problem = |what: String| format!("line {line}: client {name:?}: {what}");
            if name.trim().is_empty() {
                return Err(format!("line {line}: a client's name is empty"));
            }
            if let Some(first) = names.insert(name.clone(), line) {
                return Err(problem(format!("the name is already used at line {first}")));
            }
            if entry.roles.is_empty() {
                return Err(problem("it has no roles".to_owned()));
            }
            // An empty list would lock the client out entirely: a mistake,
            // never a useful setting (leave the key out for no limit).
            for (key, list) in [("user_ids", &entry.user_ids), ("payers", &entry.payers)] {
                if list.as_ref().is_some_and(Vec::is_empty) {
                    return Err(problem(format!(
                        "{key} is empty; leave it out to allow every one, or list some"
                    )));
                }
            }
            let identity = match (entry.certificate_identity, entry.certificate_common_name) {
                (Some(_), Some(_)) => {
                    return Err(problem(
                        "give certificate_identity or certificate_common_name (its older \
                         name), not both"
                            .to_owned(),
                    ));
                }
                (identity, common_name) => identity.or(common_name),
            };
            let hash_texts = match entry.token_sha256 {
                None => Vec::new(),
                Some(TokenHashes::One(hash)) => vec![hash],
                Some(TokenHashes::Many(hashes)) => hashes,
            };
            if hash_texts.is_empty() && identity.is_none() {
                return Err(problem("it needs token_sha256 or certificate_identity".to_owned()));
            }
            let not_after =
                entry.not_after.as_ref().map(NotAfter::parse).transpose().map_err(problem)?;
            let mut roles: Vec<Role> = entry.roles;
            roles.sort_by_key(|role| role.name());
            roles.dedup();
            let principal = Arc::new(Principal {
                name: name.clone(),
                roles: roles.iter().copied().collect(),
                user_ids: entry.user_ids.clone().map(|user_ids| user_ids.into_iter().collect()),
                payers: entry.payers.clone().map(|payers| payers.into_iter().collect()),
                not_after,
            });
            for hash_text in &hash_texts {
                let hash: [u8; 32] = hex::decode(hash_text.trim())
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| {
                        problem("token_sha256 must be 64 hexadecimal digits".to_owned())
                    })?;
                if let Some((other, _)) = hashes.get(&hash)
                    && *other == name
                {
                    return Err(problem("its token_sha256 lists one hash twice".to_owned()));
                }
                if let Some((other, other_line)) = hashes.insert(hash, (name.clone(), line)) {
                    return Err(problem(format!(
                        "a token hash is also client {other:?}'s (line {other_line}): each token \
                         must name one client"
                    )));
                }
                authenticator.by_token.push(TokenEntry { hash, principal: Arc::clone(&principal) });
            }
            if let Some(identity) = &identity {
                if let Some(first) = identities.insert(identity.clone(), line) {
                    return Err(problem(format!(
                        "certificate identity {identity:?} is already used at line {first}"
                    )));
                }
                authenticator.by_certificate.insert(identity.clone(), Arc::clone(&principal));
            }
            authenticator.summaries.push(ClientSummary {
                line,
                name,
                roles: roles.iter().map(|role| role.name()).collect(),
                token_count: hash_texts.len(),
                certificate_identity: identity,
                user_ids: entry.user_ids,
                payers: entry.payers,
                not_after,
            });
        }
        Ok(authenticator)
    }

    /// The clients the file lists, without secrets, in file order.
    pub fn clients(&self) -> &[ClientSummary] {
        &self.summaries
    }

    /// The client presenting the call's bearer token, or else the verified
    /// TLS client certificate with one of `certificate_identities` (in the
    /// order of [`certificate_identities`]: the first that names a client).
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        certificate_identities: &[String],
    ) -> Result<&Arc<Principal>, AccessError> {
        self.authenticate_headers(metadata.as_ref(), certificate_identities, Utc::now())
    }

    /// [`Authenticator::authenticate`] on a request's HTTP headers, as they
    /// arrive before its body, at time `now`.
    pub fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
        certificate_identities: &[String],
        now: DateTime<Utc>,
    ) -> Result<&Arc<Principal>, AccessError> {
        let Some(header) = headers.get(http::header::AUTHORIZATION) else {
            let mut named = certificate_identities
                .iter()
                .filter_map(|identity| self.by_certificate.get(identity));
            let principal = named.next().ok_or(AccessError::MissingToken)?;
            // One certificate must never name two clients: revoking one
            // would silently make it the other.
            if named.any(|other| !Arc::ptr_eq(other, principal)) {
                return Err(AccessError::AmbiguousCertificate);
            }
            return principal.unexpired(now).map(|()| principal);
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
        // Look at every token, whatever matches, so timing says nothing.
        let mut found = None;
        for entry in &self.by_token {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(&entry.principal);
            }
        }
        let principal = found.ok_or(AccessError::UnknownToken)?;
        principal.unexpired(now).map(|()| principal)
    }
}

/// The identities of a DER-encoded X.509 certificate a client may be named
/// by: its URI subject alternative names, then its DNS names; or, for a
/// certificate with neither, its subject's common name (CN). SANs are what
/// certificate authorities vouch for today; the CN is kept for older
/// certificates.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut identities = Vec::new();
    if let Ok(Some(names)) = certificate.subject_alternative_name() {
        let names = &names.value.general_names;
        for name in names {
            if let GeneralName::URI(uri) = name {
                identities.push((*uri).to_owned());
            }
        }
        for name in names {
            if let GeneralName::DNSName(dns) = name {
                identities.push((*dns).to_owned());
            }
        }
    }
    // The CN only for a certificate without SANs (RFC 6125): a CA that
    // checks the SANs it signs may not check the CN.
    if identities.is_empty()
        && let Some(common_name) =
            certificate.subject().iter_common_name().next().and_then(|name| name.as_str().ok())
    {
        identities.push(common_name.to_owned());
    }
    identities
}

/// The tokens file in force, replaced whole when it is reloaded: each call
/// is authenticated by the one in force when it arrives, and keeps the
/// client it found.
#[derive(Debug, Clone)]
pub struct Credentials(Arc<RwLock<Arc<Authenticator>>>);

impl Credentials {
    /// Credentials from `authenticator`.
    pub fn new(authenticator: Authenticator) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(authenticator))))
    }

    /// The tokens file in force.
    pub fn current(&self) -> Arc<Authenticator> {
        Arc::clone(&self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Puts `authenticator` in force for calls that arrive from now on.
    pub fn replace(&self, authenticator: Authenticator) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(authenticator);
    }
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
        let checkout = authenticator.authenticate(&bearer("checkout-token"), &[]).expect("known");
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
        let ops = authenticator.authenticate(&bearer("ops-token"), &[]).expect("known");
        assert_eq!(ops.authorize(Role::Earn, "anyone"), Ok(()));
        assert_eq!(
            authenticator.authenticate(&MetadataMap::new(), &[]).unwrap_err(),
            AccessError::MissingToken
        );
        assert_eq!(
            authenticator.authenticate(&bearer("nope"), &[]).unwrap_err(),
            AccessError::UnknownToken
        );
        // A bearer token, when sent, decides even if a certificate is present.
        assert_eq!(
            authenticator.authenticate(&bearer("nope"), &["anything".to_owned()]).unwrap_err(),
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
            .authenticate(&MetadataMap::new(), &["reporting.internal".to_owned()])
            .expect("known");
        assert_eq!(client.name, "reporting");
        assert_eq!(
            authenticator.authenticate(&MetadataMap::new(), &["stranger".to_owned()]).unwrap_err(),
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

    /// A client may have several token hashes (a rotation in progress),
    /// payers it is limited to, and a time after which its tokens stop.
    #[test]
    fn several_hashes_payer_scope_and_not_after_are_enforced() {
        let text = format!(
            "[[client]]\nname = \"dannon\"\ntoken_sha256 = [\"{}\", \"{}\"]\n\
             roles = [\"earn\"]\npayers = [\"DANNON\"]\n\n\
             [[client]]\nname = \"old\"\ntoken_sha256 = \"{}\"\nroles = [\"read\"]\n\
             not_after = 2024-01-01T00:00:00Z\n",
            token_sha256("new-token"),
            token_sha256("old-token"),
            token_sha256("expired-token"),
        );
        let authenticator = Authenticator::from_toml(&text).expect("valid");
        for token in ["new-token", "old-token"] {
            let client = authenticator.authenticate(&bearer(token), &[]).expect("known");
            assert_eq!(client.name, "dannon");
            assert_eq!(client.authorize_payers(["DANNON", "DANNON"].into_iter()), Ok(()));
            assert_eq!(
                client.authorize_payers(["DANNON", "UNILEVER"].into_iter()).map_err(|e| e.reason()),
                Err("PAYER_NOT_ALLOWED")
            );
        }
        let expired = authenticator.authenticate(&bearer("expired-token"), &[]).unwrap_err();
        assert_eq!(expired.reason(), "TOKEN_EXPIRED");
        assert!(expired.is_unauthenticated());
        let before = DateTime::parse_from_rfc3339("2023-12-31T23:59:59Z").expect("time").to_utc();
        let headers = bearer("expired-token").into_headers();
        assert!(authenticator.authenticate_headers(&headers, &[], before).is_ok());
    }

    /// Repeated names, token hashes and certificate identities are refused
    /// with the line of the entry that repeats them.
    #[test]
    fn repeated_names_hashes_and_identities_are_refused_with_their_line() {
        let hash = token_sha256("t");
        let cases = [
            (
                format!(
                    "[[client]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nroles = [\"read\"]\n\n\
                     [[client]]\nname = \"b\"\ntoken_sha256 = \"{hash}\"\nroles = [\"read\"]\n"
                ),
                "line 6",
            ),
            (
                format!(
                    "[[client]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nroles = [\"read\"]\n\n\
                     [[client]]\nname = \"a\"\ncertificate_identity = \"x\"\nroles = [\"read\"]\n"
                ),
                "line 6",
            ),
            (
                "[[client]]\nname = \"a\"\ncertificate_identity = \"x\"\nroles = [\"read\"]\n\
                 [[client]]\nname = \"b\"\ncertificate_common_name = \"x\"\nroles = [\"read\"]\n"
                    .to_owned(),
                "line 5",
            ),
        ];
        for (text, line) in cases {
            let error = Authenticator::from_toml(&text).expect_err("refused");
            assert!(error.starts_with(line), "{error}");
        }
        let listed = Authenticator::from_toml(&cases_ok()).expect("valid");
        let summaries: Vec<String> = listed.clients().iter().map(ToString::to_string).collect();
        assert_eq!(summaries.len(), 1);
        assert!(!summaries[0].contains(&token_sha256("secret")), "no secret listed");
    }

    fn cases_ok() -> String {
        format!(
            "[[client]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nroles = [\"read\", \"earn\"]\n",
            token_sha256("secret")
        )
    }

    /// Credentials swapped whole: new calls see the new file.
    #[test]
    fn replaced_credentials_are_used_by_new_calls() {
        let credentials = Credentials::new(authenticator());
        let before = credentials.current();
        credentials.replace(Authenticator::from_toml(&cases_ok()).expect("valid"));
        assert!(before.authenticate(&bearer("ops-token"), &[]).is_ok(), "the old one is intact");
        assert!(credentials.current().authenticate(&bearer("ops-token"), &[]).is_err());
        assert!(credentials.current().authenticate(&bearer("secret"), &[]).is_ok());
    }

    /// A certificate naming two clients is refused; a certificate client
    /// past its not_after is refused like a token; empty lists and a hash
    /// listed twice are refused at load.
    #[test]
    fn certificates_are_unambiguous_and_expire_and_empty_lists_are_refused() {
        let text = "[[client]]\nname = \"a\"\ncertificate_identity = \"a.internal\"\nroles = [\"read\"]\n\
                    [[client]]\nname = \"b\"\ncertificate_identity = \"b.internal\"\nroles = [\"read\"]\n\
                    not_after = \"2020-01-01T00:00:00Z\"\n";
        let authenticator = Authenticator::from_toml(text).expect("valid");
        let both = ["a.internal".to_owned(), "b.internal".to_owned()];
        let refused = authenticator.authenticate(&MetadataMap::new(), &both).unwrap_err();
        assert_eq!(refused.reason(), "CERTIFICATE_AMBIGUOUS");
        let expired = authenticator
            .authenticate(&MetadataMap::new(), &["b.internal".to_owned()])
            .unwrap_err();
        assert_eq!(expired.reason(), "TOKEN_EXPIRED");
        let hash = token_sha256("t");
        for text in [
            format!(
                "[[client]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nroles = [\"earn\"]\npayers = []\n"
            ),
            format!(
                "[[client]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nroles = [\"read\"]\nuser_ids = []\n"
            ),
            format!(
                "[[client]]\nname = \"a\"\ntoken_sha256 = [\"{hash}\", \"{hash}\"]\nroles = [\"read\"]\n"
            ),
        ] {
            assert!(Authenticator::from_toml(&text).is_err(), "accepted: {text}");
        }
    }
}
