//! Secrets in the config file: written as the value or as `env:NAME`, read
//! from the environment only by the role that uses them ([`Secrets`]), and
//! never printed.

use std::fmt;

use serde::Deserialize;

use super::error::{invalid, Invalid};

/// A secret value; never printed. Written in the file as the value itself
/// or as `env:NAME`, which stays unresolved until the load asks for the
/// secrets of a role that uses it (see [`Secrets`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(SecretValue);

#[derive(Clone, PartialEq, Eq)]
enum SecretValue {
    Value(String),
    /// `env:NAME` not read yet: the name of the variable.
    Env(String),
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretValue::Value(value.into()))
    }

    /// The secret itself, for signing; do not log it. Empty while it is an
    /// unresolved `env:` reference: a role uses only secrets it resolved.
    pub fn expose(&self) -> &str {
        match &self.0 {
            SecretValue::Value(v) => v,
            SecretValue::Env(_) => "",
        }
    }

    /// False for an `env:NAME` reference that was not read (a load that
    /// does not use this secret leaves it so).
    pub fn is_resolved(&self) -> bool {
        matches!(self.0, SecretValue::Value(_))
    }

    pub(crate) fn from_text(text: String) -> Secret {
        match text.strip_prefix("env:") {
            Some(name) => Secret(SecretValue::Env(name.to_owned())),
            None => Secret(SecretValue::Value(text)),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::from_text)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            SecretValue::Value(_) => f.write_str("Secret(<redacted>)"),
            SecretValue::Env(name) => write!(f, "Secret(env:{name}, unresolved)"),
        }
    }
}

/// Which `env:` secrets a load reads from the environment. Each role
/// resolves only what it uses, so an internet-facing ingest holds no
/// provider credential and a worker no callback secret; a secret left
/// unresolved needs no variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secrets {
    /// `easemob.apps[].secrets`: the ingest role.
    pub apps: bool,
    /// The targets' secrets and Redis URLs: the worker role.
    pub targets: bool,
    /// `env:` values in `[kafka.client]` (a SASL password): every client.
    pub kafka: bool,
    /// `easemob.apps[].rest` (Client ID and Secret): the reconcile role.
    pub rest: bool,
}

impl Secrets {
    /// Nothing: the file is checked without its secrets.
    pub const NONE: Secrets = Secrets {
        apps: false,
        targets: false,
        kafka: false,
        rest: false,
    };
    /// What `mutebridge ingest` uses.
    pub const INGEST: Secrets = Secrets {
        apps: true,
        targets: false,
        kafka: true,
        rest: false,
    };
    /// What `mutebridge worker` uses.
    pub const WORKER: Secrets = Secrets {
        apps: false,
        targets: true,
        kafka: true,
        rest: false,
    };
    /// Kafka's only: the commands that read or write topics.
    pub const KAFKA: Secrets = Secrets {
        apps: false,
        targets: false,
        kafka: true,
        rest: false,
    };
    /// The targets' only: `policy explain` signs requests, talks to no one.
    pub const TARGETS: Secrets = Secrets {
        apps: false,
        targets: true,
        kafka: false,
        rest: false,
    };
    /// What `mutebridge reconcile` uses.
    pub const RECONCILE: Secrets = Secrets {
        apps: false,
        targets: false,
        kafka: true,
        rest: true,
    };
    /// What `mutebridge run` uses: ingest's and the worker's.
    pub const RUN: Secrets = Secrets {
        apps: true,
        targets: true,
        kafka: true,
        rest: false,
    };
    /// Everything (`check-config --resolve all`).
    pub const ALL: Secrets = Secrets {
        apps: true,
        targets: true,
        kafka: true,
        rest: true,
    };
}

/// Replaces an `env:NAME` secret with the variable's value when `read`;
/// otherwise only checks that it names a variable.
pub(crate) fn resolve(
    secret: &mut Secret,
    env: &dyn Fn(&str) -> Option<String>,
    read: bool,
) -> Result<(), Invalid> {
    match &secret.0 {
        SecretValue::Value(v) if v.is_empty() => invalid("", "is empty"),
        SecretValue::Value(_) => Ok(()),
        SecretValue::Env(name) if name.is_empty() => {
            invalid("", "`env:` names no environment variable")
        }
        SecretValue::Env(_) if !read => Ok(()),
        SecretValue::Env(name) => {
            let value = env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                Invalid::new(
                    "",
                    format!("environment variable {name} is not set or empty"),
                )
            })?;
            *secret = Secret::new(value);
            Ok(())
        }
    }
}
