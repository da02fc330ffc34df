//! The precedence of settings: the defaults (each config's `Default`), then a preset's table,
//! then the flags given on the command line. Flags are derived from the same config structs, so
//! a flag's value is its default unless it was given; clap tells which were given.

use std::collections::HashSet;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The path of the first key named `key` in a JSON object tree (depth first).
fn find(v: &Value, key: &str) -> Option<Vec<String>> {
    let o = v.as_object()?;
    if o.contains_key(key) {
        return Some(vec![key.to_string()]);
    }
    o.iter().find_map(|(k, child)| {
        find(child, key).map(|mut p| {
            p.insert(0, k.clone());
            p
        })
    })
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        cur = &mut cur[k.as_str()];
    }
    cur[path[path.len() - 1].as_str()] = value;
}

fn remove(v: &mut Value, path: &[String]) {
    let (last, parents) = path.split_last().expect("a found path has a key");
    let parent = parents.iter().try_fold(v, |v, k| v.get_mut(k));
    if let Some(o) = parent.and_then(Value::as_object_mut) {
        o.remove(last);
    }
}

/// `base` (defaults and a preset's table) with every field whose flag was given on the command
/// line taken from `parsed` (the config clap built from the flags). Only the config's own flags
/// count (`T`'s arguments; a command's other flags never touch it). Flag ids are the config's
/// field names; nested configs (`#[command(flatten)]`) are searched by name, so the names of the
/// fields that are flags must be unique across the nesting (checked by a test of each config).
pub fn overlay<T: Serialize + DeserializeOwned + Args>(
    base: &T,
    parsed: &T,
    matches: &ArgMatches,
) -> Result<T> {
    let mut merged = serde_json::to_value(base)?;
    let flags = serde_json::to_value(parsed)?;
    for id in given::<T>(matches) {
        if let Some(path) = find(&flags, &id) {
            let value = get(&flags, &path).cloned().unwrap_or(Value::Null);
            refuse_non_finite(matches, &id, &value)?;
            set(&mut merged, &path, value);
        } else if let Some(path) = find(&merged, &id) {
            // The flag's value is one the config leaves out when serialised (a default kept out
            // of the recorded configuration, `skip_serializing_if`): the field goes, and
            // deserialises to that default.
            remove(&mut merged, &path);
        }
    }
    serde_json::from_value(merged).context("combining the preset with the command-line flags")
}

/// The ids of `T`'s own flags given on the command line (a command's other flags never count).
fn given<T: Args>(matches: &ArgMatches) -> Vec<String> {
    let own: HashSet<String> =
        T::augment_args(Command::new("overlay")).get_arguments().map(|a| a.get_id().to_string()).collect();
    matches
        .ids()
        .map(|id| id.to_string())
        .filter(|id| own.contains(id) && matches.value_source(id) == Some(ValueSource::CommandLine))
        .collect()
}

/// The command-line flag of the argument `id` (clap's derive names `kd_logits` `--kd-logits`).
fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// `T`'s flags given on the command line, each as `(--flag, setting)`: the setting is its field's
/// dotted path in `config` (`srepr.lambda`), the configuration the flags were overlaid into.
pub fn given_settings<T: Serialize + Args>(
    config: &T,
    matches: &ArgMatches,
) -> Result<Vec<(String, String)>> {
    let v = serde_json::to_value(config)?;
    Ok(given::<T>(matches)
        .into_iter()
        .filter_map(|id| find(&v, &id).map(|path| (flag(&id), path.join("."))))
        .collect())
}

/// A flag given on the command line whose value came out as JSON `null` (alone or in a list)
/// held NaN or an infinity, which JSON cannot carry: refused here, naming the flag, rather than
/// read back as "not set".
fn refuse_non_finite(matches: &ArgMatches, id: &str, value: &Value) -> Result<()> {
    let has_null = value.is_null() || value.as_array().is_some_and(|a| a.iter().any(Value::is_null));
    if !has_null {
        return Ok(());
    }
    let raw: Vec<String> = matches
        .get_raw(id)
        .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    Err(lt_core::check::CheckError::new(flag(id), "a finite number", raw.join(",")).into())
}

