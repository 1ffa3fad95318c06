use std::fmt;

use serde::{Deserialize, Deserializer};

/// A connection URL that may carry a password.
///
/// `Debug` and `Display` show it with the password replaced by `***`, so that
/// settings can be logged at start-up; [`SecretUrl::expose`] gives the real
/// string to the one place that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) if parsed.password().is_some() => {
                // Setting a password only fails for URLs that cannot have one,
                // and this one already has one.
                let _ = parsed.set_password(Some("***"));
                parsed.to_string()
            }
            Ok(parsed) => parsed.to_string(),
            // Unparseable: it may still hold a secret, so show nothing of it.
            Err(_) => "[unparseable url redacted]".to_owned(),
        }
    }

    pub(crate) fn scheme(&self) -> Result<String, String> {
        url::Url::parse(&self.0)
            .map(|parsed| parsed.scheme().to_owned())
            .map_err(|error| error.to_string())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretUrl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_password() {
        let url = SecretUrl::new("amqp://fleet:hunter2@rabbit:5672/%2f");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(!url.to_string().contains("hunter2"));
        assert!(url.to_string().contains("fleet:***@rabbit"));
        assert_eq!(url.expose(), "amqp://fleet:hunter2@rabbit:5672/%2f");
    }

    #[test]
    fn unparseable_urls_are_hidden_whole() {
        let url = SecretUrl::new("not a url with secret");
        assert!(!format!("{url:?}").contains("secret"));
    }
}
