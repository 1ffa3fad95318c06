//! The deployment artefacts against the code, without Docker or Kubernetes:
//! `docker-compose.yml`, `Dockerfile`, `.env.example`, `deploy/rabbitmq`,
//! `deploy/prometheus`, `deploy/grafana` and `deploy/kubernetes` must name
//! binaries that exist, configuration that `fleet_config::load` accepts,
//! the ports and probe paths the workers serve, metric names the code
//! exports, broker names `fleet_messages::names` derives, and RabbitMQ
//! permissions that allow exactly what `fleet-broker` does. Nothing here is
//! a copy of what the code says: every expectation is read from the code
//! (or the crates it exports) when the test runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use fleet_broker::WorkerTopology;
use fleet_config::{Environment, Settings, Transport};
use fleet_messages::{Namespace, Worker, names};
use regex::Regex;
use sha2::{Digest, Sha256};
use yaml_serde::Value;

// --- reading the repository -------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// One YAML document with its merge keys (`<<: *anchor`) applied.
fn parse_yaml(text: &str, origin: &str) -> Value {
    let mut value: Value =
        yaml_serde::from_str(text).unwrap_or_else(|error| panic!("{origin}: {error}"));
    apply_merge_keys(&mut value, origin);
    value
}

/// Every document of a multi-document YAML file (documents separated by
/// `---` lines).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let document = parse_yaml(&current, &path.display().to_string());
            if !document.is_null() {
                documents.push(document);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
}

/// YAML merge keys, nested ones included (an anchor that itself merges
/// another), the way Compose resolves them: keys of the mapping win over
/// merged ones.
fn apply_merge_keys(value: &mut Value, origin: &str) {
    match value {
        Value::Mapping(mapping) => {
            while let Some(mut merged) = mapping.remove("<<") {
                apply_merge_keys(&mut merged, origin);
                let sources = match merged {
                    Value::Mapping(source) => vec![source],
                    Value::Sequence(sequence) => sequence
                        .into_iter()
                        .map(|item| match item {
                            Value::Mapping(source) => source,
                            other => panic!("{origin}: merge of a non-mapping {other:?}"),
                        })
                        .collect(),
                    other => panic!("{origin}: merge of a non-mapping {other:?}"),
                };
                for source in sources {
                    for (key, item) in source {
                        if !mapping.contains_key(&key) {
                            mapping.insert(key, item);
                        }
                    }
                }
            }
            for (_, item) in mapping.iter_mut() {
                apply_merge_keys(item, origin);
            }
        }
        Value::Sequence(sequence) => {
            for item in sequence {
                apply_merge_keys(item, origin);
            }
        }
        _ => {}
    }
}

/// A scalar as the string a container sees in its environment.
fn scalar(value: &Value, what: &str) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => panic!("{what}: expected a scalar, found {other:?}"),
    }
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    match value {
        Value::Sequence(items) => items.iter().map(|item| scalar(item, what)).collect(),
        Value::String(text) => text.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => panic!("{what}: expected a list, found {other:?}"),
    }
}

