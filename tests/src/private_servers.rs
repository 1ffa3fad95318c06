//! Private servers that one test owns and may crash and restart at will:
//! a Redis, a PostgreSQL cluster or a RabbitMQ node of its own, on free
//! ports, in a temporary directory. The shared services cannot be restarted
//! without breaking every other test running beside it; these can.
//!
//! They use the server binaries the machine has (the same Debian packages
//! `scripts/services.sh` installs). Where one is missing, the test fails with
//! a message that says what to install; it never skips.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A directory removed when dropped.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new(kind: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "fleet-{kind}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap()
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < timeout,
            "{what} did not listen on {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|error| {
        panic!("{what}: {error} (is the server package installed? scripts/services.sh installs it)")
    });
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether this process runs as root, where PostgreSQL and RabbitMQ refuse to
/// run and are started as their own system users instead.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// `program args…`, as `user` when running as root.
fn as_user(user: &str, program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", user, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn chown(path: &Path, user: &str) {
    if is_root() {
        run(Command::new("chown").args(["-R", user]).arg(path), "chown");
    }
}

// ------------------------------------------------------------------ redis

/// A `redis-server` with an append-only file fsynced on every write, as a
/// production Redis for streams must run: a crash loses nothing acknowledged.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    dir: Scratch,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: Scratch::new("redis"),
            child: None,
        };
        redis.launch();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("starting redis-server: {error} (install the redis-server package)")
            });
        self.child = Some(child);
        wait_for_port(self.port, "redis-server", Duration::from_secs(20));
    }

    /// `kill -9` and start again on the same port and data: a crash.
    pub fn crash_and_restart(&mut self, down_for: Duration) {
        self.crash();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// Starts the server again after [`PrivateRedis::crash`], on the same
    /// port and data.
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// `kill -9`: the server is gone until [`PrivateRedis::start_again`].
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.crash();
    }
}

// --------------------------------------------------------------- postgres

/// A PostgreSQL cluster of its own (`initdb` into a temporary directory).
#[derive(Debug)]
pub struct PrivatePostgres {
    port: u16,
    dir: Scratch,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = postgres_bin();
        let dir = Scratch::new("postgres");
        chown(&dir.0, "postgres");
        run(
            as_user("postgres", &bin.join("initdb"))
                .arg("-D")
                .arg(dir.0.join("data"))
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]),
            "initdb",
        );
        let postgres = Self {
            port: free_port(),
            dir,
            bin,
        };
        postgres.launch();
        postgres
    }

    /// The URL of database `postgres` on this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self) -> Command {
        let mut command = as_user("postgres", &self.bin.join("pg_ctl"));
        command.arg("-D").arg(self.dir.0.join("data"));
        command
    }

    fn launch(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.0.display()
        );
        run(
            self.pg_ctl()
                .args(["-o", &options, "-l"])
                .arg(self.dir.0.join("log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
    }

    /// Stops the server the way a crash does (`-m immediate`: no checkpoint,
    /// every connection cut) and starts it again; recovery replays the WAL.
    pub fn crash_and_restart(&self, down_for: Duration) {
        self.stop("immediate");
        std::thread::sleep(down_for);
        self.launch();
    }

    fn stop(&self, mode: &str) {
        let _ = self
            .pg_ctl()
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries under /usr/lib/postgresql (install the postgresql package)")
    })
}

// --------------------------------------------------------------- rabbitmq

/// A RabbitMQ node of its own (`<name>@localhost` on free ports, its own
/// data directory), sharing only the machine's Erlang installation.
#[derive(Debug)]
pub struct PrivateRabbitMq {
    node: String,
    port: u16,
    dir: Scratch,
}

impl PrivateRabbitMq {
    pub fn start() -> Self {
        let dir = Scratch::new("rabbitmq");
        let port = free_port();
        std::fs::write(
            dir.0.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        std::fs::write(dir.0.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.0.join("rabbitmq-env.conf"), "").unwrap();
        chown(&dir.0, "rabbitmq");
        let rabbitmq = Self {
            node: format!("fleet{}@localhost", free_port()),
            port,
            dir,
        };
        rabbitmq.launch();
        rabbitmq
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn env(&self, command: &mut Command) {
        let dir = &self.dir.0;
        command
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"));
    }

    fn ctl(&self) -> Command {
        let mut command = Command::new("rabbitmqctl");
        command.args(["-n", &self.node]);
        command
    }

    fn launch(&self) {
        let mut server = Command::new("rabbitmq-server");
        self.env(&mut server);
        run(server.arg("-detached"), "rabbitmq-server -detached");
        wait_for_port(self.port, "rabbitmq-server", Duration::from_secs(120));
        run(
            self.ctl().args(["await_startup", "--timeout", "120"]),
            "rabbitmqctl await_startup",
        );
    }

    /// Stops the whole node (every connection closed by the server) and
    /// starts it again on the same data: durable queues and their messages
    /// survive, as on a production restart.
    pub fn restart(&self, down_for: Duration) {
        run(self.ctl().arg("stop"), "rabbitmqctl stop");
        std::thread::sleep(down_for);
        self.launch();
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        let _ = self.ctl().arg("stop").output();
    }
}
