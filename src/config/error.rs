//! Configuration mistakes: [`Invalid`] (a key path relative to the section
//! that found it, and what is wrong) and [`ConfigError`] (the same, with the
//! file). Every section checks itself with these, so a mistake always
//! names its file and its key.

use std::path::{Path, PathBuf};

/// A configuration mistake, naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending key (`easemob.apps[0].secrets[1]`).
    pub key: String,
    pub message: String,
}

/// A setting that is wrong: its dotted key path and what is wrong with it.
/// Each section checks itself with keys relative to the section;
/// [`Invalid::under`] puts the section's name in front on the way up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same mistake as seen from the table `prefix`
    /// (`rate_per_second` under `targets.zego` is `targets.zego.rate_per_second`).
    pub fn under(mut self, prefix: &str) -> Invalid {
        self.key = if self.key.is_empty() {
            prefix.to_owned()
        } else if self.key.starts_with('[') {
            format!("{prefix}{}", self.key)
        } else {
            format!("{prefix}.{}", self.key)
        };
        self
    }

    pub(crate) fn in_file(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            key: self.key,
            message: self.message,
        }
    }
}

/// `Err(Invalid)` for `key`, to keep checks one line each.
pub(crate) fn invalid<T>(key: &str, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid::new(key, message))
}

/// `value` (in `unit`) must lie in `range`: durations and sizes beyond it
/// are mistakes, and some would overflow a timer at run time.
pub(crate) fn within(
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> Result<(), Invalid> {
    if range.contains(&value) {
        Ok(())
    } else {
        invalid(
            key,
            format!(
                "{value} is not between {} and {} {unit}",
                range.start(),
                range.end()
            ),
        )
    }
}

/// Seconds in a day, for bounds.
pub(crate) const DAY: u64 = 86_400;