/// Every leaf key of a JSON object tree, for the uniqueness check.
#[cfg(test)]
pub fn leaf_keys(v: &Value) -> Vec<String> {
    match v.as_object() {
        Some(o) => {
            o.iter().flat_map(|(k, c)| if c.is_object() { leaf_keys(c) } else { vec![k.clone()] }).collect()
        }
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    #[test]
    fn flags_given_override_the_preset_and_nothing_else_does() {
        let cmd = lt_retrain::RetrainConfig::augment_args(Command::new("t"));
        let m =
            cmd.try_get_matches_from(["t", "--epochs", "7", "--lambda", "0.3", "--kl", "reverse"]).unwrap();
        let parsed = lt_retrain::RetrainConfig::from_arg_matches(&m).unwrap();
        let preset = lt_retrain::RetrainConfig {
            lr: 0.5,
            epochs: 3,
            srepr: lt_retrain::SreprConfig { temperature: Some(2.0), ..Default::default() },
            ..Default::default()
        };
        let c = overlay(&preset, &parsed, &m).unwrap();
        assert_eq!((c.epochs, c.lr), (7, 0.5));
        assert_eq!((c.srepr.lambda, c.srepr.temperature), (Some(0.3), Some(2.0)));
        assert_eq!(c.srepr.kl, lt_retrain::KlDirection::Reverse);
        // Field names are unique across the nesting, so every flag finds its field.
        let mut keys = leaf_keys(&serde_json::to_value(&c).unwrap());
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    /// `lt train`'s flags: a flag set to a value the recorded configuration leaves out (its
    /// default) still replaces the preset's; flags not given leave the preset as it is.
    #[test]
    fn a_train_flag_at_a_default_the_record_leaves_out_still_overrides() {
        use lt_models::Precision;
        use lt_train::TrainConfig;
        let preset = TrainConfig {
            precision: Precision::Bf16,
            backbone_lr_scale: 0.1,
            freeze_bn: true,
            init: Some("hub:org/name".into()),
            ..TrainConfig::cifar_lt()
        };
        let parse = |args: &[&str]| {
            let m = TrainConfig::augment_args(Command::new("t")).try_get_matches_from(args).unwrap();
            let parsed = TrainConfig::from_arg_matches(&m).unwrap();
            overlay(&preset, &parsed, &m).unwrap()
        };
        let c = parse(&["t", "--precision", "f32", "--backbone-lr-scale", "1", "--epochs", "7"]);
        assert_eq!((c.precision, c.backbone_lr_scale, c.epochs), (Precision::F32, 1.0, 7));
        assert_eq!((c.freeze_bn, c.init.as_deref(), c.lr), (true, Some("hub:org/name"), preset.lr));
        assert_eq!(parse(&["t"]), preset);
        assert_eq!(parse(&["t", "--arch", "resnet50", "--seed", "3"]).arch, "resnet50");
        // A command's other flags never touch the config, even where an id names a key of it
        // (here `start`, as in `[train.swa]`).
        let cmd = TrainConfig::augment_args(Command::new("t")).arg(clap::Arg::new("start").long("start"));
        let m = cmd.try_get_matches_from(["t", "--start", "3"]).unwrap();
        let c = overlay(&preset, &TrainConfig::from_arg_matches(&m).unwrap(), &m).unwrap();
        assert_eq!(c, preset);
    }

    #[test]
    fn a_non_finite_flag_is_refused_by_name_not_read_as_unset() {
        let base = lt_retrain::RetrainConfig::default();
        for (args, msg) in [
            (vec!["t", "--lambda", "NaN"], "--lambda must be a finite number, got NaN"),
            (vec!["t", "--rho", "inf"], "--rho must be a finite number, got inf"),
            (vec!["t", "--tau-grid", "1,NaN"], "--tau-grid must be a finite number, got 1,NaN"),
        ] {
            let cmd = lt_retrain::RetrainConfig::augment_args(Command::new("t"));
            let m = cmd.try_get_matches_from(args).unwrap();
            let parsed = lt_retrain::RetrainConfig::from_arg_matches(&m).unwrap();
            let err = overlay(&base, &parsed, &m).unwrap_err().to_string();
            assert_eq!(err, msg);
        }
    }
}
