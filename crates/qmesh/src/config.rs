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
//!
//! The whole file is checked first, whatever the subcommand: a top-level
//! table must be a subcommand's (or `qmesh up`'s `[estate]` and
//! `[[process]]`), and a key of a subcommand's table must name one of its
//! flags that takes a `QMESH_…` environment value (its own or a nested
//! subcommand's, like `rt tail`'s, or a flag every subcommand takes). A
//! misspelt table or key is an error naming the valid ones, as a misspelt
//! key of `[[process]]` is: a setting silently ignored is worse.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// The file read when neither `--config` nor `QMESH_CONFIG` names one.
const DEFAULT_CONFIG: &str = "qmesh.toml";

/// Top-level tables that are no subcommand's: `qmesh up`'s estate (read by
/// `qmesh_supervisor::Estate`, which checks their keys itself).
const ESTATE_TABLES: [&str; 2] = ["estate", "process"];

/// Reads the config file (if any), checks its tables and keys against the
/// subcommands and flags of `cli` (see the module docs), and sets
/// environment defaults from the table of the subcommand named in `args`.
/// Must run before any thread is started: it changes the process
/// environment.
pub fn apply_config_file(args: impl Iterator<Item = OsString>, cli: &clap::Command) -> anyhow::Result<()> {
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
    check(&doc, cli).with_context(|| format!("config {}", path.display()))?;
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

/// Checks every top-level table and every key of a subcommand's table.
fn check(doc: &toml::Table, cli: &clap::Command) -> anyhow::Result<()> {
    let mut cli = cli.clone();
    // global flags (--log-level, …) are propagated to the subcommands
    cli.build();
    for (name, value) in doc {
        if ESTATE_TABLES.contains(&name.as_str()) {
            continue;
        }
        let Some(sub) = cli.find_subcommand(name) else {
            let mut valid: Vec<&str> =
                cli.get_subcommands().map(clap::Command::get_name).filter(|n| *n != "help").collect();
            valid.extend(ESTATE_TABLES);
            valid.sort_unstable();
            bail!("[{name}]: no such table (tables are named after a subcommand: {})", valid.join(", "));
        };
        let Some(table) = value.as_table() else {
            bail!("[{name}] must be a table");
        };
        let keys = keys_of(sub);
        for key in table.keys() {
            if !keys.contains(&key.replace('_', "-").to_lowercase()) {
                let valid: Vec<&str> = keys.iter().map(String::as_str).collect();
                bail!("[{name}] {key}: no such key (the keys of [{name}]: {})", valid.join(", "));
            }
        }
    }
    Ok(())
}

/// The keys a subcommand's table may carry: its flags' `QMESH_<KEY>`
/// environment names as `key-words`, with those of nested subcommands.
fn keys_of(cmd: &clap::Command) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for arg in cmd.get_arguments() {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else { continue };
        if let Some(key) = env.strip_prefix("QMESH_") {
            keys.insert(key.to_lowercase().replace('_', "-"));
        }
    }
    for sub in cmd.get_subcommands() {
        keys.extend(keys_of(sub));
    }
    keys
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

    fn check_text(text: &str) -> Result<(), String> {
        use clap::CommandFactory;
        check(&text.parse().unwrap(), &crate::Cli::command()).map_err(|e| e.to_string())
    }

    #[test]
    fn tables_and_keys_are_checked_against_the_flags() {
        // keys of real flags, in either spelling, global flags, nested subcommands, the estate
        check_text(
            "[gateway]\ntimeout = \"5s\"\nlog-level = \"warn\"\n[service]\nquery_threads = 1\n\
             [up]\nbase-port = 6000\n[estate]\nbind = \"0.0.0.0\"\n",
        )
        .unwrap();
        let e = check_text("[gateway]\nno_such_flag = 1\n").unwrap_err();
        assert!(e.starts_with("[gateway] no_such_flag: no such key (the keys of [gateway]: "), "{e}");
        assert!(e.contains(" lb,") && e.contains(" timeout"), "{e}");
        let e = check_text("[gatewy]\nlb = \"h:1\"\n").unwrap_err();
        assert!(e.starts_with("[gatewy]: no such table"), "{e}");
        assert!(e.contains("gateway") && e.contains("process"), "{e}");
        // a flag without an environment value cannot be set from the file
        let e = check_text("[up]\nprint-config = true\n").unwrap_err();
        assert!(e.contains("[up] print-config: no such key"), "{e}");
        assert!(check_text("gateway = 1\n").unwrap_err().contains("[gateway] must be a table"));
    }
}
