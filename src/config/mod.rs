//! Configuration: one TOML file, every key defaulted, unknown keys rejected.
//!
//! Errors name the file and the key (`mutebridge.toml: kafka.partitions: ...`)
//! because a service that silently ignores a misspelt key is one that runs
//! with the wrong settings in production.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub mod error;
pub mod secret;

pub use crate::ingest::config::{EasemobApp, EasemobConfig};
pub use crate::kafka::config::KafkaConfig;
pub use crate::ops::OpsConfig;
pub use crate::reconcile::config::{Reach, ReconcileConfig, RestConfig};
pub use crate::server::config::HttpConfig;
pub use crate::verify::config::VerifyConfig;
pub use crate::worker::config::{RetryConfig, WorkerConfig};
pub use error::{ConfigError, Invalid};
pub use secret::{Secret, Secrets};

use crate::policy::{Capabilities, MapConfig, Policy, PolicyConfig};
use crate::targets::TargetConfig;
use error::invalid;
use secret::resolve;

/// The appkey accepted when mutebridge runs without a config file.
pub const DEMO_APPKEY: &str = "demo#mutebridge";
/// The secret of the demo app. Only ever used without a config file.
pub const DEMO_SECRET: &str = "demo-secret";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub ops: OpsConfig,
    pub kafka: KafkaConfig,
    pub easemob: EasemobConfig,
    pub worker: WorkerConfig,
    pub reconcile: ReconcileConfig,
    pub verify: VerifyConfig,
    /// `[targets.NAME]`: downstream APIs the policy's actions go to.
    pub targets: BTreeMap<String, TargetConfig>,
    pub policy: PolicyConfig,
    /// `[maps.NAME]`: ID translation tables the policy may use.
    pub maps: BTreeMap<String, MapConfig>,
    /// The file this came from (for error messages); `None` for the demo.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// A configuration that passed every check, with its policy compiled (map
/// files read once): what the roles start from. Read it as a [`Config`]
/// (it derefs to one); a config built or changed in code becomes one with
/// [`Checked::new`].
#[derive(Debug, Clone)]
pub struct Checked {
    config: Config,
    policy: Arc<Policy>,
}

impl Checked {
    /// Checks `config` as it is now and compiles its policy.
    pub fn new(config: Config) -> Result<Checked, ConfigError> {
        let file = config.file_name();
        config.validate().map_err(|e| e.in_file(&file))?;
        let policy = Arc::new(config.compile_policy()?);
        Ok(Checked { config, policy })
    }

    /// The policy, compiled from this config's targets, rules and maps.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The config itself.
    pub fn into_config(self) -> Config {
        self.config
    }
}

impl std::ops::Deref for Checked {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// What a callback's event adds to its body at most, apart from long IDs:
/// the contract's own fields, the record key and headers.
pub const EVENT_ENVELOPE_BYTES: usize = 512;

/// The state keeper's name where targets are named too (the `pipeline`
/// label, `/targets`): reserved, so no target may take it. Here, beside
/// the check that refuses it, because the config is read by everything.
pub const KEEPER: &str = "state";

/// Where a configuration came from: a file, or the built-in demo defaults.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    Demo,
}

impl Config {
    /// The zero-config setup: embedded Kafka, the demo app, and a policy
    /// whose targets print the requests they would send (`src/config/demo.toml`).
    pub fn demo() -> Config {
        Config::parse_with_env(DEMO_TOML, Path::new("(built-in demo config)"), &|_| None)
            .expect("the built-in demo config is valid")
    }

    /// Fails unless the ingest role can run with this config.
    pub fn require_ingest(&self) -> Result<(), ConfigError> {
        if self.easemob.apps.is_empty() {
            return Err(Invalid::new(
                "easemob.apps",
                "no app is configured, so no callback could be verified; add an [[easemob.apps]] table",
            )
            .in_file(&self.file_name()));
        }
        Ok(())
    }

