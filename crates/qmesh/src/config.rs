//! The config file: `qmesh.toml` (or `--config FILE` / `QMESH_CONFIG`).
//!
//! Each subcommand reads the table named after it:
//!
//! ```toml
//! [gateway]
//! port = 5000
//! lb = "localhost:5001"
//! ```
//!
//! Its keys become `QMESH_<KEY>` environment defaults (dashes as
//! underscores) unless the environment already sets them, so the command
//! line beats the environment and the environment beats the file.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// The file read when neither `--config` nor `QMESH_CONFIG` names one.
const DEFAULT_CONFIG: &str = "qmesh.toml";

/// Reads the config file (if any) and sets environment defaults from the
/// table of the subcommand named in `args`. Must run before any thread is
/// started: it changes the process environment.
pub fn apply_config_file(args: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    let args: Vec<String> = args.skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let (path, explicit) = match config_path(&args) {
        Some(p) => (p, true),
        None => match std::env::var_os("QMESH_CONFIG") {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        },
    };
    if !explicit && !path.exists() {
        return Ok(());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read config {}", path.display()))?;
    let doc: toml::Table =
        text.parse().with_context(|| format!("config {} is not valid TOML", path.display()))?;
    let Some(subcommand) = args.iter().find(|a| !a.starts_with('-') && doc.contains_key(a.as_str())) else {
        return Ok(());
    };
    let Some(table) = doc.get(subcommand).and_then(toml::Value::as_table) else {
        bail!("config {}: [{subcommand}] must be a table", path.display());
    };
    for (key, value) in table {
        let var = format!("QMESH_{}", key.to_uppercase().replace('-', "_"));
        if std::env::var_os(&var).is_some() {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => value.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            _ => bail!(
                "config {}: [{subcommand}] {key} must be a string, number, boolean or list",
                path.display()
            ),
        };
        // SAFETY: called from `main` before the runtime or any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var(var, value) };
    }
    Ok(())
}

/// The value of `--config FILE` / `--config=FILE` in `args`.
fn config_path(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_config_flag_in_both_forms() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(config_path(&a(&["gateway", "--config", "x.toml"])), Some(PathBuf::from("x.toml")));
        assert_eq!(config_path(&a(&["--config=y.toml", "lb"])), Some(PathBuf::from("y.toml")));
        assert_eq!(config_path(&a(&["lb", "-p", "0"])), None);
    }
}
