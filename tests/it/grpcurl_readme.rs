//! Interop: the real grpcurl binary, through reflection only, runs every
//! grpcurl example in README.md against a fresh real server, in order, and
//! must print exactly the output the README shows. This keeps the README
//! honest and proves reflection works for a stock client (grpcurl 1.8.6 speaks
//! only reflection v1alpha).
//!
//! Two conventions of the README: a line `<!-- readme-server: ARGS -->`
//! starts a fresh in-memory server with ARGS for the examples after it, and a JSON
//! string `"<any time>"` stands for a time the README cannot know (such as
//! a hold's timeout from now), matching any RFC 3339 time.

use crate::common;

use std::process::Command;

use common::{ServerProcess, tools};

/// One README example: a grpcurl command and the output shown after it,
/// and the arguments of the server it runs against.
#[derive(Debug)]
struct Example {
    command: String,
    expected: Option<Expected>,
    server_args: Vec<String>,
}

/// What `"<any time>"` in the README's JSON stands for.
const ANY_TIME: &str = "<any time>";

/// Whether `actual` is `expected`, where `"<any time>"` matches any RFC
/// 3339 time.
fn json_matches(actual: &serde_json::Value, expected: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (actual, expected) {
        (Value::String(time), Value::String(placeholder)) if placeholder == ANY_TIME => {
            chrono::DateTime::parse_from_rfc3339(time).is_ok()
        }
        (Value::Array(actual), Value::Array(expected)) => {
            actual.len() == expected.len()
                && actual
                    .iter()
                    .zip(expected)
                    .all(|(actual, expected)| json_matches(actual, expected))
        }
        (Value::Object(actual), Value::Object(expected)) => {
            actual.len() == expected.len()
                && expected.iter().all(|(key, expected)| {
                    actual.get(key).is_some_and(|actual| json_matches(actual, expected))
                })
        }
        _ => actual == expected,
    }
}

#[derive(Debug)]
enum Expected {
    /// One JSON value, or several: the messages of a stream, in order.
    Json(Vec<serde_json::Value>),
    Text(String),
}

/// The JSON values of `text`, one after another.
fn json_values(text: &str) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    serde_json::Deserializer::from_str(text).into_iter().collect()
}

/// Reads the fenced blocks of README.md: each ```sh block holding a grpcurl
/// command, with the ```json or ```text block right after it, if any.
fn readme_examples() -> Vec<Example> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if let Some(args) =
            line.strip_prefix("<!-- readme-server:").and_then(|rest| rest.strip_suffix("-->"))
        {
            blocks.push(("readme-server".to_owned(), args.trim().to_owned()));
        } else if let Some(language) = line.strip_prefix("```") {
            let body: Vec<&str> =
                lines.by_ref().take_while(|line| !line.starts_with("```")).collect();
            blocks.push((language.to_owned(), body.join("\n")));
        }
    }
    let mut examples = Vec::new();
    let mut server_args: Vec<String> = Vec::new();
    for (index, (language, body)) in blocks.iter().enumerate() {
        if language == "readme-server" {
            server_args = body.split_whitespace().map(str::to_owned).collect();
            continue;
        }
        if language != "sh" || !body.starts_with("grpcurl ") {
            continue;
        }
        assert!(!body.contains('\n'), "one grpcurl command per block: {body}");
        let expected =
            blocks.get(index + 1).and_then(|(language, output)| match language.as_str() {
                "json" => Some(Expected::Json(
                    json_values(output)
                        .unwrap_or_else(|error| panic!("README JSON {output}: {error}")),
                )),
                "text" => Some(Expected::Text(output.trim().to_owned())),
                _ => None,
            });
        examples.push(Example {
            command: body.clone(),
            expected,
            server_args: server_args.clone(),
        });
    }
    examples
}

/// Every grpcurl example in the README prints exactly what the README shows.
#[test]
fn readme_grpcurl_examples_print_exactly_what_the_readme_shows() {
    let examples = readme_examples();
    assert!(examples.len() >= 12, "README examples not found: {examples:?}");
    let grpcurl = tools::grpcurl();
    let tool_dir = grpcurl.parent().expect("grpcurl lives in a directory");
    let path = format!("{}:{}", tool_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut server_args: Vec<String> = Vec::new();
    let mut server = ServerProcess::start(&[]);

    for example in &examples {
        if example.server_args != server_args {
            server_args.clone_from(&example.server_args);
            let args: Vec<&str> = server_args.iter().map(String::as_str).collect();
            server = ServerProcess::start(&args);
        }
        let command = example.command.replace("localhost:50051", &server.address.to_string());
        let output = tools::output_within(
            Command::new("sh").args(["-c", &command]).env("PATH", &path),
            std::time::Duration::from_secs(60),
            &example.command,
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let context = format!("{}\nstdout:\n{stdout}\nstderr:\n{stderr}", example.command);
        match &example.expected {
            Some(Expected::Json(expected)) => {
                // A failed call (the README shows its status, with a code) is
                // printed on stderr, and grpcurl exits with 64 + the gRPC code.
                let code = match expected.as_slice() {
                    [single] => single.get("code").and_then(serde_json::Value::as_i64),
                    _ => None,
                };
                let (printed, mut expected_exit) = match code {
                    Some(code) if code != 0 => (&stderr, 64 + code as i32),
                    _ => (&stdout, 0),
                };
                // A stream that grpcurl's -max-time hangs up on ends with
                // DEADLINE_EXCEEDED (4) after the messages it printed.
                if example.command.contains("-max-time") {
                    expected_exit = 64 + 4;
                }
                let actual = json_values(printed)
                    .unwrap_or_else(|error| panic!("output is not JSON ({error}): {context}"));
                let matches = actual.len() == expected.len()
                    && actual
                        .iter()
                        .zip(expected)
                        .all(|(actual, expected)| json_matches(actual, expected));
                assert!(matches, "{context}\nprinted: {actual:#?}\nREADME: {expected:#?}");
                assert_eq!(output.status.code(), Some(expected_exit), "{context}");
            }
            Some(Expected::Text(expected)) => {
                assert!(output.status.success(), "{context}");
                assert_eq!(stdout.trim(), expected, "{context}");
            }
            None => {
                assert!(output.status.success(), "{context}");
                assert!(!stdout.trim().is_empty(), "{context}");
            }
        }
    }
}