    fn file_name(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| PathBuf::from("(config)"))
    }

    fn compile_policy(&self) -> Result<Policy, ConfigError> {
        let base = self
            .file
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let targets: BTreeMap<&str, Capabilities> = self
            .targets
            .iter()
            .map(|(name, t)| (name.as_str(), t.capabilities()))
            .collect();
        Policy::build(&self.policy, &targets, &self.maps, base)
            .map_err(|e| e.in_file(&self.file_name()))
    }

    /// Loads `path`, or the demo configuration when `path` is `None`,
    /// reading the `secrets` its caller uses from the environment.
    pub fn load(path: Option<&Path>, secrets: Secrets) -> Result<(Checked, Origin), ConfigError> {
        match path {
            None => Ok((Checked::new(Config::demo())?, Origin::Demo)),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Invalid::new("(file)", format!("cannot read the config file: {e}"))
                        .in_file(path)
                })?;
                let env = |name: &str| std::env::var(name).ok();
                Ok((
                    Config::check(&text, path, &env, secrets)?,
                    Origin::File(path.to_path_buf()),
                ))
            }
        }
    }

    /// Parses and validates TOML text, every secret read from the
    /// environment; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, file, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::parse`], reading `env:` secrets through `env`.
    pub fn parse_with_env(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_with(text, file, env, Secrets::ALL)
    }

    /// Parses and validates TOML text, reading only the `secrets` asked
    /// for through `env`; the others stay unresolved references.
    pub fn parse_with(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        Config::check(text, file, env, secrets).map(Checked::into_config)
    }

    /// Parses, resolves the `secrets` asked for, validates, and compiles
    /// the policy.
    fn check(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: Secrets,
    ) -> Result<Checked, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." => "(top level)".to_string(),
                p => p,
            };
            let inner = e.into_inner();
            let at = inner.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" (line {line}, column {column})")
            });
            Invalid::new(
                key,
                format!("{}{}", one_line(inner.message()), at.unwrap_or_default()),
            )
            .in_file(file)
        })?;
        config.file = Some(file.to_path_buf());
        config
            .resolve_secrets(env, secrets)
            .and_then(|()| config.validate())
            .map_err(|e| e.in_file(file))?;
        let policy = Arc::new(config.compile_policy()?);
        Ok(Checked { config, policy })
    }

    /// Reads the selected `env:` secrets; the others are only checked to
    /// be well formed.
    fn resolve_secrets(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: Secrets,
    ) -> Result<(), Invalid> {
        for (i, app) in self.easemob.apps.iter_mut().enumerate() {
            for (j, secret) in app.secrets.iter_mut().enumerate() {
                resolve(secret, env, secrets.apps)
                    .map_err(|e| e.under(&format!("easemob.apps[{i}].secrets[{j}]")))?;
            }
            for (key, secret) in app.rest.iter_mut().flat_map(RestConfig::secrets_mut) {
                resolve(secret, env, secrets.rest)
                    .map_err(|e| e.under(&format!("easemob.apps[{i}].rest.{key}")))?;
            }
        }
        for (name, target) in self.targets.iter_mut() {
            for (key, secret) in target.secrets_mut() {
                resolve(secret, env, secrets.targets)
                    .map_err(|e| e.under(&format!("targets.{name}.{key}")))?;
            }
        }
        let kafka = &mut self.kafka;
        kafka.resolved_client.clear();
        for (key, value) in &kafka.client {
            let toml::Value::String(text) = value else {
                continue;
            };
            if !text.starts_with("env:") {
                continue;
            }
            let mut secret = Secret::from_text(text.clone());
            resolve(&mut secret, env, secrets.kafka)
                .map_err(|e| e.under(&format!("kafka.client.\"{key}\"")))?;
            if secret.is_resolved() {
                kafka.resolved_client.insert(key.clone(), secret);
            }
        }
        Ok(())
    }

    /// Checks what serde cannot, section by section (the policy is checked
    /// when it is compiled).
    fn validate(&self) -> Result<(), Invalid> {
        self.http.validate().map_err(|e| e.under("http"))?;
        self.kafka.validate().map_err(|e| e.under("kafka"))?;
        let max_message = crate::kafka::client::max_message_bytes(&self.kafka);
        if self.http.max_body_bytes + EVENT_ENVELOPE_BYTES > max_message {
            return invalid(
                "http.max_body_bytes",
                format!(
                    "{} bytes plus {EVENT_ENVELOPE_BYTES} of event envelope (fields, key, headers) do not fit the producer's message.max.bytes ({max_message}), so the largest callbacks could never be published; lower it or raise [kafka.client] \"message.max.bytes\" (and the topic's max.message.bytes)",
                    self.http.max_body_bytes
                ),
            );
        }
        self.easemob.validate().map_err(|e| e.under("easemob"))?;
        self.reconcile
            .validate()
            .map_err(|e| e.under("reconcile"))?;
        self.worker
            .validate(&self.kafka)
            .map_err(|e| e.under("worker"))?;
        self.verify.validate().map_err(|e| e.under("verify"))?;
        if let Some((i, t)) =
            (self.verify.targets.iter().enumerate()).find(|(_, t)| !self.targets.contains_key(*t))
        {
            return invalid(
                &format!("verify.targets[{i}]"),
                format!("no [targets.{t}] in the config"),
            );
        }
        for (name, target) in &self.targets {
            check_target_name(name).map_err(|e| e.under(&format!("targets.{name}")))?;
            target
                .validate()
                .map_err(|e| e.under(&format!("targets.{name}")))?;
        }
        if let Some(ops) = self.ops.listen {
            if ops == self.http.listen && ops.port() != 0 {
                return invalid(
                    "ops.listen",
                    format!(
                        "{ops} is http.listen too; give the operators' listener a port of its own"
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A target's name becomes part of a consumer group ID, record keys and
/// metric labels: letters, digits, `_` and `-` only, and not `state`
/// (the state keeper's `pipeline` label).
fn check_target_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return invalid(
            "",
            "a target's name is 1 to 64 letters, digits, `_` or `-` (it names the target's consumer group)",
        );
    }
    if name == KEEPER {
        return invalid(
            "",
            "`state` is the state keeper's name in metrics; give the target another",
        );
    }
    Ok(())
}

/// The built-in demo configuration.
const DEMO_TOML: &str = include_str!("demo.toml");

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, Path::new("test.toml"), &|name| match name {
            "SET" => Some("from-env".into()),
            _ => None,
        })
    }

    const APP: &str = "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"s\"]\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(APP).unwrap();
        assert_eq!(c.kafka.topic, "im.group-events");
        assert_eq!(c.kafka.partitions, 12);
        assert!(c.kafka.is_embedded());
        assert_eq!(c.http.max_body_bytes, 65536);
        assert_eq!(c.easemob.apps[0].secrets[0].expose(), "s");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse(&format!("{APP}[kafka]\ntopik = \"x\"\n")).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("test.toml: kafka"), "{text}");
        assert!(text.contains("topik"), "{text}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = parse(&format!("{APP}[kafka]\npartitions = \"twelve\"\n")).unwrap_err();
        assert_eq!(e.key, "kafka.partitions", "{e}");
    }

    #[test]
    fn env_secrets_resolve_or_fail_by_name() {
        let ok = parse("[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"env:SET\"]\n").unwrap();
        assert_eq!(ok.easemob.apps[0].secrets[0].expose(), "from-env");
        let e = parse("[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"x\", \"env:UNSET\"]\n")
            .unwrap_err();
        assert_eq!(e.key, "easemob.apps[0].secrets[1]");
        assert!(e.message.contains("UNSET"));
    }

    #[test]
    fn validation_errors_name_the_key() {
        let e = parse("").unwrap().require_ingest().unwrap_err();
        assert_eq!(e.key, "easemob.apps");
        let e = parse(
            "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"1\",\"2\",\"3\",\"4\",\"5\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "easemob.apps[0].secrets");
        let e = parse(&format!("{APP}[kafka.client]\nacks = \"1\"\n")).unwrap_err();
        assert!(e.key.contains("acks"), "{e}");
        let e = parse(&format!("{APP}[kafka]\npartitions = 0\n")).unwrap_err();
        assert_eq!(e.key, "kafka.partitions");
        let e = parse(&format!("{APP}[worker]\nstate_horizon_days = 3\n")).unwrap_err();
        assert_eq!(e.key, "worker.state_horizon_days");
        assert!(e.message.contains("3 days"), "{e}");
        let e = parse(&format!(
            "{APP}[worker]\nstate_topic = \"im.group-events.dlq\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "worker.state_topic");
    }

    #[test]
    fn client_properties_are_stringified() {
        let c = parse(&format!(
            "{APP}[kafka.client]\n\"linger.ms\" = 5\n\"compression.type\" = \"lz4\"\n"
        ))
        .unwrap();
        let props = c.kafka.client_properties();
        assert!(props.contains(&("linger.ms".into(), "5".into())));
        assert!(props.contains(&("compression.type".into(), "lz4".into())));
    }

    #[test]
    fn demo_config_is_valid_and_previews_both_providers() {
        let c = Config::demo();
        c.require_ingest().unwrap();
        let checked = Checked::new(c.clone()).unwrap();
        assert!(!checked.policy().is_empty());
        let mut changed = c.clone();
        changed.policy.rules.clear();
        assert!(
            Checked::new(changed).unwrap().policy().is_empty(),
            "a change in code is compiled"
        );
        assert!(c.targets.values().all(|t| t.kind() == "log"));
    }

    #[test]
    fn target_errors_name_the_target_and_key() {
        let e = parse(&format!(
            "{APP}[targets.zego]\nkind = \"zego\"\napp_id = 1\nserver_secret = \"env:UNSET\"\nfrom_user_id = \"b\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "targets.zego.server_secret");
        let e = parse(&format!(
            "{APP}[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\nrate_per_second = 0\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "targets.rc.rate_per_second");
        let e = parse(&format!(
            "{APP}[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\nrate_per_sec = 5\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("targets.rc") && e.to_string().contains("rate_per_sec"),
            "{e}"
        );
        let e = parse(&format!(
            "{APP}[[policy.rules]]\nname = \"r\"\nthen = [{{ target = \"nope\" }}]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "policy.rules[0].then[0].target");
        assert!(
            e.to_string().starts_with("test.toml: policy.rules[0]"),
            "{e}"
        );
    }

    #[test]
    fn rate_limit_mistakes_name_the_key() {
        let zego = format!(
            "{APP}[targets.zego]\nkind = \"zego\"\napp_id = 1\nserver_secret = \"s\"\nfrom_user_id = \"b\"\n[targets.zego.rate_limit]\n"
        );
        let err = |extra: &str| parse(&format!("{zego}{extra}")).unwrap_err();
        let key = |extra: &str| err(extra).key;
        assert_eq!(key("mode = \"redis\"\n"), "targets.zego.rate_limit.url");
        assert_eq!(key("headroom = 1.5\n"), "targets.zego.rate_limit.headroom");
        assert_eq!(key("burst = 0\n"), "targets.zego.rate_limit.burst");
        assert_eq!(
            key("url = \"redis://r:6379\"\n"),
            "targets.zego.rate_limit.url",
            "a URL without mode = redis is a mistake, not ignored"
        );
        let e = err("mode = \"redis\"\nurl = \"http://r:6379\"\n");
        assert_eq!(e.key, "targets.zego.rate_limit.url");
        assert!(e.message.contains("redis://"), "{e}");
        assert_eq!(
            key("mode = \"redis\"\nurl = \"env:UNSET_REDIS\"\n"),
            "targets.zego.rate_limit.url"
        );
        let e = err("mode = \"exact\"\n");
        // Inside a target (an internally tagged table) serde names the
        // target, and the message names the choices.
        assert!(
            e.key == "targets.zego" && e.message.contains("expected `partition_share` or `redis`"),
            "{e}"
        );
        let ok = parse(&format!(
            "{zego}mode = \"redis\"\nurl = \"redis://:pw@r:6379/2\"\nheadroom = 0.9\n"
        ))
        .unwrap();
        let limit = ok.targets["zego"].rate_limit().unwrap();
        assert_eq!(limit.mode, crate::limit::Mode::Redis);
        assert!(!format!("{ok:?}").contains(":pw@"), "the URL is a secret");
        // A webhook's limit is keyed by its receiver, never by a URL that
        // may carry a token.
        let hook = parse(&format!(
            "{APP}[targets.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example/in?token=t0p\"\nsecret = \"s\"\nrate_per_second = 5\n"
        ))
        .unwrap();
        let spec = hook.targets["hook"].limit_spec("hook").unwrap();
        assert_eq!(spec.app, "hooks.example:443");
        assert_eq!(
            crate::limit::redis::key(spec.kind, &spec.app),
            "mutebridge:rl:webhook:hooks.example:443"
        );
        let e = parse(&format!(
            "{APP}[worker.retry]\nrate_limited_horizon_seconds = 0\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "worker.retry.rate_limited_horizon_seconds");
    }

    /// The demo app, a ZEGO target with a Redis limit and a SASL password,
    /// every secret from the environment.
    const ROLES: &str = "[[easemob.apps]]\nappkey = \"a#b\"\nsecrets = [\"env:APP\"]\n[easemob.apps.rest]\nbase_url = \"https://a1.easemob.com\"\nclient_id = \"env:CID\"\nclient_secret = \"env:CSECRET\"\n[kafka.client]\n\"sasl.password\" = \"env:SASL\"\n[targets.zego]\nkind = \"zego\"\napp_id = 1\nserver_secret = \"env:ZEGO\"\nfrom_user_id = \"b\"\n[targets.zego.rate_limit]\nmode = \"redis\"\nurl = \"env:REDIS\"\n";

    fn parse_roles(secrets: Secrets, set: &[&str]) -> Result<Config, ConfigError> {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        Config::parse_with(
            ROLES,
            Path::new("roles.toml"),
            &|name| {
                set.iter().any(|s| s == name).then(|| match name {
                    "REDIS" => "redis://:pw@r:6379".to_owned(),
                    other => format!("value-of-{other}"),
                })
            },
            secrets,
        )
    }

    #[test]
    fn each_role_reads_only_its_secrets() {
        let c = parse_roles(Secrets::INGEST, &["APP", "SASL"]).unwrap();
        assert_eq!(c.easemob.apps[0].secrets[0].expose(), "value-of-APP");
        assert!(c
            .kafka
            .client_properties()
            .contains(&("sasl.password".into(), "value-of-SASL".into())));
        let TargetConfig::Zego(zego) = &c.targets["zego"] else {
            panic!()
        };
        assert!(!zego.server_secret.is_resolved());
        let c = parse_roles(Secrets::WORKER, &["ZEGO", "REDIS", "SASL"]).unwrap();
        assert!(!c.easemob.apps[0].secrets[0].is_resolved());
        let TargetConfig::Zego(zego) = &c.targets["zego"] else {
            panic!()
        };
        assert_eq!(zego.server_secret.expose(), "value-of-ZEGO");
        assert!(parse_roles(Secrets::NONE, &[]).is_ok());
        // What a role needs and lacks is named.
        let e = parse_roles(Secrets::WORKER, &["ZEGO", "SASL"]).unwrap_err();
        assert_eq!(e.key, "targets.zego.rate_limit.url", "{e}");
        let e = parse_roles(Secrets::INGEST, &["APP"]).unwrap_err();
        assert_eq!(e.key, "kafka.client.\"sasl.password\"", "{e}");
        let e = parse_roles(Secrets::RUN, &["APP", "SASL", "REDIS"]).unwrap_err();
        assert_eq!(e.key, "targets.zego.server_secret", "{e}");
        // Only the reconciler holds the REST credentials, and nothing else.
        let e = parse_roles(Secrets::RECONCILE, &["SASL", "CID"]).unwrap_err();
        assert_eq!(e.key, "easemob.apps[0].rest.client_secret", "{e}");
        let c = parse_roles(Secrets::RECONCILE, &["SASL", "CID", "CSECRET"]).unwrap();
        let rest = c.easemob.apps[0].rest.as_ref().unwrap();
        assert_eq!(rest.client_secret.expose(), "value-of-CSECRET");
        assert_eq!(rest.names("a#b"), ("a", "b"));
        assert!(!c.easemob.apps[0].secrets[0].is_resolved());
        assert!(parse_roles(Secrets::RUN, &["APP", "SASL", "ZEGO", "REDIS"]).is_ok());
        // The resolved secrets are not printed with the config.
        let c = parse_roles(
            Secrets::ALL,
            &["APP", "SASL", "ZEGO", "REDIS", "CID", "CSECRET"],
        )
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("value-of-"), "{printed}");
        // `env:` with no name is a mistake even unresolved.
        let e = parse(&format!(
            "{APP}[targets.w]\nkind = \"webhook\"\nurl = \"http://h/\"\nsecret = \"env:\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "targets.w.secret", "{e}");
    }

    #[test]
    fn values_that_would_overflow_a_timer_are_refused_by_key() {
        for (extra, key) in [
            ("[http]\nshutdown_grace_seconds = 9223372036854775000\n", "http.shutdown_grace_seconds"),
            ("[http]\nack_timeout_ms = 9223372036854775000\n", "http.ack_timeout_ms"),
            ("[http]\nmax_header_bytes = 1024\n", "http.max_header_bytes"),
            ("[http]\nmax_buffered_bytes = 1000\n", "http.max_buffered_bytes"),
            ("[worker]\nshutdown_grace_seconds = 9223372036854775000\n", "worker.shutdown_grace_seconds"),
            ("[worker]\nrequest_timeout_ms = 9223372036854775000\n", "worker.request_timeout_ms"),
            ("[worker.retry]\nmax_backoff_ms = 9223372036854775000\n", "worker.retry.max_backoff_ms"),
            ("[easemob]\ndedup_window_seconds = 9223372036854775000\n", "easemob.dedup_window_seconds"),
            ("[easemob]\nmax_future_skew_seconds = 0\n", "easemob.max_future_skew_seconds"),
            ("[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\nrate_per_second = 1e-30\n", "targets.rc.rate_per_second"),
            ("[targets.rc]\nkind = \"rongcloud\"\napp_key = \"k\"\napp_secret = \"s\"\n[targets.rc.rate_limit]\nheadroom = 1e-30\n", "targets.rc.rate_limit.headroom"),
            ("[ops]\nlisten = \"127.0.0.1:8080\"\n", "ops.listen"),
            ("[reconcile]\ninterval_seconds = 9223372036854775000\n", "reconcile.interval_seconds"),
            ("[easemob.apps.rest]\nbase_url = \"https://a1.easemob.com/org/app\"\nclient_id = \"i\"\nclient_secret = \"s\"\n", "easemob.apps[0].rest.base_url"),
            ("[easemob.apps.rest]\nbase_url = \"https://a1.easemob.com\"\nclient_id = \"i\"\nclient_secret = \"s\"\nrate_per_second = 500\n", "easemob.apps[0].rest.rate_per_second"),
        ] {
            let e = parse(&format!("{APP}{extra}")).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = parse(APP).unwrap();
        assert!(!format!("{c:?}").contains("\"s\""));
    }
}
