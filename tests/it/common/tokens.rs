//! Who a test calls as: tokens files for `--tokens-file`, and requests that
//! carry a bearer token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use points::proto::v1::GetBalancesRequest;
use points::token_sha256;
use tonic::{Request, Status};

use super::client::Client;

/// A `[[client]]` entry of a tokens file whose token is its name followed
/// by "-token", with `roles`, limited to `user_ids` unless that is empty.
pub fn token_client(name: &str, roles: &[&str], user_ids: &[&str]) -> String {
    let quoted = |items: &[&str]| {
        items.iter().map(|item| format!("\"{item}\"")).collect::<Vec<_>>().join(", ")
    };
    let mut entry = format!(
        "[[client]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [{}]\n",
        token_sha256(&format!("{name}-token")),
        quoted(roles)
    );
    if !user_ids.is_empty() {
        entry.push_str(&format!("user_ids = [{}]\n", quoted(user_ids)));
    }
    entry
}

/// Writes `entries` as `tokens.toml` in `dir`; returns its path.
pub fn tokens_file(dir: &Path, entries: &[String]) -> PathBuf {
    let path = dir.join("tokens.toml");
    std::fs::write(&path, entries.join("\n")).expect("write the tokens file");
    path
}

/// `message` as a request carrying `token` as its bearer token, if any.
pub fn with_token<'a, T>(message: T, token: impl Into<Option<&'a str>>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token.into() {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// The balances of `user`, asked as the client whose token is `token`.
pub async fn balances_as(
    client: &mut Client,
    token: &str,
    user: &str,
) -> Result<HashMap<String, i64>, Status> {
    let request =
        with_token(GetBalancesRequest { user_id: user.to_owned(), ..Default::default() }, token);
    Ok(client.get_balances(request).await?.into_inner().balances)
}
