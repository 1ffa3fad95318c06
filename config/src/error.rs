use std::path::PathBuf;

/// Why the configuration could not be loaded. Every variant names the key (or
/// file) at fault so that an operator can fix it without reading code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file exists but cannot be read or parsed.
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },

    /// `FLEET_CONFIG_DIR` points somewhere that is not a directory.
    #[error("FLEET_CONFIG_DIR={path} is not a directory")]
    MissingDirectory { path: PathBuf },

    /// A key that no setting has: usually a typo, which would otherwise be
    /// silently ignored and leave the default in force.
    #[error("unknown configuration key `{key}` (from {origin})")]
    UnknownKey { key: String, origin: String },

    /// A value that cannot be read as the setting's type.
    #[error("configuration key `{key}`: {reason}")]
    Malformed { key: String, reason: String },

    /// A well-typed value outside what the fleet accepts.
    #[error("configuration key `{key}` has invalid value {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}
