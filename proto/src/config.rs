//! Configuration layering shared by both binaries: defaults, then a TOML file, then
//! `TETHER_` environment variables, then command-line flags; each overrides the last.
//!
//! Nested keys in the environment use a double underscore:
//! `TETHER_INGRESS__LISTEN=127.0.0.1:8080` sets `ingress.listen`.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Prefix of every environment variable Tether reads.
pub const ENV_PREFIX: &str = "TETHER_";

/// Loads a config of type `T`. `flags` holds only the settings given on the command line
/// (a JSON object of the same shape as `T`), so unset flags never mask the file.
pub fn load<T: DeserializeOwned + Serialize + Default>(
    file: Option<&Path>,
    flags: serde_json::Value,
) -> Result<T, Box<figment::Error>> {
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(Box::new(figment::Error::from(format!(
                "config file {} does not exist",
                path.display()
            ))));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    fig.merge(Env::prefixed(ENV_PREFIX).split("__"))
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(Box::new)
}

/// Builds the `flags` object for [`load`] from `(dotted.key, value)` pairs, skipping
/// flags that were not given.
pub fn flags<const N: usize>(pairs: [(&str, Option<serde_json::Value>); N]) -> serde_json::Value {
    let mut root = serde_json::Map::new();
    for (key, value) in pairs {
        let Some(value) = value else { continue };
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("key is not empty");
        let mut map = &mut root;
        for p in parts {
            map = map
                .entry(p)
                .or_insert_with(|| serde_json::Value::Object(Default::default()))
                .as_object_mut()
                .expect("flag keys form a tree");
        }
        map.insert(last.to_owned(), value);
    }
    serde_json::Value::Object(root)
}

#[cfg(test)]
// figment::Jail's closures must return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Default, Debug)]
    #[serde(default)]
    struct Cfg {
        a: Inner,
        top: String,
    }
    #[derive(serde::Deserialize, serde::Serialize, Default, Debug)]
    #[serde(default)]
    struct Inner {
        x: String,
        y: String,
    }

    #[test]
    fn file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "top = \"file\"\n[a]\nx = \"file\"\ny = \"file\"\n",
            )?;
            jail.set_env("TETHER_A__Y", "env");
            let cfg: Cfg = load(
                Some(Path::new("c.toml")),
                flags([("a.x", Some("flag".into())), ("top", None)]),
            )
            .map_err(|e| *e)?;
            assert_eq!(cfg.a.x, "flag");
            assert_eq!(cfg.a.y, "env");
            assert_eq!(cfg.top, "file");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let r: Result<Cfg, _> = load(Some(Path::new("/nonexistent/tether.toml")), flags([]));
        assert!(r.unwrap_err().to_string().contains("does not exist"));
    }
}
