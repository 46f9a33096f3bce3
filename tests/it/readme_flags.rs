//! The README's flags table lists exactly the flags `points-server --help`
//! shows, each with its environment variable, so neither drifts.

use std::collections::BTreeSet;
use std::process::Command;

/// Every flag of --help is in the README table with its variable, and nothing more.
#[test]
fn readme_flags_table_matches_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_points-server"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let help_flags: BTreeSet<String> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .map(|rest| rest.split([' ', '=']).next().unwrap_or_default().to_owned())
        .filter(|flag| flag != "help" && flag != "version")
        .collect();
    let help_variables: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_owned)
        .collect();

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let rows: Vec<&str> = readme.lines().filter(|line| line.starts_with("| `--")).collect();
    let mut readme_flags = BTreeSet::new();
    let mut readme_variables = BTreeSet::new();
    for row in &rows {
        let cells: Vec<&str> = row.split(" | ").collect();
        for flag in cells[0].split('`').filter(|part| part.starts_with("--")) {
            readme_flags.insert(
                flag.trim_start_matches("--").split(' ').next().unwrap_or_default().to_owned(),
            );
        }
        for variable in cells[1].split('`').filter(|part| part.starts_with("POINTS_")) {
            readme_variables.insert(variable.to_owned());
        }
    }
    assert_eq!(readme_flags, help_flags, "README flags table vs --help");
    assert_eq!(readme_variables, help_variables, "README environment variables vs --help");
}
