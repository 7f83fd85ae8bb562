//! Agent configuration (see the README's config reference).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_proto::admin::AdminConfig;
use tether_proto::congestion::Congestion;
use tether_proto::logging::LogConfig;
use tether_proto::runtime::RuntimeConfig;

use crate::enroll::IdentityFiles;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Relay QUIC address, `host:port`; resolved again on every connection attempt.
    pub relay: String,
    /// Name the relay's certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// Directory written by `tether-agent enroll` (ca.pem, agent.pem, agent.key). With it
    /// the agent also renews its certificate by itself. Alternative to `ca`/`cert`/`key`.
    pub state_dir: Option<PathBuf>,
    /// CA that signed the relay's certificate (and ours).
    pub ca: Option<PathBuf>,
    /// This agent's certificate and private key; re-read on every (re)connection.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Parallel QUIC connections kept open to the relay.
    pub connections: usize,
    /// Congestion controller for what the agent sends (responses, downloads): `bbr`,
    /// `cubic` or `newreno`. Applies from the next connection on.
    pub congestion: Congestion,
    /// Allowlist of local services, longest prefix first.
    pub routes: Vec<RouteConfig>,
    /// How long to wait for a local service to accept a TCP connection.
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// On SIGTERM, how long to wait for the relay to move traffic away and for requests
    /// in flight to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Admin HTTP listener: /healthz, /readyz, /metrics.
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Scheduler shape: worker threads (read once at start).
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub upstream: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            relay: "127.0.0.1:4433".into(),
            server_name: "localhost".into(),
            state_dir: None,
            ca: None,
            cert: None,
            key: None,
            connections: 2,
            congestion: Congestion::default(),
            routes: Vec::new(),
            upstream_connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            admin: AdminConfig::on(([127, 0, 0, 1], 9091).into()),
            log: LogConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// Most parallel connections one agent may keep (each is a full QUIC connection).
pub const MAX_CONNECTIONS: usize = 16;

impl Config {
    /// The identity files in use: from `state_dir`, or the explicit `ca`/`cert`/`key`.
    pub fn identity_files(&self) -> anyhow::Result<IdentityFiles> {
        match (&self.state_dir, &self.ca, &self.cert, &self.key) {
            (Some(dir), None, None, None) => Ok(IdentityFiles::in_state_dir(dir)),
            (None, Some(ca), Some(cert), Some(key)) => {
                Ok(IdentityFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() })
            }
            (Some(_), ..) => anyhow::bail!("set either state_dir or ca/cert/key, not both"),
            _ => anyhow::bail!(
                "no identity: set state_dir (after `tether-agent enroll`) or all of ca, cert and key"
            ),
        }
    }

    /// Checks what serde cannot: ranges and cross-field rules.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.identity_files()?;
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            anyhow::bail!(
                "connections must be 1..={MAX_CONNECTIONS}, got {}",
                self.connections
            );
        }
        if self
            .relay
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            anyhow::bail!("relay must be host:port, got {:?}", self.relay);
        }
        rustls::pki_types::ServerName::try_from(self.server_name.as_str()).map_err(|_| {
            anyhow::anyhow!("server_name {:?} is not a DNS name or IP", self.server_name)
        })?;
        Ok(())
    }
}

#[cfg(test)]
// figment::Jail's closures must return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_documented_example_parses() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                r#"
relay = "127.0.0.1:4433"
server_name = "localhost"
ca = "pki/ca.pem"
cert = "pki/node-a.pem"
key = "pki/node-a.key"
connections = 2           # parallel QUIC connections to the relay

[[routes]]
prefix = "/downstream_service/"
upstream = "http://127.0.0.1:3000"

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:3001"
"#,
            )?;
            jail.set_env("TETHER_CONNECTIONS", "3");
            let cfg: Config =
                tether_proto::config::load(Some(Path::new("agent.toml")), serde_json::json!({}))
                    .map_err(|e| *e)?;
            assert_eq!(cfg.connections, 3);
            assert_eq!(cfg.routes.len(), 2);
            assert_eq!(cfg.routes[0].upstream, "http://127.0.0.1:3000");
            cfg.validate().unwrap();
            Ok(())
        });
    }

    #[test]
    fn out_of_range_connections_are_refused() {
        let cfg = Config {
            connections: 0,
            state_dir: Some("/var/lib/tether".into()),
            ..Config::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("connections"));
    }
}
