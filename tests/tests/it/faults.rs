//! Faults injected from the server side, as production meets them.

use std::process::Command;
use std::time::Duration;

use deadpool_redis::redis;

/// Closes, from the server, every connection that replica `replica` of
/// namespace `namespace` holds for consuming (RabbitMQ: through the
/// management API; Redis: CLIENT KILL). Panics if there was none to close.
pub(crate) async fn close_server_side(transport: &str, namespace: &str, replica: &str) {
    match transport {
        "rabbitmq" => close_rabbitmq_connections(namespace, replica).await,
        "redis" => kill_redis_clients(namespace, replica).await,
        other => panic!("unknown transport {other}"),
    }
}

fn management_url() -> String {
    std::env::var("RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned())
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/services.sh installs it)");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn close_rabbitmq_connections(namespace: &str, replica: &str) {
    let base = management_url();
    let prefix = format!("{namespace}/{replica}/");
    // The management API lists a new connection after its next stats tick.
    for _ in 0..40 {
        let listing = curl(&[&format!(
            "{base}/api/connections?columns=name,client_properties"
        )]);
        let connections: Vec<serde_json::Value> = serde_json::from_str(&listing).unwrap();
        let targets: Vec<String> = connections
            .iter()
            .filter(|connection| {
                connection["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with(&prefix) && !name.ends_with("/publisher"))
            })
            .filter_map(|connection| connection["name"].as_str().map(str::to_owned))
            .collect();
        if !targets.is_empty() {
            for name in targets {
                let encoded = url_encode(&name);
                curl(&[
                    "-X",
                    "DELETE",
                    "-H",
                    "X-Reason: fault injected by test",
                    &format!("{base}/api/connections/{encoded}"),
                ]);
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no RabbitMQ connection named {prefix}* to close");
}

async fn kill_redis_clients(namespace: &str, replica: &str) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let listing: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    let prefix = format!("{namespace}:{replica}");
    let ids: Vec<String> = listing
        .lines()
        .filter(|line| {
            line.split(' ').any(|field| {
                field
                    .strip_prefix("name=")
                    .is_some_and(|name| name.starts_with(&prefix))
            })
        })
        .filter_map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("id=").map(str::to_owned))
        })
        .collect();
    assert!(!ids.is_empty(), "no Redis client named {prefix}* to kill");
    for id in ids {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&id)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A TCP proxy in front of a real server, which a test can cut and restore:
/// the broker "goes down" for one client without disturbing the other tests
/// that share the server.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Proxies a fresh local port to `target` (`host:port`).
    pub(crate) async fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let target = target.to_owned();
        let task = {
            let up = up.clone();
            let cut = cut.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        // Down: the connection is accepted and dropped at once.
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let mut cuts = cut.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cuts.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            port,
            up,
            cut,
            task,
        }
    }

    /// Drops every proxied connection and refuses new ones.
    pub(crate) fn go_down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn come_back(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.go_down();
        self.task.abort();
    }
}

/// `url` with its host and port replaced by the proxy's.
pub(crate) fn through(url: &str, proxy: &Proxy) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_host(Some("127.0.0.1")).unwrap();
    parsed.set_port(Some(proxy.port)).unwrap();
    parsed.to_string()
}

/// `host:port` of a service URL.
pub(crate) fn address(url: &str, default_port: u16) -> String {
    let parsed = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port().unwrap_or(default_port)
    )
}
