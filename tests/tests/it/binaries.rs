//! The fleet's binaries as real processes, for what only a process can show:
//! signals, exit codes, kill -9.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fleet_config::Environment;

/// `target/<profile>/<name>`, built by cargo beside this test binary.
pub(crate) fn path(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash> → target/<profile>/<name>
    let profile_dir = test_binary.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --workspace --bins` (cargo nextest run --workspace builds it)",
        binary.display()
    );
    binary
}

/// A child process that is killed when the test lets go of it, so a
/// failing (panicking) test never leaves replicas running.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Process {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts `name` with exactly `env` (plus PATH), logging to stderr.
pub(crate) fn spawn(name: &str, env: &Environment) -> Process {
    let mut command = Command::new(path(name));
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (key, value) in env.vars() {
        command.env(key, value);
    }
    command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map(Process)
        .unwrap_or_else(|error| panic!("starting {name}: {error}"))
}

pub(crate) fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {}", child.id());
}

pub(crate) fn terminate(child: &Child) {
    signal(child, "TERM");
}

/// Waits for `child` to exit, killing it after `timeout`.
pub(crate) fn wait(child: &mut Child, timeout: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