fn mapping_keys(value: &Value) -> Vec<String> {
    value
        .as_mapping()
        .map(|mapping| {
            mapping
                .keys()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `KEY=value` lines of an env file (comments and blank lines skipped).
fn dotenv(relative: &str) -> BTreeMap<String, String> {
    read(relative)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{relative}: not KEY=value: {line:?}"));
            assert!(
                !value.contains(" #"),
                "{relative}: inline comment after {key}: Compose would keep it in the value"
            );
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// Compose's variable interpolation: `$$`, `$NAME`, `${NAME}`,
/// `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`,
/// `${NAME?error}`. An unset variable without a default is an error here
/// (Compose would substitute an empty string, which no setting wants).
fn interpolate(text: &str, variables: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            out.push_str(&substitute(&braced[..end], variables)?);
            rest = &braced[end + 1..];
        } else {
            let length = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if length == 0 {
                return Err(format!("a lone $ in {text:?} (write $$)"));
            }
            let name = &after[..length];
            let value = variables
                .get(name)
                .ok_or_else(|| format!("${name} is not set in .env.example"))?;
            out.push_str(value);
            rest = &after[length..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn substitute(body: &str, variables: &BTreeMap<String, String>) -> Result<String, String> {
    let length = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (name, operator) = body.split_at(length);
    if name.is_empty() {
        return Err(format!("no variable name in ${{{body}}}"));
    }
    let set = variables.get(name);
    let set_non_empty = set.filter(|value| !value.is_empty());
    let missing = || format!("${{{name}}} is not set in .env.example and has no default");
    if operator.is_empty() {
        return set.cloned().ok_or_else(missing);
    }
    if let Some(default) = operator.strip_prefix(":-") {
        return Ok(set_non_empty.cloned().unwrap_or_else(|| default.to_owned()));
    }
    if let Some(default) = operator.strip_prefix('-') {
        return Ok(set.cloned().unwrap_or_else(|| default.to_owned()));
    }
    if let Some(message) = operator.strip_prefix(":?") {
        return set_non_empty
            .cloned()
            .ok_or_else(|| format!("${{{name}}} is required: {message}"));
    }
    if let Some(message) = operator.strip_prefix('?') {
        return set
            .cloned()
            .ok_or_else(|| format!("${{{name}}} is required: {message}"));
    }
    Err(format!("unsupported interpolation ${{{body}}}"))
}

/// Interpolates every string of a YAML tree.
fn interpolate_tree(
    value: &mut Value,
    variables: &BTreeMap<String, String>,
    errors: &mut Vec<String>,
) {
    match value {
        Value::String(text) => match interpolate(text, variables) {
            Ok(resolved) => *text = resolved,
            Err(error) => errors.push(error),
        },
        Value::Sequence(items) => {
            for item in items {
                interpolate_tree(item, variables, errors);
            }
        }
        Value::Mapping(mapping) => {
            for (_, item) in mapping.iter_mut() {
                interpolate_tree(item, variables, errors);
            }
        }
        _ => {}
    }
}

/// `[[bin]]` names of the workspace crates that ship binaries.
fn workspace_binaries() -> BTreeSet<String> {
    let mut binaries = BTreeSet::new();
    for manifest in ["workers/Cargo.toml", "dlq-tool/Cargo.toml"] {
        let mut in_bin = false;
        for line in read(manifest).lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(value) = line.strip_prefix("name") {
                let name = value.trim_start().trim_start_matches('=').trim();
                binaries.insert(name.trim_matches('"').to_owned());
            }
        }
    }
    assert!(
        binaries.len() >= 6,
        "found only {binaries:?} as [[bin]] targets: is the manifest parser broken?"
    );
    binaries
}

/// The routes `workers/src/http.rs` serves.
fn served_routes() -> BTreeSet<String> {
    let route = Regex::new(r#"\.route\(\s*"([^"]+)""#).unwrap();
    let routes: BTreeSet<String> = route
        .captures_iter(&read("workers/src/http.rs"))
        .map(|captures| captures[1].to_owned())
        .collect();
    for expected in ["/healthz", "/readyz", "/metrics"] {
        assert!(
            routes.contains(expected),
            "workers/src/http.rs serves {routes:?}, not {expected}"
        );
    }
    routes
}

/// Metric name constants of the worker runtime and the outbox, each with
/// whether its doc comment says it is a histogram.
fn metric_constants() -> BTreeMap<String, bool> {
    let constant = Regex::new(r#"^pub const [A-Z_]+: &str = "([a-z0-9_]+)";"#).unwrap();
    let mut metrics = BTreeMap::new();
    for file in ["workers/src/metrics.rs", "outbox/src/metrics.rs"] {
        let mut doc = String::new();
        for line in read(file).lines().map(str::trim) {
            if let Some(text) = line.strip_prefix("///") {
                doc.push_str(text.trim());
                doc.push(' ');
                continue;
            }
            if let Some(captures) = constant.captures(line) {
                metrics.insert(captures[1].to_owned(), doc.starts_with("Histogram"));
            }
            doc.clear();
        }
    }
    assert!(
        metrics.len() >= 10 && metrics.values().any(|histogram| *histogram),
        "parsed {metrics:?} from the metrics modules: is the parser broken?"
    );
    metrics
}

/// Long options of loadgen (`#[arg(long …)]` fields of its `Args`).
fn loadgen_flags() -> BTreeSet<String> {
    let field = Regex::new(r"^pub\(crate\) ([a-z_]+):").unwrap();
    let mut flags = BTreeSet::new();
    let mut long = false;
    for line in read("workers/src/loadgen/cli.rs").lines().map(str::trim) {
        if line.starts_with("#[arg(") {
            long = line.contains("long");
        } else if let Some(captures) = field.captures(line) {
            if long {
                flags.insert(format!("--{}", captures[1].replace('_', "-")));
            }
            long = false;
        }
    }
    assert!(
        flags.contains("--orders"),
        "loadgen flags parsed: {flags:?}"
    );
    flags
}

/// Subcommands of dlq-tool (variants of its `Command` enum).
fn dlq_tool_commands() -> BTreeSet<String> {
    let text = read("dlq-tool/src/cli.rs");
    let start = text
        .find("enum Command")
        .expect("dlq-tool/src/cli.rs has enum Command");
    let body = &text[start
        ..text[start..]
            .find("\n}")
            .map_or(text.len(), |end| start + end)];
    let variant = Regex::new(r"(?m)^\s+([A-Z][a-zA-Z]+)\(").unwrap();
    variant
        .captures_iter(body)
        .map(|captures| captures[1].to_lowercase())
        .collect()
}

// --- configuration ---------------------------------------------------------

/// Environment variables the binaries read besides `FLEET__…`.
const OTHER_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "AMQP_URL",
    "REDIS_URL",
    "FLEET_CONFIG_DIR",
    "RUST_LOG",
];

/// Loads `component`'s settings from `variables` exactly as the binary
/// would, after refusing variables the binaries never read (a misspelt
/// `DATABSE_URL` or `FLEET_HTTP__PORT` would be ignored silently, not
/// refused, by the loader).
fn load_settings(
    component: &str,
    variables: &BTreeMap<String, String>,
) -> Result<Settings, String> {
    for key in variables.keys() {
        if !key.starts_with("FLEET__") && !OTHER_VARIABLES.contains(&key.as_str()) {
            return Err(format!(
                "{key} is read by no binary of the fleet (expected FLEET__SECTION__KEY or one of {OTHER_VARIABLES:?})"
            ));
        }
    }
    let environment = variables
        .iter()
        .fold(Environment::default(), |environment, (key, value)| {
            environment.with(key.clone(), value.clone())
        });
    fleet_config::load(component, &environment).map_err(|error| error.to_string())
}

fn worker_named(name: &str) -> Option<Worker> {
    name.parse().ok()
}

// --- docker-compose.yml ----------------------------------------------------

struct Compose {
    services: BTreeMap<String, Value>,
    variables: BTreeMap<String, String>,
    image_env: BTreeMap<String, String>,
}

impl Compose {
    fn load() -> Self {
        let variables = dotenv(".env.example");
        let mut document = parse_yaml(&read("docker-compose.yml"), "docker-compose.yml");
        let mut errors = Vec::new();
        interpolate_tree(&mut document, &variables, &mut errors);
        assert!(errors.is_empty(), "docker-compose.yml: {errors:#?}");
        let services = document["services"]
            .as_mapping()
            .expect("docker-compose.yml has services")
            .iter()
            .map(|(name, service)| {
                (
                    name.as_str().expect("service names are strings").to_owned(),
                    service.clone(),
                )
            })
            .collect();
        Self {
            services,
            variables,
            image_env: Dockerfile::load().runtime_env(),
        }
    }

    fn service(&self, name: &str) -> &Value {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
    }

    /// Services that run the fleet's image (they are built from the Dockerfile).
    fn fleet_services(&self) -> Vec<(&str, &Value)> {
        self.services
            .iter()
            .filter(|(_, service)| !service["build"].is_null())
            .map(|(name, service)| (name.as_str(), service))
            .collect()
    }

    /// The binary a fleet service runs: the entrypoint, else the command.
    fn binary(&self, name: &str) -> String {
        let service = self.service(name);
        let entrypoint = strings(&service["entrypoint"], name);
        let command = strings(&service["command"], name);
        entrypoint
            .first()
            .or(command.first())
            .unwrap_or_else(|| panic!("{name}: no entrypoint or command names a binary"))
            .clone()
    }

    fn arguments(&self, name: &str) -> Vec<String> {
        let service = self.service(name);
        let mut words = strings(&service["entrypoint"], name);
        words.extend(strings(&service["command"], name));
        words.into_iter().skip(1).collect()
    }

    /// The service's own environment, as written in the file.
    fn service_env(&self, name: &str) -> BTreeMap<String, String> {
        let environment = &self.service(name)["environment"];
        match environment {
            Value::Mapping(mapping) => mapping
                .iter()
                .map(|(key, value)| {
                    let key = key
                        .as_str()
                        .expect("environment keys are strings")
                        .to_owned();
                    let value = scalar(value, &format!("{name}: {key}"));
                    (key, value)
                })
                .collect(),
            Value::Sequence(items) => items
                .iter()
                .map(|item| {
                    let entry = scalar(item, name);
                    let (key, value) = entry
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{name}: {entry:?} is not KEY=value"));
                    (key.to_owned(), value.to_owned())
                })
                .collect(),
            Value::Null => BTreeMap::new(),
            other => panic!("{name}: environment is {other:?}"),
        }
    }

    /// What the container's process sees: the image's ENV, then the service's.
    fn process_env(&self, name: &str) -> BTreeMap<String, String> {
        let mut environment = self.image_env.clone();
        environment.extend(self.service_env(name));
        environment
    }

    fn settings(&self, name: &str) -> Settings {
        let component = self.binary(name);
        load_settings(&component, &self.process_env(name))
            .unwrap_or_else(|error| panic!("docker-compose.yml service {name}: {error}"))
    }

    fn worker_services(&self) -> BTreeMap<Worker, String> {
        let mut workers = BTreeMap::new();
        for (name, _) in self.fleet_services() {
            if let Some(worker) = worker_named(&self.binary(name)) {
                let previous = workers.insert(worker, name.to_owned());
                assert!(
                    previous.is_none(),
                    "{worker} runs in two services: {previous:?} and {name}"
                );
            }
        }
        let missing: Vec<_> = Worker::ALL
            .iter()
            .filter(|worker| !workers.contains_key(worker))
            .collect();
        assert!(missing.is_empty(), "docker-compose.yml runs no {missing:?}");
        workers
    }

    fn profiles(&self, name: &str) -> Vec<String> {
        strings(&self.service(name)["profiles"], name)
    }

    /// Container paths of bind mounts, by host path (relative to the root).
    fn bind_mounts(&self, name: &str) -> Vec<(String, String)> {
        strings(&self.service(name)["volumes"], name)
            .into_iter()
            .filter(|volume| volume.starts_with("./") || volume.starts_with('/'))
            .map(|volume| {
                let mut parts = volume.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("{name}: volume {volume} has no target"))
                    .to_owned();
                (source, target)
            })
            .collect()
    }

    fn mount_source(&self, service: &str, target: &str) -> String {
        self.bind_mounts(service)
            .into_iter()
            .find(|(_, mounted)| mounted == target)
            .map(|(source, _)| source)
            .unwrap_or_else(|| panic!("{service} mounts nothing at {target}"))
    }
}

/// `http://127.0.0.1:<port><path>` in a healthcheck command.
fn probed_url(test: &[String]) -> Option<(u16, String)> {
    let url = Regex::new(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[A-Za-z0-9_/-]*)").unwrap();
    test.iter().find_map(|word| {
        url.captures(word)
            .map(|captures| (captures[1].parse().unwrap(), captures[2].to_owned()))
    })
}

/// Compose durations such as `45s`, `1m30s`, `500ms`.
fn compose_duration(text: &str) -> Duration {
    let part = Regex::new(r"(\d+)(ms|s|m|h)").unwrap();
    let mut total = Duration::ZERO;
    let mut consumed = 0;
    for captures in part.captures_iter(text) {
        let amount: u64 = captures[1].parse().unwrap();
        consumed += captures[0].len();
        total += match &captures[2] {
            "ms" => Duration::from_millis(amount),
            "s" => Duration::from_secs(amount),
            "m" => Duration::from_secs(amount * 60),
            _ => Duration::from_secs(amount * 3600),
        };
    }
    assert_eq!(consumed, text.len(), "unreadable duration {text:?}");
    total
}

/// `repository:tag` with a real tag (not `latest`, not missing).
fn assert_pinned(image: &str, origin: &str) {
    let without_digest = image.split('@').next().unwrap_or(image);
    let tag = without_digest
        .rsplit_once(':')
        .filter(|(repository, _)| !repository.is_empty())
        .map(|(_, tag)| tag)
        .filter(|tag| !tag.contains('/'));
    match tag {
        Some(tag) if tag != "latest" && !tag.is_empty() => {}
        _ => panic!("{origin}: image {image:?} is not pinned to an explicit tag"),
    }
}

#[test]
fn compose_services_run_workspace_binaries_with_valid_arguments() {
    let compose = Compose::load();
    let binaries = workspace_binaries();
    let fleet_services = compose.fleet_services();
    assert!(
        !fleet_services.is_empty(),
        "no service builds the fleet image"
    );
    for (name, _) in &fleet_services {
        let binary = compose.binary(name);
        assert!(
            binaries.contains(&binary),
            "service {name} runs {binary:?}, which is no [[bin]] of the workspace ({binaries:?})"
        );
    }
    compose.worker_services();

    let loadgen = fleet_services
        .iter()
        .map(|(name, _)| *name)
        .find(|name| compose.binary(name) == "loadgen")
        .expect("a service runs loadgen");
    let flags = loadgen_flags();
    for argument in compose.arguments(loadgen) {
        if argument.starts_with("--") {
            assert!(
                flags.contains(&argument),
                "{loadgen}: loadgen has no option {argument} ({flags:?})"
            );
        }
    }
    assert!(
        compose.profiles(loadgen).contains(&"demo".to_owned()),
        "loadgen runs in the demo profile"
    );

    let commands = dlq_tool_commands();
    for (name, _) in &fleet_services {
        if compose.binary(name) == "dlq-tool"
            && let Some(first) = compose.arguments(name).first()
        {
            assert!(
                commands.contains(first),
                "{name}: dlq-tool has no command {first} ({commands:?})"
            );
        }
    }
}

#[test]
fn compose_environment_is_configuration_every_binary_accepts() {
    let compose = Compose::load();
    for (name, _) in compose.fleet_services() {
        let settings = compose.settings(name);
        // The contract's default namespace: deploy/rabbitmq/definitions.json
        // grants permissions on its names.
        assert_eq!(
            settings.namespace().as_str(),
            Namespace::default().as_str(),
            "{name}: namespace"
        );
    }
    // Both transports of FLEET_TRANSPORT are valid for every service.
    for transport in ["rabbitmq", "redis"] {
        let mut variables = compose.variables.clone();
        variables.insert("FLEET_TRANSPORT".to_owned(), transport.to_owned());
        let mut document = parse_yaml(&read("docker-compose.yml"), "docker-compose.yml");
        let mut errors = Vec::new();
        interpolate_tree(&mut document, &variables, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let services = document["services"].as_mapping().unwrap();
        for (name, service) in services {
            if service["build"].is_null() {
                continue;
            }
            let name = name.as_str().unwrap();
            let transport_setting = service["environment"]["FLEET__TRANSPORT"].as_str();
            assert_eq!(
                transport_setting,
                Some(transport),
                "{name}: FLEET__TRANSPORT follows FLEET_TRANSPORT"
            );
        }
    }
}

#[test]
fn compose_connection_urls_point_at_the_compose_services_and_their_credentials() {
    let compose = Compose::load();
    let postgres = compose.service_env("postgres");
    // The password the Redis server requires (`--requirepass` of its command).
    let redis_command = strings(&compose.service("redis")["command"], "redis");
    let redis_password = redis_command
        .iter()
        .position(|word| word == "--requirepass")
        .and_then(|at| redis_command.get(at + 1))
        .expect("the compose Redis requires a password")
        .clone();
    assert_eq!(
        compose.service_env("redis-exporter")["REDIS_PASSWORD"],
        redis_password,
        "the Redis exporter's password"
    );
    let definitions = Definitions::load();
    for (name, _) in compose.fleet_services() {
        let environment = compose.process_env(name);
        let binary = compose.binary(name);
        if let Some(database) = environment.get("DATABASE_URL") {
            let url = url::Url::parse(database).unwrap();
            assert_eq!(
                url.host_str(),
                Some("postgres"),
                "{name}: DATABASE_URL host"
            );
            assert_eq!(
                url.username(),
                postgres["POSTGRES_USER"],
                "{name}: database user"
            );
            assert_eq!(
                url.password(),
                Some(postgres["POSTGRES_PASSWORD"].as_str()),
                "{name}: database password"
            );
            assert_eq!(
                url.path().trim_start_matches('/'),
                postgres["POSTGRES_DB"],
                "{name}: database"
            );
        }
        if let Some(redis_url) = environment.get("REDIS_URL") {
            let url = url::Url::parse(redis_url).unwrap();
            assert_eq!(url.host_str(), Some("redis"), "{name}: REDIS_URL host");
            assert_eq!(
                url.password(),
                Some(redis_password.as_str()),
                "{name}: Redis password"
            );
        }
        if let Some(amqp) = environment.get("AMQP_URL") {
            let url = url::Url::parse(amqp).unwrap();
            assert_eq!(url.host_str(), Some("rabbitmq"), "{name}: AMQP_URL host");
            // Each binary logs in as its own user, whose password the
            // definitions the broker loads accept.
            assert_eq!(url.username(), binary, "{name}: RabbitMQ user");
            let password = url.password().unwrap_or_default();
            assert!(
                definitions.accepts(&binary, password),
                "{name}: definitions.json does not accept the password AMQP_URL gives user {binary}"
            );
        }
    }
}

#[test]
fn compose_variables_all_come_from_env_example() {
    let compose_text = read("docker-compose.yml");
    let variables = dotenv(".env.example");
    // Interpolation (Compose::load) fails on a required variable that
    // .env.example lacks; here: no .env.example entry is dead weight.
    let reference = Regex::new(r"(?m)(?:^|[^$])\$\{([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    let referenced: BTreeSet<String> = reference
        .captures_iter(&compose_text)
        .map(|captures| captures[1].to_owned())
        .collect();
    let users: BTreeSet<String> = Definitions::load()
        .users()
        .into_iter()
        .map(|user| password_variable(&user))
        .collect();
    for key in variables.keys() {
        assert!(
            referenced.contains(key) || users.contains(key),
            ".env.example sets {key}, which neither docker-compose.yml nor definitions.json uses"
        );
    }
    Compose::load();
}

#[test]
fn compose_workers_are_replicated_health_checked_and_drained() {
    let compose = Compose::load();
    let routes = served_routes();
    for (worker, name) in compose.worker_services() {
        let service = compose.service(&name);
        let settings = compose.settings(&name);
        let port = settings.http.port;
        assert_ne!(port, 0, "{name}: http.port 0 cannot be probed");

        let test = strings(&service["healthcheck"]["test"], &name);
        let (probed_port, path) = probed_url(&test)
            .unwrap_or_else(|| panic!("{name}: healthcheck {test:?} requests no local URL"));
        assert_eq!(probed_port, port, "{name}: healthcheck port vs http.port");
        assert_eq!(path, "/readyz", "{name}: healthcheck path");
        assert!(routes.contains(&path), "{name}: {path} is not served");
        assert_eq!(
            test[0], "CMD",
            "{name}: the healthcheck runs a program of the image"
        );
        assert!(
            Dockerfile::load().provides(&test[1]),
            "{name}: the healthcheck runs {:?}, which the image does not have",
            test[1]
        );
        let exposed = strings(&service["expose"], &name);
        assert!(
            exposed.contains(&port.to_string()),
            "{name}: expose {exposed:?} lacks http.port {port}"
        );

        let replicas = service["deploy"]["replicas"].as_u64().unwrap_or(1);
        assert!(replicas >= 2, "{name}: deploy.replicas = {replicas}");
        assert!(
            service["container_name"].is_null(),
            "{name}: container_name prevents --scale"
        );
        assert!(
            strings(&service["ports"], &name).is_empty(),
            "{name}: a published host port prevents --scale"
        );

        let grace =
            compose_duration(service["stop_grace_period"].as_str().unwrap_or_else(|| {
                panic!("{name}: no stop_grace_period (Docker's default is 10 s)")
            }));
        assert!(
            grace > settings.worker.shutdown_timeout(),
            "{name}: stop_grace_period {grace:?} must exceed worker.shutdown_timeout_ms {:?}",
            settings.worker.shutdown_timeout()
        );

        for dependency in ["postgres", "rabbitmq", "redis"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"].as_str(),
                Some("service_healthy"),
                "{name} depends on {dependency} being healthy"
            );
            assert!(
                !compose.service(dependency)["healthcheck"]["test"].is_null(),
                "{dependency} has no healthcheck for {name} to wait on"
            );
        }
        assert_eq!(compose.binary(&name), worker.name());
    }
}

#[test]
fn compose_profiles_broker_and_images() {
    let compose = Compose::load();
    let workers = compose.worker_services();

    // loadgen waits until every worker is ready.
    let loadgen = compose
        .fleet_services()
        .into_iter()
        .map(|(name, _)| name.to_owned())
        .find(|name| compose.binary(name) == "loadgen")
        .unwrap();
    for name in workers.values() {
        assert_eq!(
            compose.service(&loadgen)["depends_on"][name.as_str()]["condition"].as_str(),
            Some("service_healthy"),
            "loadgen waits for {name}"
        );
    }
    for name in ["prometheus", "grafana", "redis-exporter"] {
        assert!(
            compose.profiles(name).contains(&"observability".to_owned()),
            "{name} belongs to the observability profile"
        );
    }
    // The services and the workers start without a profile.
    let mut by_default: Vec<String> = workers.values().cloned().collect();
    by_default.extend(["postgres", "rabbitmq", "redis"].map(str::to_owned));
    for name in &by_default {
        assert!(
            compose.profiles(name).is_empty(),
            "{name} must start by default"
        );
    }

    // The management UI on 15672, Prometheus metrics from the plugin.
    let rabbitmq_ports = strings(&compose.service("rabbitmq")["ports"], "rabbitmq");
    assert!(
        rabbitmq_ports.iter().any(|port| port.ends_with(":15672")),
        "rabbitmq publishes the management UI: {rabbitmq_ports:?}"
    );
    let plugins = read("deploy/rabbitmq/enabled_plugins");
    for plugin in ["rabbitmq_management", "rabbitmq_prometheus"] {
        assert!(plugins.contains(plugin), "enabled_plugins lacks {plugin}");
    }
    assert_eq!(
        compose.mount_source("rabbitmq", "/etc/rabbitmq/enabled_plugins"),
        "./deploy/rabbitmq/enabled_plugins"
    );
    let conf_target = compose
        .bind_mounts("rabbitmq")
        .into_iter()
        .find(|(source, _)| source == "./deploy/rabbitmq/rabbitmq.conf")
        .map(|(_, target)| target)
        .expect("rabbitmq mounts deploy/rabbitmq/rabbitmq.conf");
    assert!(
        conf_target.starts_with("/etc/rabbitmq/conf.d/")
            || conf_target == "/etc/rabbitmq/rabbitmq.conf",
        "rabbitmq.conf mounted where RabbitMQ does not read it: {conf_target}"
    );
    let conf = rabbitmq_conf();
    let definitions_target = conf
        .get("load_definitions")
        .expect("rabbitmq.conf loads the definitions");
    assert_eq!(
        compose.mount_source("rabbitmq", definitions_target),
        "./deploy/rabbitmq/definitions.json",
        "the broker loads the committed definitions by default"
    );

    // Every bind-mounted file or directory exists.
    for name in compose.services.keys() {
        for (source, _) in compose.bind_mounts(name) {
            assert!(
                root().join(&source).exists(),
                "{name} mounts {source}, which does not exist"
            );
        }
    }

    // Explicit tags everywhere.
    for (name, service) in &compose.services {
        if let Some(image) = service["image"].as_str() {
            assert_pinned(image, &format!("docker-compose.yml service {name}"));
        }
    }
}

/// `key = value` lines of deploy/rabbitmq/rabbitmq.conf.
fn rabbitmq_conf() -> BTreeMap<String, String> {
    read("deploy/rabbitmq/rabbitmq.conf")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key = value");
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

// --- Dockerfile -------------------------------------------------------------

struct Dockerfile {
    /// (instruction, arguments), continuation lines joined, per stage.
    stages: Vec<Vec<(String, String)>>,
    args: BTreeMap<String, String>,
}

impl Dockerfile {
    fn load() -> Self {
        let text = read("Dockerfile");
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
                continue;
            }
            if let Some(continued) = trimmed.strip_suffix('\\') {
                current.push_str(continued);
                current.push(' ');
            } else {
                current.push_str(trimmed);
                let (instruction, arguments) =
                    current.split_once(' ').unwrap_or((current.as_str(), ""));
                instructions.push((instruction.to_uppercase(), arguments.trim().to_owned()));
                current.clear();
            }
        }
        let mut stages: Vec<Vec<(String, String)>> = vec![Vec::new()];
        let mut args = BTreeMap::new();
        for (instruction, arguments) in instructions {
            if instruction == "FROM" {
                stages.push(Vec::new());
            }
            if instruction == "ARG"
                && let Some((key, value)) = arguments.split_once('=')
            {
                args.insert(key.to_owned(), value.trim_matches('"').to_owned());
            }
            stages.last_mut().unwrap().push((instruction, arguments));
        }
        Self { stages, args }
    }

    fn resolve(&self, text: &str) -> String {
        interpolate(text, &self.args).unwrap_or_else(|error| panic!("Dockerfile: {error}"))
    }

    /// The `BINARIES` the builder copies into the image.
    fn binaries(&self) -> BTreeSet<String> {
        self.args
            .get("BINARIES")
            .expect("the Dockerfile lists its BINARIES")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Whether the runtime image has `program` on PATH: one of the
    /// binaries, or a file copied into /usr/local/bin.
    fn provides(&self, program: &str) -> bool {
        self.binaries().contains(program)
            || self.runtime().iter().any(|(instruction, arguments)| {
                instruction == "COPY" && arguments.ends_with(&format!(" /usr/local/bin/{program}"))
            })
    }

    fn runtime(&self) -> &[(String, String)] {
        self.stages.last().expect("a runtime stage")
    }

    fn runtime_env(&self) -> BTreeMap<String, String> {
        let mut environment = BTreeMap::new();
        for (instruction, arguments) in self.runtime() {
            if instruction != "ENV" {
                continue;
            }
            for pair in arguments.split_whitespace() {
                let (key, value) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("Dockerfile: ENV {arguments} is not KEY=value"));
                environment.insert(key.to_owned(), value.trim_matches('"').to_owned());
            }
        }
        environment
    }
}

#[test]
fn dockerfile_builds_every_binary_into_one_small_non_root_image() {
    let dockerfile = Dockerfile::load();
    assert_eq!(
        dockerfile.binaries(),
        workspace_binaries(),
        "the image ships every [[bin]] of the workspace, and only those"
    );

    // Multi-stage, with the dependency layer built before the sources come in.
    let stage_names: Vec<String> = dockerfile
        .stages
        .iter()
        .skip(1)
        .map(|stage| stage[0].1.clone())
        .collect();
    assert!(stage_names.len() >= 3, "stages: {stage_names:?}");
    let builder = dockerfile
        .stages
        .iter()
        .find(|stage| stage[0].1.ends_with(" AS builder"))
        .expect("a builder stage");
    let position = |needle: &str| {
        builder
            .iter()
            .position(|(instruction, arguments)| {
                format!("{instruction} {arguments}").contains(needle)
            })
            .unwrap_or_else(|| panic!("the builder stage lacks {needle:?}"))
    };
    assert!(
        position("cargo chef cook") < position("COPY . ."),
        "dependencies are built before the sources are copied (the cached layer)"
    );
    assert!(position("cargo build --release --locked") > position("COPY . ."));

    // Pinned base images (stage references excepted).
    let stages: BTreeSet<String> = stage_names
        .iter()
        .filter_map(|from| from.split(" AS ").nth(1).map(str::to_owned))
        .collect();
    for from in &stage_names {
        let image = dockerfile.resolve(from.split(" AS ").next().unwrap());
        if !stages.contains(&image) {
            assert_pinned(&image, "Dockerfile FROM");
        }
    }

    // The runtime: no toolchain, a non-root user, the binaries on PATH.
    let runtime = dockerfile.runtime();
    let base = dockerfile.resolve(&runtime[0].1);
    assert!(
        base.contains("slim") || base.contains("distroless"),
        "runtime base {base} is not a small image"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(instruction, _)| instruction == "USER")
        .map(|(_, user)| user.clone())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "root" && uid != "0",
        "the runtime runs as {user}, not as a non-root user"
    );
    assert!(
        runtime
            .iter()
            .any(|(instruction, arguments)| instruction == "COPY"
                && arguments.contains("--from=builder")
                && arguments.ends_with("/usr/local/bin/")),
        "the binaries land on PATH"
    );
    // Its environment is configuration the binaries accept.
    for binary in dockerfile.binaries() {
        load_settings(&binary, &dockerfile.runtime_env())
            .unwrap_or_else(|error| panic!("Dockerfile ENV for {binary}: {error}"));
    }

    let ignored = read(".dockerignore");
    for entry in ["target/", ".env", ".git/"] {
        assert!(
            ignored.lines().any(|line| line.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

// --- RabbitMQ definitions ---------------------------------------------------

struct Definitions(serde_json::Value);

struct Permissions {
    user: String,
    configure: Regex,
    write: Regex,
    read: Regex,
}

#[derive(Clone, Copy, Debug)]
enum Access {
    Configure,
    Write,
    Read,
}

impl Permissions {
    /// RabbitMQ matches the regular expression anywhere in the name
    /// (unanchored), as `Regex::is_match` does. The default exchange is
    /// checked under the name `amq.default`.
    fn allows(&self, access: Access, name: &str) -> bool {
        let name = if name.is_empty() { "amq.default" } else { name };
        match access {
            Access::Configure => self.configure.is_match(name),
            Access::Write => self.write.is_match(name),
            Access::Read => self.read.is_match(name),
        }
    }

    fn require(&self, access: Access, name: &str, why: &str, failures: &mut Vec<String>) {
        if !self.allows(access, name) {
            failures.push(format!("{} lacks {access:?} on {name} ({why})", self.user));
        }
    }

    fn forbid(&self, name: &str, why: &str, failures: &mut Vec<String>) {
        for access in [Access::Configure, Access::Write, Access::Read] {
            if self.allows(access, name) {
                failures.push(format!("{} has {access:?} on {name} ({why})", self.user));
            }
        }
    }
}

impl Definitions {
    fn load() -> Self {
        let text = read("deploy/rabbitmq/definitions.json");
        Self(serde_json::from_str(&text).expect("definitions.json parses"))
    }

    fn users(&self) -> Vec<String> {
        self.0["users"]
            .as_array()
            .expect("definitions.json has users")
            .iter()
            .map(|user| user["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn user(&self, name: &str) -> &serde_json::Value {
        self.0["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|user| user["name"] == name)
            .unwrap_or_else(|| panic!("definitions.json has no user {name}"))
    }

    fn tags(&self, name: &str) -> Vec<String> {
        match &self.user(name)["tags"] {
            serde_json::Value::Array(tags) => tags
                .iter()
                .map(|tag| tag.as_str().unwrap().to_owned())
                .collect(),
            serde_json::Value::String(tags) => tags
                .split(',')
                .filter(|tag| !tag.is_empty())
                .map(str::to_owned)
                .collect(),
            other => panic!("{name}: tags {other}"),
        }
    }

    /// Whether `password` matches the user's salted SHA-256 hash:
    /// base64(salt[4] + sha256(salt + password)).
    fn accepts(&self, name: &str, password: &str) -> bool {
        let user = self.user(name);
        assert_eq!(
            user["hashing_algorithm"], "rabbit_password_hashing_sha256",
            "{name}: hashing algorithm"
        );
        let Some(hash) = user["password_hash"].as_str() else {
            return false;
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(hash) else {
            return false;
        };
        if bytes.len() != 4 + 32 {
            return false;
        }
        let (salt, digest) = bytes.split_at(4);
        let mut hasher = Sha256::new();
        hasher.update(salt);
        hasher.update(password.as_bytes());
        hasher.finalize()[..] == *digest
    }

    fn permissions(&self, name: &str) -> Permissions {
        let entries: Vec<&serde_json::Value> = self.0["permissions"]
            .as_array()
            .expect("definitions.json has permissions")
            .iter()
            .filter(|entry| entry["user"] == name)
            .collect();
        assert_eq!(entries.len(), 1, "{name}: one permission entry expected");
        let entry = entries[0];
        assert_eq!(entry["vhost"], "/", "{name}: the fleet's virtual host");
        let regex = |field: &str| {
            let pattern = entry[field].as_str().unwrap();
            Regex::new(pattern).unwrap_or_else(|error| panic!("{name} {field}: {error}"))
        };
        Permissions {
            user: name.to_owned(),
            configure: regex("configure"),
            write: regex("write"),
            read: regex("read"),
        }
    }
}

fn password_variable(user: &str) -> String {
    format!(
        "RABBITMQ_PASSWORD_{}",
        user.to_uppercase().replace('-', "_")
    )
}

#[test]
fn definitions_hashes_match_the_env_example_passwords() {
    let definitions = Definitions::load();
    let variables = dotenv(".env.example");
    let users = definitions.users();
    assert!(!users.is_empty());
    for user in users {
        let variable = password_variable(&user);
        let password = variables
            .get(&variable)
            .unwrap_or_else(|| panic!(".env.example lacks {variable} for RabbitMQ user {user}"));
        assert!(
            definitions.accepts(&user, password),
            "definitions.json: the hash of {user} is not that of {variable} in .env.example \
             (regenerate: python3 deploy/rabbitmq/set-passwords.py .env.example -o deploy/rabbitmq/definitions.json)"
        );
        assert!(
            !definitions.accepts(&user, &format!("{password}x")),
            "{user}: the hash check accepts anything"
        );
    }
    let vhosts = definitions.0["vhosts"].as_array().expect("vhosts");
    assert!(
        vhosts.iter().any(|vhost| vhost["name"] == "/"),
        "definitions.json creates the `/` virtual host (no default one is created when definitions are imported at boot)"
    );
}

/// What a worker's RabbitMQ user must be allowed, operation by operation
/// of `broker/src/rabbitmq` (topology.rs, publish.rs, consume.rs,
/// settle.rs), per RabbitMQ's permission rules: declaring an exchange or
/// queue needs configure on it; a queue with `x-dead-letter-exchange` also
/// needs read on the queue and write on that exchange; binding needs write
/// on the queue and read on the exchange; publishing needs write on the
/// exchange; consuming and `basic.get` need read on the queue; deleting
/// needs configure.
fn required_for_consumer(
    namespace: &Namespace,
    topology: &WorkerTopology,
) -> Vec<(Access, String, &'static str)> {
    let worker = topology.worker.as_str();
    let events = names::exchange(namespace);
    let retry = names::retry_exchange(namespace, worker);
    let queue = names::worker_queue(namespace, worker);
    let dlq = names::dead_letter_queue(namespace, worker);
    let mut required = vec![
        (
            Access::Configure,
            events.clone(),
            "declare the events exchange",
        ),
        (
            Access::Write,
            events.clone(),
            "publish (outbox relay, loadgen)",
        ),
        (
            Access::Read,
            events.clone(),
            "bind its queue to the events exchange",
        ),
        (
            Access::Configure,
            retry.clone(),
            "declare its retry exchange",
        ),
        (
            Access::Write,
            retry.clone(),
            "publish retries and dead letters; dead-letter target of its queues",
        ),
        (
            Access::Read,
            retry.clone(),
            "bind its queues to its retry exchange",
        ),
        (
            Access::Configure,
            dlq.clone(),
            "declare its dead-letter queue",
        ),
        (Access::Write, dlq.clone(), "bind its dead-letter queue"),
        (Access::Configure, queue.clone(), "declare its queue"),
        (Access::Write, queue.clone(), "bind its queue"),
        (
            Access::Read,
            queue.clone(),
            "consume; declare with a dead-letter exchange",
        ),
    ];
    for delay in &topology.retry_delays {
        let tier = names::retry_queue(namespace, worker, *delay);
        required.push((Access::Configure, tier.clone(), "declare a retry tier"));
        required.push((Access::Write, tier.clone(), "bind a retry tier"));
        required.push((
            Access::Read,
            tier,
            "declare a retry tier with a dead-letter exchange",
        ));
    }
    required
}

/// Every name a worker's topology owns.
fn owned_names(namespace: &Namespace, topology: &WorkerTopology) -> Vec<String> {
    let worker = topology.worker.as_str();
    let mut owned = vec![
        names::worker_queue(namespace, worker),
        names::dead_letter_queue(namespace, worker),
        names::retry_exchange(namespace, worker),
    ];
    owned.extend(
        topology
            .retry_delays
            .iter()
            .map(|delay| names::retry_queue(namespace, worker, *delay)),
    );
    owned
}

fn check_worker_permissions(
    definitions: &Definitions,
    namespace: &Namespace,
    topologies: &BTreeMap<Worker, WorkerTopology>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (worker, topology) in topologies {
        let permissions = definitions.permissions(worker.name());
        for (access, name, why) in required_for_consumer(namespace, topology) {
            permissions.require(access, &name, why, &mut failures);
        }
        for (other, other_topology) in topologies {
            if other != worker {
                for name in owned_names(namespace, other_topology) {
                    permissions.forbid(&name, &format!("owned by {other}"), &mut failures);
                }
            }
        }
        let dlq = names::dead_letter_queue(namespace, worker.name());
        if permissions.allows(Access::Read, &dlq) {
            failures.push(format!(
                "{worker} may read its dead letters (dlq-tool's job)"
            ));
        }
        if permissions.allows(Access::Write, "") {
            failures.push(format!("{worker} may publish to the default exchange"));
        }
        if !definitions.tags(worker.name()).is_empty() {
            failures.push(format!("{worker} has management tags"));
        }
    }
    failures
}

fn compose_topologies(compose: &Compose) -> (Namespace, BTreeMap<Worker, WorkerTopology>) {
    let mut namespace = None;
    let mut topologies = BTreeMap::new();
    for (worker, service) in compose.worker_services() {
        let settings = compose.settings(&service);
        namespace = Some(settings.namespace());
        topologies.insert(worker, WorkerTopology::for_worker(worker, &settings.retry));
    }
    (namespace.unwrap(), topologies)
}

#[test]
fn worker_users_may_do_what_their_worker_does_and_nothing_of_the_others() {
    let compose = Compose::load();
    let (namespace, topologies) = compose_topologies(&compose);
    let failures = check_worker_permissions(&Definitions::load(), &namespace, &topologies);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn loadgen_dlq_tool_keda_and_admin_users_have_just_their_rights() {
    let compose = Compose::load();
    let (namespace, topologies) = compose_topologies(&compose);
    let definitions = Definitions::load();
    let mut failures = Vec::new();

    // loadgen observes through a worker-like topology of its own,
    // `loadgen-<8 hex>` (workers/src/loadgen/mod.rs), publishes orders and
    // deletes its queues at the end.
    let loadgen = definitions.permissions("loadgen");
    let run_id: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(8)
        .collect();
    let observer = WorkerTopology {
        worker: format!("loadgen-{run_id}"),
        event_types: Vec::new(),
        retry_delays: vec![Duration::from_secs(1)],
        delivery_limit: 5,
        expires_after: None,
    };
    for (access, name, why) in required_for_consumer(&namespace, &observer) {
        loadgen.require(access, &name, why, &mut failures);
    }
    for topology in topologies.values() {
        for name in owned_names(&namespace, topology) {
            loadgen.forbid(&name, "a worker's", &mut failures);
        }
    }

    // dlq-tool: peeks and takes dead letters, replays and imports them
    // through the worker's retry exchange, watches re-dead-lettering through
    // a server-named exclusive queue (amq.gen-…) bound to that exchange.
    // `import` also tries to declare the worker's topology and only warns
    // when refused (dlq-tool/src/commands/import.rs): allowing it would take
    // read on the worker's input queue, which must stay the worker's.
    let dlq_tool = definitions.permissions("dlq-tool");
    let watch_queue = format!("amq.gen-{}", uuid::Uuid::new_v4().simple());
    dlq_tool.require(
        Access::Configure,
        &watch_queue,
        "declare its watch queue",
        &mut failures,
    );
    dlq_tool.require(
        Access::Write,
        &watch_queue,
        "bind its watch queue",
        &mut failures,
    );
    dlq_tool.require(
        Access::Read,
        &watch_queue,
        "consume its watch queue",
        &mut failures,
    );
    for worker in Worker::ALL {
        let dlq = names::dead_letter_queue(&namespace, worker.name());
        let retry = names::retry_exchange(&namespace, worker.name());
        dlq_tool.require(
            Access::Read,
            &dlq,
            "peek and take dead letters",
            &mut failures,
        );
        dlq_tool.require(Access::Write, &retry, "replay and import", &mut failures);
        dlq_tool.require(Access::Read, &retry, "bind the watch queue", &mut failures);
        dlq_tool.forbid(
            &names::worker_queue(&namespace, worker.name()),
            "a worker's input",
            &mut failures,
        );
    }
    for access in [Access::Configure, Access::Write] {
        if dlq_tool.allows(access, &names::exchange(&namespace)) {
            failures.push(format!("dlq-tool has {access:?} on the events exchange"));
        }
    }

    // keda reads queue depths through the management API: tag `monitoring`,
    // no resource permission at all.
    let keda = definitions.permissions("keda");
    assert!(definitions.tags("keda").contains(&"monitoring".to_owned()));
    keda.forbid(
        &names::exchange(&namespace),
        "read-only user",
        &mut failures,
    );
    for topology in topologies.values() {
        for name in owned_names(&namespace, topology) {
            keda.forbid(&name, "read-only user", &mut failures);
        }
    }
    assert!(
        definitions
            .tags("admin")
            .contains(&"administrator".to_owned())
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

// --- Prometheus and Grafana --------------------------------------------------

#[test]
fn prometheus_scrapes_every_worker_replica_and_both_brokers() {
    let compose = Compose::load();
    let workers = compose.worker_services();
    let config = parse_yaml(
        &read("deploy/prometheus/prometheus.yml"),
        "deploy/prometheus/prometheus.yml",
    );
    assert_eq!(
        compose.mount_source("prometheus", "/etc/prometheus/prometheus.yml"),
        "./deploy/prometheus/prometheus.yml"
    );
    let routes = served_routes();
    let mut scraped_workers = BTreeSet::new();
    let mut scraped_services = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        let job_name = job["job_name"].as_str().unwrap();
        let path = job["metrics_path"].as_str().unwrap_or("/metrics");
        for discovery in job["dns_sd_configs"].as_sequence().into_iter().flatten() {
            assert_eq!(
                discovery["type"].as_str(),
                Some("A"),
                "{job_name}: A records, one per replica"
            );
            let port = discovery["port"].as_u64().expect("a port") as u16;
            for name in strings(&discovery["names"], job_name) {
                let settings = compose.settings(&name);
                assert_eq!(
                    port, settings.http.port,
                    "{job_name}: {name} serves metrics on http.port"
                );
                assert!(routes.contains(path), "{job_name}: {path} is not served");
                scraped_workers.insert(name);
            }
        }
        for target_group in job["static_configs"].as_sequence().into_iter().flatten() {
            for target in strings(&target_group["targets"], job_name) {
                let (host, port) = target.split_once(':').expect("host:port");
                let port: u16 = port.parse().unwrap();
                assert!(
                    compose.services.contains_key(host),
                    "{job_name}: target {host} is no compose service"
                );
                assert_eq!(
                    port,
                    metrics_port(&compose, host),
                    "{job_name}: {host} serves metrics on another port"
                );
                if host == "rabbitmq" {
                    assert!(
                        path == "/metrics" || path.starts_with("/metrics/"),
                        "{job_name}: rabbitmq_prometheus serves /metrics…, not {path}"
                    );
                }
                scraped_services.insert(host.to_owned());
            }
        }
    }
    let expected: BTreeSet<String> = workers.values().cloned().collect();
    assert_eq!(
        scraped_workers, expected,
        "every worker service is discovered"
    );
    for service in ["rabbitmq", "redis-exporter"] {
        assert!(
            scraped_services.contains(service),
            "{service} is not scraped"
        );
    }
}

/// The port a non-fleet service serves Prometheus metrics on, from its own
/// configuration.
fn metrics_port(compose: &Compose, service: &str) -> u16 {
    match service {
        "rabbitmq" => rabbitmq_conf()
            .get("prometheus.tcp.port")
            .map_or(15692, |port| port.parse().unwrap()),
        "redis-exporter" => compose
            .service_env(service)
            .get("REDIS_EXPORTER_WEB_LISTEN_ADDRESS")
            .map_or(9121, |address| {
                address.rsplit(':').next().unwrap().parse().unwrap()
            }),
        other => compose.settings(other).http.port,
    }
}

#[test]
fn grafana_is_provisioned_with_a_dashboard_of_real_metrics() {
    let compose = Compose::load();
    let datasources = parse_yaml(
        &read("deploy/grafana/provisioning/datasources/prometheus.yml"),
        "datasources",
    );
    let datasource = &datasources["datasources"][0];
    let uid = datasource["uid"].as_str().expect("a datasource uid");
    let url = url::Url::parse(datasource["url"].as_str().unwrap()).unwrap();
    assert!(compose.services.contains_key(url.host_str().unwrap()));
    assert_eq!(url.host_str(), Some("prometheus"));
    assert_eq!(url.port(), Some(9090));

    let providers = parse_yaml(
        &read("deploy/grafana/provisioning/dashboards/fleet.yml"),
        "dashboard providers",
    );
    let dashboards_path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let dashboards_source = compose.mount_source("grafana", dashboards_path);
    assert_eq!(
        compose.mount_source("grafana", "/etc/grafana/provisioning"),
        "./deploy/grafana/provisioning"
    );

    let dashboard_path = root().join(&dashboards_source).join("fleet.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&dashboard_path).expect("the fleet dashboard exists"),
    )
    .expect("the dashboard JSON parses");
    let home = compose.service_env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].clone();
    assert_eq!(home, format!("{dashboards_path}/fleet.json"));

    let metrics = metric_constants();
    let fleet_metric = Regex::new(r"\bfleet_[a-z0-9_]+").unwrap();
    let mut queried = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap().to_owned();
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            let source = target["datasource"]["uid"]
                .as_str()
                .or(panel["datasource"]["uid"].as_str());
            assert_eq!(source, Some(uid), "{title}: datasource");
            let expr = target["expr"].as_str().unwrap();
            for found in fleet_metric.find_iter(expr) {
                let name = found.as_str();
                let known = metrics.contains_key(name)
                    || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                        name.strip_suffix(suffix)
                            .is_some_and(|base| metrics.get(base) == Some(&true))
                    });
                assert!(
                    known,
                    "{title}: {name} is exported by neither workers nor outbox"
                );
                queried.insert(name.to_owned());
            }
        }
        titles.push(title);
    }
    for topic in [
        "Queue depth",
        "Consumer-group lag",
        "Throughput",
        "Errors",
        "Dead-letter depth",
        "Handler latency",
        "Relay lag",
    ] {
        assert!(
            titles.iter().any(|title| title.contains(topic)),
            "the dashboard has no {topic} panel ({titles:?})"
        );
    }
    for essential in [
        "fleet_handled_total",
        "fleet_dead_lettered_total",
        "fleet_handler_seconds_bucket",
        "fleet_outbox_oldest_unpublished_seconds",
    ] {
        assert!(
            queried.contains(essential),
            "the dashboard never queries {essential}"
        );
    }
}

// --- Kubernetes -------------------------------------------------------------

/// The documents `kubectl apply -k <dir>` would apply: resources (files or
/// directories with their own kustomization), then patches (strategic merge
/// on mappings, matched by kind and name).
fn kustomize(directory: &Path) -> Vec<Value> {
    let kustomization = parse_yaml(
        &std::fs::read_to_string(directory.join("kustomization.yaml"))
            .unwrap_or_else(|error| panic!("{}: {error}", directory.display())),
        &directory.display().to_string(),
    );
    let mut documents = Vec::new();
    for resource in strings(&kustomization["resources"], "resources") {
        let path = directory.join(&resource);
        if path.is_dir() {
            documents.extend(kustomize(&path));
        } else {
            documents.extend(yaml_documents(&path));
        }
    }
    for patch in kustomization["patches"].as_sequence().into_iter().flatten() {
        let path = directory.join(patch["path"].as_str().expect("patches by path"));
        for patch in yaml_documents(&path) {
            let target = documents
                .iter_mut()
                .find(|document| {
                    document["kind"] == patch["kind"]
                        && document["metadata"]["name"] == patch["metadata"]["name"]
                })
                .unwrap_or_else(|| panic!("{}: patches nothing", path.display()));
            merge_patch(target, &patch);
        }
    }
    for document in &documents {
        assert!(
            document["apiVersion"].is_string()
                && document["kind"].is_string()
                && document["metadata"]["name"].is_string(),
            "{}: a document without apiVersion, kind or name: {document:?}",
            directory.display()
        );
    }
    documents
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Mapping(target), Value::Mapping(patch)) => {
            for (key, value) in patch {
                match target.get_mut(key) {
                    Some(existing) => merge_patch(existing, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|document| document["kind"].as_str() == Some(kind))
        .collect()
}

fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    of_kind(documents, kind)
        .into_iter()
        .find(|document| document["metadata"]["name"].as_str() == Some(name))
}

/// The container's environment as far as the repository defines it:
/// ConfigMaps of `envFrom` and literal `env` values. Secrets hold only the
/// connection URLs and are created by the operator (none is committed).
fn container_env(documents: &[Value], container: &Value, origin: &str) -> BTreeMap<String, String> {
    let mut environment = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            let config_map = named(documents, "ConfigMap", name).unwrap_or_else(|| {
                panic!("{origin}: ConfigMap {name} is not part of the manifests")
            });
            for key in mapping_keys(&config_map["data"]) {
                let value = scalar(&config_map["data"][key.as_str()], &key);
                environment.insert(key, value);
            }
        }
    }
    for variable in container["env"].as_sequence().into_iter().flatten() {
        let key = variable["name"].as_str().unwrap().to_owned();
        if let Some(value) = variable.get("value") {
            environment.insert(key, scalar(value, origin));
        } else {
            assert!(
                !variable["valueFrom"]["secretKeyRef"].is_null(),
                "{origin}: {key} comes from neither a value nor a Secret"
            );
        }
    }
    environment
}

fn container_port(container: &Value, port: &Value, origin: &str) -> u16 {
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).unwrap();
    }
    let name = port
        .as_str()
        .unwrap_or_else(|| panic!("{origin}: probe port {port:?}"));
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|declared| declared["name"].as_str() == Some(name))
        .and_then(|declared| declared["containerPort"].as_u64())
        .map(|number| u16::try_from(number).unwrap())
        .unwrap_or_else(|| panic!("{origin}: no container port named {name}"))
}

fn kubernetes_overlays() -> Vec<PathBuf> {
    let overlays: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("kustomization.yaml").exists())
        .filter(|path| path.file_name().is_some_and(|name| name != "base"))
        .collect();
    assert!(overlays.len() >= 2, "overlays: {overlays:?}");
    overlays
}

#[test]
fn kubernetes_deployments_probe_drain_and_configure_like_the_binaries() {
    let binaries = workspace_binaries();
    let routes = served_routes();
    for overlay in kubernetes_overlays() {
        let documents = kustomize(&overlay);
        let origin = overlay.display().to_string();
        assert!(
            of_kind(&documents, "Secret").is_empty(),
            "{origin}: a Secret is committed"
        );
        let deployments = of_kind(&documents, "Deployment");
        let mut workers = BTreeSet::new();
        for deployment in deployments {
            let name = deployment["metadata"]["name"].as_str().unwrap();
            let origin = format!("{origin}: Deployment {name}");
            let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
            assert!(replicas >= 2, "{origin}: replicas = {replicas}");
            let pod = &deployment["spec"]["template"];
            let containers = pod["spec"]["containers"].as_sequence().expect("containers");
            assert_eq!(containers.len(), 1, "{origin}: one container");
            let container = &containers[0];
            let command = strings(&container["command"], &origin);
            let binary = command
                .first()
                .unwrap_or_else(|| panic!("{origin}: no command"));
            assert!(
                binaries.contains(binary),
                "{origin}: {binary} is no [[bin]]"
            );
            let worker =
                worker_named(binary).unwrap_or_else(|| panic!("{origin}: {binary} is no worker"));
            workers.insert(worker);
            assert_pinned(container["image"].as_str().unwrap(), &origin);

            let mut environment = Dockerfile::load().runtime_env();
            environment.extend(container_env(&documents, container, &origin));
            let settings = load_settings(binary, &environment)
                .unwrap_or_else(|error| panic!("{origin}: {error}"));
            let port = settings.http.port;
            assert_ne!(port, 0, "{origin}: http.port 0 cannot be probed");

            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &container[probe]["httpGet"];
                assert_eq!(get["path"].as_str(), Some(path), "{origin}: {probe} path");
                assert_eq!(
                    container_port(container, &get["port"], &origin),
                    port,
                    "{origin}: {probe} port"
                );
            }
            if !container["startupProbe"].is_null() {
                let get = &container["startupProbe"]["httpGet"];
                assert!(
                    routes.contains(get["path"].as_str().unwrap()),
                    "{origin}: startupProbe path"
                );
                assert_eq!(container_port(container, &get["port"], &origin), port);
            }
            let annotations = &pod["metadata"]["annotations"];
            if let Some(scrape_port) = annotations["prometheus.io/port"].as_str() {
                assert_eq!(
                    scrape_port,
                    port.to_string(),
                    "{origin}: prometheus.io/port"
                );
                let path = annotations["prometheus.io/path"]
                    .as_str()
                    .unwrap_or("/metrics");
                assert!(routes.contains(path), "{origin}: prometheus.io/path");
            }

            let grace = pod["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30);
            assert!(
                Duration::from_secs(grace) > settings.worker.shutdown_timeout(),
                "{origin}: terminationGracePeriodSeconds {grace} must exceed worker.shutdown_timeout_ms {}",
                settings.worker.shutdown_timeout_ms
            );
            assert_eq!(
                pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
                Some(true),
                "{origin}: runAsNonRoot"
            );

            // Its own credentials: a Secret per worker.
            let secrets: Vec<String> = container["envFrom"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|source| source["secretRef"]["name"].as_str().map(str::to_owned))
                .collect();
            assert!(
                secrets.iter().any(|secret| secret.contains(worker.name())),
                "{origin}: no Secret of its own ({secrets:?})"
            );

            // A PodDisruptionBudget selecting exactly these pods.
            let labels = &pod["metadata"]["labels"];
            let selector = &deployment["spec"]["selector"]["matchLabels"];
            let budget = of_kind(&documents, "PodDisruptionBudget")
                .into_iter()
                .find(|budget| budget["spec"]["selector"]["matchLabels"] == *selector)
                .unwrap_or_else(|| panic!("{origin}: no PodDisruptionBudget selects its pods"));
            for key in mapping_keys(selector) {
                assert_eq!(
                    labels[key.as_str()],
                    selector[key.as_str()],
                    "{origin}: pod label {key}"
                );
            }
            assert!(
                !budget["spec"]["maxUnavailable"].is_null()
                    || !budget["spec"]["minAvailable"].is_null(),
                "{origin}: the PodDisruptionBudget sets no bound"
            );
        }
        let expected: BTreeSet<Worker> = Worker::ALL.into_iter().collect();
        assert_eq!(workers, expected, "{origin}: one Deployment per worker");
    }
}

#[test]
fn keda_scales_each_worker_on_its_own_queue_or_consumer_group_lag() {
    for overlay in kubernetes_overlays() {
        let documents = kustomize(&overlay);
        let origin = overlay.display().to_string();
        let scaled_objects = of_kind(&documents, "ScaledObject");
        assert_eq!(
            scaled_objects.len(),
            Worker::ALL.len(),
            "{origin}: one ScaledObject per worker"
        );
        for scaled in scaled_objects {
            let target = scaled["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
            let deployment = named(&documents, "Deployment", target)
                .unwrap_or_else(|| panic!("{origin}: ScaledObject targets no Deployment {target}"));
            let container = &deployment["spec"]["template"]["spec"]["containers"][0];
            let binary = strings(&container["command"], target)[0].clone();
            let worker = worker_named(&binary).unwrap();
            let mut environment = Dockerfile::load().runtime_env();
            environment.extend(container_env(&documents, container, &origin));
            let settings = load_settings(&binary, &environment).unwrap();
            let namespace = settings.namespace();
            assert_eq!(
                namespace,
                Namespace::default(),
                "{origin}: {target} runs in namespace fleet"
            );
            let minimum = scaled["spec"]["minReplicaCount"].as_u64().unwrap_or(0);
            let maximum = scaled["spec"]["maxReplicaCount"].as_u64().unwrap_or(100);
            assert!(
                minimum >= 1 && minimum <= maximum,
                "{origin}: {target} replicas {minimum}..{maximum}"
            );

            let triggers = scaled["spec"]["triggers"].as_sequence().expect("triggers");
            assert!(!triggers.is_empty());
            let mut streams = BTreeSet::new();
            for trigger in triggers {
                let metadata = &trigger["metadata"];
                let authentication = trigger["authenticationRef"]["name"].as_str().unwrap();
                assert!(
                    named(&documents, "TriggerAuthentication", authentication).is_some(),
                    "{origin}: {target} refers to a missing TriggerAuthentication {authentication}"
                );
                match (settings.transport, trigger["type"].as_str()) {
                    (Transport::Rabbitmq, Some("rabbitmq")) => {
                        assert_eq!(
                            metadata["queueName"].as_str(),
                            Some(names::worker_queue(&namespace, worker.name()).as_str()),
                            "{origin}: {target} queue"
                        );
                        assert!(
                            metadata["value"]
                                .as_str()
                                .is_some_and(|value| value.parse::<u64>().is_ok())
                        );
                    }
                    (Transport::Redis, Some("redis-streams")) => {
                        assert_eq!(
                            metadata["consumerGroup"].as_str(),
                            Some(names::consumer_group(worker.name()).as_str()),
                            "{origin}: {target} consumer group"
                        );
                        assert!(
                            metadata["lagCount"].as_str().is_some(),
                            "{origin}: {target} scales on lag"
                        );
                        assert!(
                            metadata["address"]
                                .as_str()
                                .is_some_and(|address| address.contains(':')),
                            "{origin}: {target} names no Redis host:port"
                        );
                        streams.insert(metadata["stream"].as_str().unwrap().to_owned());
                    }
                    (transport, kind) => panic!(
                        "{origin}: {target} runs on {} but scales on a {kind:?} trigger",
                        transport.as_str()
                    ),
                }
            }
            if settings.transport == Transport::Redis {
                let expected: BTreeSet<String> = worker
                    .consumes()
                    .iter()
                    .map(|event_type| names::event_stream(&namespace, event_type.as_str()))
                    .collect();
                assert_eq!(streams, expected, "{origin}: {target} streams");
            }
        }
    }
}

// --- the checks themselves can fail --------------------------------------------

#[test]
fn the_checks_refuse_broken_input() {
    let good: BTreeMap<String, String> = [("FLEET__HTTP__PORT", "8080")]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    assert!(load_settings("order-worker", &good).is_ok());
    for (key, value) in [
        ("FLEET__HTTP__PROT", "8080"),
        ("FLEET_HTTP__PORT", "8080"),
        ("DATABSE_URL", "postgres://x@y/z"),
        ("FLEET__HTTP__PORT", "eighty"),
        ("FLEET__TRANSPORT", "kafka"),
        ("AMQP_URL", "http://rabbitmq"),
    ] {
        let mut broken = good.clone();
        broken.insert(key.to_owned(), value.to_owned());
        assert!(
            load_settings("order-worker", &broken).is_err(),
            "{key}={value} was accepted"
        );
    }

    let variables: BTreeMap<String, String> = [("SET".to_owned(), "value".to_owned())]
        .into_iter()
        .collect();
    assert_eq!(interpolate("a${SET}b$$c", &variables).unwrap(), "avalueb$c");
    assert_eq!(
        interpolate("${UNSET:-fallback}", &variables).unwrap(),
        "fallback"
    );
    assert!(interpolate("${UNSET:?needed}", &variables).is_err());
    assert!(interpolate("${UNSET}", &variables).is_err());

    // A worker user without write on its retry exchange cannot retry.
    let mut definitions = Definitions::load();
    let compose = Compose::load();
    let (namespace, topologies) = compose_topologies(&compose);
    for entry in definitions.0["permissions"].as_array_mut().unwrap() {
        if entry["user"] == "payment-worker" {
            entry["write"] =
                serde_json::Value::String(r"^fleet\.(events|payment-worker)$".to_owned());
        }
    }
    let failures = check_worker_permissions(&definitions, &namespace, &topologies);
    assert!(
        failures
            .iter()
            .any(|failure| failure
                .contains("payment-worker lacks Write on fleet.payment-worker.retry")),
        "{failures:#?}"
    );
    // A worker user that may read another worker's queue is refused too.
    for entry in definitions.0["permissions"].as_array_mut().unwrap() {
        if entry["user"] == "notification-worker" {
            entry["read"] = serde_json::Value::String(".*".to_owned());
        }
    }
    let failures = check_worker_permissions(&definitions, &namespace, &topologies);
    assert!(
        failures
            .iter()
            .any(|failure| failure.contains("notification-worker has Read on fleet.order-worker")),
        "{failures:#?}"
    );

    assert!(!Definitions::load().accepts("order-worker", "not-the-password"));
    assert!(std::panic::catch_unwind(|| assert_pinned("redis", "test")).is_err());
    assert!(std::panic::catch_unwind(|| assert_pinned("redis:latest", "test")).is_err());
    assert_pinned("registry:5000/fleet:0.1.0", "test");
}
