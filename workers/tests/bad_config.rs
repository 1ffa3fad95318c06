//! Every binary of this crate refuses bad configuration before it touches a
//! server: exit code 2 and a message that names the key. (Declaring this
//! test also makes `cargo test` and `cargo nextest run` build the worker and
//! loadgen binaries, which the service suites in `tests/` run.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const WORKERS: [&str; 4] = [
    env!("CARGO_BIN_EXE_order-worker"),
    env!("CARGO_BIN_EXE_inventory-worker"),
    env!("CARGO_BIN_EXE_payment-worker"),
    env!("CARGO_BIN_EXE_notification-worker"),
];

#[test]
fn a_worker_with_a_bad_setting_exits_2_naming_it() {
    for worker in WORKERS {
        let output = Command::new(worker)
            .env("FLEET__WORKER__MAX_BATCH", "0")
            .output()
            .expect("the worker runs");
        assert_eq!(output.status.code(), Some(2), "{worker}: {output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains("worker.max_batch"), "{worker}: {stderr}");
    }
}

#[test]
fn loadgen_explains_itself() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--help")
        .output()
        .expect("loadgen runs");
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("--orders"), "{help}");
}
