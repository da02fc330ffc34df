//! What differs between two configurations recorded as JSON, setting by setting: for messages
//! that refuse a run whose records are not this run's (`lt train --resume`, `lt retrain --out`).
//!
//! ```
//! let recorded = serde_json::json!({"epochs": 200, "swa": {"start": 160}});
//! let now = serde_json::json!({"epochs": 100, "swa": {"start": 160}, "init": "hub:a"});
//! assert_eq!(
//!     lt_core::diff::differences("train", &recorded, &now),
//!     ["train.epochs: 200 recorded, 100 now", "train.init: none recorded, \"hub:a\" now"]
//! );
//! ```

use serde::de::DeserializeOwned;
use serde_json::Value;

/// `path.key: recorded, now` for each setting where `recorded` and `now` differ, in key order:
/// objects are compared key by key (a key on one side only shows as `none` on the other), any
/// other value as a whole.
pub fn differences(path: &str, recorded: &Value, now: &Value) -> Vec<String> {
    between(path, (recorded, "recorded"), (now, "now"))
}

/// [`differences`] between a configuration as recorded (JSON) and `now`, each seen through
/// `view` (its settings with the defaults filled in, say, so that a default the record leaves
/// out shows its value); a record that no longer reads as a `T` is compared as it stands.
pub fn of_configs<T: DeserializeOwned>(
    path: &str,
    recorded: &Value,
    now: &T,
    view: impl Fn(&T) -> serde_json::Result<Value>,
) -> serde_json::Result<Vec<String>> {
    let recorded = match serde_json::from_value::<T>(recorded.clone()) {
        Ok(c) => view(&c)?,
        Err(_) => recorded.clone(),
    };
    Ok(differences(path, &recorded, &view(now)?))
}

/// [`differences`] with the two sides' own words: `path.key: 1 for the row, 2 here` from
/// `(row, "for the row")` and `(cfg, "here")`.
pub fn between(path: &str, (a, a_is): (&Value, &str), (b, b_is): (&Value, &str)) -> Vec<String> {
    let mut out = Vec::new();
    walk(path, a, b, &mut |p, x, y| out.push(format!("{p}: {x} {a_is}, {y} {b_is}")));
    out
}

/// Differences a [`summary`] shows, at most (the rest are counted).
pub const SHOWN: usize = 6;

/// `changes` joined for a message, the first [`SHOWN`] of them and the rest counted (`a; b; c; d;
/// e; f; and 3 more`).
pub fn summary(changes: &[String]) -> String {
    let shown = changes[..changes.len().min(SHOWN)].join("; ");
    match changes.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown}; and {more} more"),
    }
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut impl FnMut(&str, String, String)) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (u, v) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                walk(&format!("{path}.{k}"), u, v, out);
            }
        }
        (u, v) if u != v => {
            let show = |v: &Value| if v.is_null() { "none".to_string() } else { v.to_string() };
            out(path, show(u), show(v));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_setting_with_both_values() {
        let r =
            serde_json::json!({"epochs": 200, "lr": 0.1, "swa": {"start": 160, "lr": 0.05}, "init": "hub:a"});
        let n = serde_json::json!({"epochs": 100, "lr": 0.1, "swa": {"start": 80, "lr": 0.05}});
        assert_eq!(
            differences("train", &r, &n),
            [
                "train.epochs: 200 recorded, 100 now",
                "train.init: \"hub:a\" recorded, none now",
                "train.swa.start: 160 recorded, 80 now"
            ]
        );
        assert!(differences("train", &r, &r).is_empty());
        let whole = differences("train", &r, &serde_json::json!({"swa": null}));
        assert!(
            whole.contains(&"train.swa: {\"lr\":0.05,\"start\":160} recorded, none now".to_string()),
            "{whole:?}"
        );
        assert_eq!(
            differences("x", &serde_json::json!(1), &serde_json::json!([1])),
            ["x: 1 recorded, [1] now"]
        );
        // Through a view: a default left out of the record shows its value.
        #[derive(serde::Deserialize)]
        struct Cfg {
            #[serde(default)]
            steps: u32,
        }
        let view = |c: &Cfg| Ok(serde_json::json!({"steps": c.steps}));
        let now = Cfg { steps: 3 };
        assert_eq!(
            of_configs("c", &serde_json::json!({}), &now, view).unwrap(),
            ["c.steps: 0 recorded, 3 now"]
        );
        let unreadable = serde_json::json!({"steps": "x"});
        assert_eq!(of_configs("c", &unreadable, &now, view).unwrap(), ["c.steps: \"x\" recorded, 3 now"]);
        let nine: Vec<String> = (1..=9).map(|i| i.to_string()).collect();
        assert_eq!(summary(&nine), "1; 2; 3; 4; 5; 6; and 3 more");
        assert_eq!(
            (summary(&nine[..6]), summary(&nine[..1]), summary(&[])),
            ("1; 2; 3; 4; 5; 6".into(), "1".into(), "".into())
        );
    }
}
