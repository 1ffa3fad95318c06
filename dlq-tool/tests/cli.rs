//! The command line itself, without a broker: what `--help` offers and how a
//! mistyped command fails. (Declaring this test also makes `cargo test` and
//! `cargo nextest run` build the `dlq-tool` binary, which the service suites
//! in `tests/` run.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn dlq_tool(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dlq-tool"))
        .args(args)
        .env_remove("FLEET__TRANSPORT")
        .output()
        .expect("dlq-tool runs")
}

#[test]
fn help_lists_every_command() {
    let output = dlq_tool(&["--help"]);
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    for command in [
        "list", "peek", "show", "stats", "replay", "purge", "export", "import", "audit",
    ] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "{command} missing from:\n{help}"
        );
    }
}

#[test]
fn an_unknown_command_exits_2_and_names_it() {
    let output = dlq_tool(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("frobnicate"), "{stderr}");
}
