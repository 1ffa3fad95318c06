use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, File, FileFormat, Map, Source, Value, ValueKind};

use crate::{ConfigError, Settings, validate};

/// The compiled-in defaults: the files in `config/` beside this crate.
const DEFAULT_TOML: &str = include_str!("../default.toml");
const WORKER_TOML: &[(&str, &str)] = &[
    ("order-worker", include_str!("../order-worker.toml")),
    ("inventory-worker", include_str!("../inventory-worker.toml")),
    ("payment-worker", include_str!("../payment-worker.toml")),
    (
        "notification-worker",
        include_str!("../notification-worker.toml"),
    ),
];

/// Environment variables seen by the loader.
///
/// Binaries use [`Environment::from_process`]; tests build one by hand so that
/// parallel tests never mutate the process environment.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: HashMap<String, String>,
}

impl Environment {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// Sets (or replaces) one variable.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(key.into(), value.into());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Every variable, for handing the same environment to a child process.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }
}

/// Loads and validates the settings of `component` (a worker name such as
/// `inventory-worker`, or a tool name such as `dlq-tool`, which only has the
/// shared defaults). See the crate documentation for the layers.
pub fn load(component: &str, env: &Environment) -> Result<Settings, ConfigError> {
    let mut builder = Config::builder()
        .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
        .add_source(File::from_str(
            embedded_component_toml(component),
            FileFormat::Toml,
        ));

    if let Some(dir) = env.get("FLEET_CONFIG_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            return Err(ConfigError::MissingDirectory { path: dir });
        }
        for name in ["default", component] {
            builder = builder.add_source(overlay_file(&dir, name)?);
        }
    }

    let config = builder
        .add_source(ConventionalUrls::from(env))
        .add_source(
            config::Environment::with_prefix("FLEET")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("retry.delays_ms")
                .source(Some(fleet_variables(env))),
        )
        .build()
        .map_err(malformed)?;

    let mut unknown = Vec::new();
    let settings: Settings = serde_ignored::deserialize(config.clone(), |path| {
        unknown.push(path.to_string());
    })
    .map_err(malformed)?;

    if let Some(key) = unknown.into_iter().next() {
        let origin = environment_variable_for(env, &key)
            .map(|variable| format!("environment variable {variable}"))
            .or_else(|| {
                config
                    .get::<Value>(&key)
                    .ok()
                    .and_then(|value| value.origin().map(str::to_owned))
            })
            .unwrap_or_else(|| "a configuration file".to_owned());
        return Err(ConfigError::UnknownKey { key, origin });
    }

    validate::settings(&settings)?;
    Ok(settings)
}

fn embedded_component_toml(component: &str) -> &'static str {
    WORKER_TOML
        .iter()
        .find(|(name, _)| *name == component)
        .map(|(_, toml)| *toml)
        .unwrap_or("")
}

/// `<dir>/<name>.toml` if it exists, validated as TOML now so the error names
/// the file rather than surfacing later as a vague build failure.
fn overlay_file(
    dir: &Path,
    name: &str,
) -> Result<File<config::FileSourceString, FileFormat>, ConfigError> {
    let path = dir.join(format!("{name}.toml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(ConfigError::File {
                path,
                reason: error.to_string(),
            });
        }
    };
    Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .build()
        .map_err(|error| ConfigError::File {
            path: path.clone(),
            reason: error.to_string(),
        })?;
    Ok(File::from_str(&text, FileFormat::Toml))
}

/// The `FLEET__…` variable that sets `key`, if one does.
fn environment_variable_for(env: &Environment, key: &str) -> Option<String> {
    env.vars
        .keys()
        .find(|variable| {
            variable
                .strip_prefix("FLEET__")
                .is_some_and(|rest| rest.to_lowercase().replace("__", ".") == key)
        })
        .cloned()
}

/// Only the `FLEET__…` variables, so that unrelated variables never reach the
/// unknown-key check.
fn fleet_variables(env: &Environment) -> Map<String, String> {
    env.vars
        .iter()
        .filter(|(key, _)| key.starts_with("FLEET__"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Turns a config-rs error into one that names the key. config-rs already
/// puts the key in most messages; the extraction keeps the shape uniform.
fn malformed(error: config::ConfigError) -> ConfigError {
    match error {
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => ConfigError::Malformed {
            key: key.unwrap_or_else(|| "<root>".to_owned()),
            reason: format!(
                "expected {expected}, found {unexpected}{}",
                origin.map(|o| format!(" (from {o})")).unwrap_or_default()
            ),
        },
        config::ConfigError::At { error, origin, key } => {
            let inner = malformed(*error);
            let (inner_key, reason) = match inner {
                ConfigError::Malformed { key, reason } => (Some(key), reason),
                other => (None, other.to_string()),
            };
            ConfigError::Malformed {
                key: key.or(inner_key).unwrap_or_else(|| "<root>".to_owned()),
                reason: format!(
                    "{reason}{}",
                    origin.map(|o| format!(" (from {o})")).unwrap_or_default()
                ),
            }
        }
        other => ConfigError::Malformed {
            key: "<root>".to_owned(),
            reason: other.to_string(),
        },
    }
}

/// `DATABASE_URL`, `AMQP_URL` and `REDIS_URL`: the names every tool and
/// platform already uses, layered below `FLEET__…` variables.
#[derive(Clone, Debug)]
struct ConventionalUrls(Map<String, Value>);

impl From<&Environment> for ConventionalUrls {
    fn from(env: &Environment) -> Self {
        let origin = "the environment".to_owned();
        let urls = [
            ("DATABASE_URL", "database.url"),
            ("AMQP_URL", "amqp.url"),
            ("REDIS_URL", "redis.url"),
        ]
        .into_iter()
        .filter_map(|(variable, key)| {
            env.get(variable).map(|value| {
                (
                    key.to_owned(),
                    Value::new(Some(&origin), ValueKind::String(value.to_owned())),
                )
            })
        })
        .collect();
        Self(urls)
    }
}

impl Source for ConventionalUrls {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}
