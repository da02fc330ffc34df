//! The rows of a reproduction's stage 2, in the report's order: every method on both backbones
//! (the poster's Table 2), SRepr's ablation (Table 1), the SWAG ensemble the distillation learns
//! from, and SRepr's variants. One place declares them; `cargo xtask reproduce` runs one
//! `lt retrain --row ID` per row and seed, and the report orders and selects rows by id.

use crate::config::{Backbone, KdLogits, MethodKind, Objective, Predict, RetrainConfig, Teacher, Weighting};

/// Which table of the report a row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// Every method on the SGD and SWA backbones (the poster's Table 2 layout).
    Main,
    /// SRepr's variants, each with its knobs chosen on validation data.
    Variants,
}

impl Table {
    /// Every table, in report order.
    pub const ALL: [Table; 2] = [Table::Main, Table::Variants];

    /// The table's heading in the report.
    pub fn title(self) -> &'static str {
        match self {
            Table::Main => "The methods on each backbone",
            Table::Variants => "SRepr variants (each with its knobs chosen on the validation split)",
        }
    }

    /// What a reader needs to read the table's labels.
    pub fn note(self) -> &'static str {
        match self {
            Table::Main => {
                "`-`: the stage-1 classifier as trained. The poster's Table 1 ablation: (a) is SWA + LA; (b), \
                 `+ stochastic repr. (b)`, trains the LA head on the representations of the M SWAG samples \
                 (`lt extract --samples`) with lambda = 0; (c) is SRepr, (b) with the self-distillation of the \
                 samples' ensemble into the SWA representation. `SWAG ensemble of (b)` predicts with the (b) head's \
                 mean over the M samples (M backbone passes, where the others take one): the kind of ensemble \
                 SRepr distils (exactly its teacher with a frozen teacher)."
            }
            Table::Variants => {
                "Each variant changes SRepr's teacher, the loss on the student, the objective, or the weighting or \
                 the logits of the distillation (the frozen teacher with LA on the student, two of them)."
            }
        }
    }
}

/// One row of the plan.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// Identifier (the run directory's name).
    pub id: &'static str,
    /// Label in the report.
    pub label: &'static str,
    /// The table it belongs to.
    pub table: Table,
    /// Backbone.
    pub backbone: Backbone,
    /// Method.
    pub method: MethodKind,
    /// Settings of this row on top of the shared ones.
    pub apply: fn(&mut RetrainConfig),
}

impl Row {
    /// The configuration of this row: `base` (a preset's shared settings) with the row's method,
    /// backbone and settings.
    pub fn config(&self, base: &RetrainConfig) -> RetrainConfig {
        let mut c = base.clone();
        c.method = self.method;
        c.backbone = self.backbone;
        (self.apply)(&mut c);
        c
    }

    /// Whether `cfg` is a run of this row: the row's settings hold in it, and it is no other row's
    /// variant (its method, backbone, predictions, SRepr's (b) ablation `lambda = 0`, teacher,
    /// student balance, objective, weighting and KD logits are the row's). Shared settings (the
    /// optimiser's, a fixed knob other than `lambda = 0`) may differ.
    pub fn matches(&self, cfg: &RetrainConfig) -> bool {
        self.config(cfg) == *cfg && self.differences(cfg).is_empty()
    }

    /// The settings that make `cfg` another row than this one (or none), each as `setting: the
    /// row's value for the row, cfg's here`; empty where [`Row::matches`] (given the row's own
    /// settings hold).
    pub fn differences(&self, cfg: &RetrainConfig) -> Vec<String> {
        let (want, got) = (variant(&self.config(&RetrainConfig::default())), variant(cfg));
        lt_core::diff::between("retrain", (&want, "for the row"), (&got, "here"))
    }
}

/// The settings that tell the rows apart, as JSON named as in a preset's `[retrain]` table
/// (`lambda` only as `"0"`, the (b) ablation, or `"not 0"`: a fixed lambda is a knob, not a row).
fn variant(c: &RetrainConfig) -> serde_json::Value {
    let s = &c.srepr;
    serde_json::json!({
        "method": c.method.to_string(),
        "backbone": c.backbone.to_string(),
        "predict": c.predict.to_string(),
        "srepr": {
            "lambda": if s.lambda == Some(0.0) { "0" } else { "not 0" },
            "teacher": s.teacher.to_string(),
            "student_balance": s.student_balance,
            "objective": s.objective.to_string(),
            "weighting": s.weighting.to_string(),
            "kd_logits": s.kd_logits.to_string(),
        },
    })
}

fn nothing(_: &mut RetrainConfig) {}

macro_rules! rows {
    ($($id:literal, $label:literal, $table:ident, $backbone:ident, $method:ident, $apply:expr;)+) => {
        /// Every row, in report order.
        pub const ROWS: &[Row] = &[$(Row {
            id: $id,
            label: $label,
            table: Table::$table,
            backbone: Backbone::$backbone,
            method: MethodKind::$method,
            apply: $apply,
        },)+];
    };
}

rows! {
    "sgd-none", "-", Main, Sgd, None, nothing;
    "sgd-crt", "cRT", Main, Sgd, Crt, nothing;
    "sgd-lws", "LWS", Main, Sgd, Lws, nothing;
    "sgd-tau-norm", "tau-norm", Main, Sgd, TauNorm, nothing;
    "sgd-la", "LA", Main, Sgd, La, nothing;
    "sgd-la-posthoc", "LA (post-hoc)", Main, Sgd, LaPosthoc, nothing;
    "sgd-balanced-softmax", "Balanced Softmax", Main, Sgd, BalancedSoftmax, nothing;
    "sgd-disalign", "DisAlign", Main, Sgd, Disalign, nothing;
    "swa-none", "-", Main, Swa, None, nothing;
    "swa-crt", "cRT", Main, Swa, Crt, nothing;
    "swa-lws", "LWS", Main, Swa, Lws, nothing;
    "swa-tau-norm", "tau-norm", Main, Swa, TauNorm, nothing;
    "swa-la", "LA", Main, Swa, La, nothing;
    "swa-la-posthoc", "LA (post-hoc)", Main, Swa, LaPosthoc, nothing;
    "swa-balanced-softmax", "Balanced Softmax", Main, Swa, BalancedSoftmax, nothing;
    "swa-disalign", "DisAlign", Main, Swa, Disalign, nothing;
    "swa-srepr-b", "+ stochastic repr. (b)", Main, Swa, Srepr, |c| c.srepr.lambda = Some(0.0);
    "swa-srepr", "SRepr", Main, Swa, Srepr, nothing;
    "swa-srepr-b-ensemble", "SWAG ensemble of (b), M passes", Main, Swa, Srepr, |c| {
        c.srepr.lambda = Some(0.0);
        c.predict = Predict::Ensemble;
    };
    "swa-srepr-frozen", "SRepr, frozen (b) teacher", Variants, Swa, Srepr, |c| c.srepr.teacher = Teacher::Frozen;
    "swa-srepr-student-balance", "SRepr, LA on the student too", Variants, Swa, Srepr, |c| c.srepr.student_balance = true;
    "swa-srepr-frozen-student-balance", "SRepr, frozen teacher, LA on the student", Variants, Swa, Srepr, |c| {
        c.srepr.teacher = Teacher::Frozen;
        c.srepr.student_balance = true;
    };
    "swa-srepr-convex", "SRepr, convex objective", Variants, Swa, Srepr, |c| c.srepr.objective = Objective::Convex;
    "swa-srepr-entropy", "SRepr, entropy-weighted KD", Variants, Swa, Srepr, |c| c.srepr.weighting = Weighting::Entropy;
    "swa-srepr-disagreement", "SRepr, disagreement-weighted KD", Variants, Swa, Srepr, |c| c.srepr.weighting = Weighting::Disagreement;
    "swa-srepr-kd-adjusted", "SRepr, KD on adjusted logits", Variants, Swa, Srepr, |c| c.srepr.kd_logits = KdLogits::Adjusted;
}

/// The rows whose per-class test accuracy the report plots: the plain heads and the two that
/// matter most (LA and SRepr on SWA).
pub const PER_CLASS_PLOT: &[&str] = &["sgd-none", "swa-none", "swa-la", "swa-srepr"];

/// The row with identifier `id`.
pub fn row(id: &str) -> Option<&'static Row> {
    ROWS.iter().find(|r| r.id == id)
}

/// The longest name [`check_name`] accepts.
pub const NAME_MAX: usize = 64;

/// Checks a row name of the user's own (`lt retrain --name`): 1 to [`NAME_MAX`] lower-case ASCII
/// letters, digits and `._-`, starting with a letter or digit (it names files, `lt eval --out`'s
/// JSON and the report's plots, on file systems that may ignore case); no plan row's id or label
/// (as a name is written: `la-post-hoc` for `LA (post-hoc)`), no method's or backbone's name, nor
/// an id a configuration records without a row (`<backbone>-...`: `swa-la-ensemble`), so that a
/// named row never reads as another method. The error says what is wrong.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    let chars = name.chars().count();
    if chars == 0 || chars > NAME_MAX {
        return Err(format!("a row name has 1 to {NAME_MAX} characters, got {chars}"));
    }
    if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        let lower = name.to_ascii_lowercase();
        let hint = if lower.chars().all(allowed) { format!(" (say {lower:?})") } else { String::new() };
        return Err(format!(
            "a row name has lower-case ASCII letters, digits and ._- only, got {c:?} in {name:?}{hint}"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("a row name starts with a letter or digit, got {name:?}"));
    }
    let taken = |what: String| Err(format!("{name:?} is {what}: choose a name of your own"));
    if row(name).is_some() {
        return Err(format!("{name:?} is a row of the plan: --row {name} records it (with its settings)"));
    }
    let labelled: Vec<&str> = ROWS.iter().filter(|r| plain(r.label) == name).map(|r| r.id).collect();
    if !labelled.is_empty() {
        return taken(format!("the label of the plan's rows {}", labelled.join(", ")));
    }
    if MethodKind::ALL.iter().any(|m| m.to_string() == name) {
        return taken("a method's name".into());
    }
    if let Some(b) =
        Backbone::ALL.iter().find(|b| name == b.to_string() || name.starts_with(&format!("{b}-")))
    {
        return taken(format!(
            "the backbone {b} or starts like the id a run without --row records ({b}-<method>...)"
        ));
    }
    Ok(())
}

/// A label as a row name would write it: lower case, each run of other characters one `-`
/// (`LA (post-hoc)`: `la-post-hoc`).
fn plain(label: &str) -> String {
    let lower = label.to_ascii_lowercase();
    let words: Vec<&str> =
        lower.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    words.join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_configs_valid() {
        for (i, r) in ROWS.iter().enumerate() {
            assert!(ROWS[..i].iter().all(|o| o.id != r.id), "duplicate row {}", r.id);
            let c = r.config(&RetrainConfig::default());
            c.validate().unwrap_or_else(|e| panic!("{}: {e}", r.id));
            assert_eq!((c.method, c.backbone), (r.method, r.backbone));
        }
        assert_eq!(row("swa-srepr-b").unwrap().config(&RetrainConfig::default()).srepr.lambda, Some(0.0));
        assert!(row("nope").is_none());
        assert!(PER_CLASS_PLOT.iter().all(|id| row(id).is_some()));
    }

    #[test]
    fn a_row_name_of_ones_own_is_plain_and_no_plan_rows() {
        for ok in ["srepr-lambda0.3", "a1", "la_tau2", "srepr-b", "x".repeat(NAME_MAX).as_str()] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("", "1 to 64 characters, got 0"),
            (&"x".repeat(NAME_MAX + 1), "got 65"),
            (&"é".repeat(40), "got 'é'"),
            ("a/b", "got '/' in \"a/b\""),
            ("two words", "got ' '"),
            ("a+b", "got '+'"),
            ("SRepr-Lambda0.3", "got 'S' in \"SRepr-Lambda0.3\" (say \"srepr-lambda0.3\")"),
            ("-x", "starts with a letter or digit"),
            (".x", "starts with a letter or digit"),
            ("swa-srepr", "is a row of the plan: --row swa-srepr"),
            (
                "tau-norm",
                "is the label of the plan's rows sgd-tau-norm, swa-tau-norm: choose a name of your own",
            ),
            ("la", "the label of the plan's rows sgd-la, swa-la"),
            ("la-post-hoc", "the label of the plan's rows sgd-la-posthoc, swa-la-posthoc"),
            ("stochastic-repr-b", "the label of the plan's rows swa-srepr-b"),
            ("balanced-softmax", "the label of the plan's rows"),
            ("la-posthoc", "is a method's name"),
            ("none", "is a method's name"),
            ("swa", "is the backbone swa"),
            ("swa-la-ensemble", "starts like the id a run without --row records (swa-<method>...)"),
            ("sgd-mine", "(sgd-<method>...)"),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    /// Each row's configuration is that row's and no other's, over any shared settings; a
    /// variant's setting makes another row.
    #[test]
    fn a_configuration_matches_its_own_row_only() {
        let shared = RetrainConfig { epochs: 7, lr: 0.3, tau: Some(1.5), ..Default::default() };
        for r in ROWS {
            let c = r.config(&shared);
            let matching: Vec<&str> = ROWS.iter().filter(|o| o.matches(&c)).map(|o| o.id).collect();
            assert_eq!(matching, [r.id], "{}", r.id);
        }
        let srepr = row("swa-srepr").unwrap();
        let fixed = RetrainConfig {
            srepr: crate::SreprConfig { lambda: Some(1.0), ..Default::default() },
            ..srepr.config(&shared)
        };
        assert!(srepr.matches(&fixed), "a fixed lambda is a knob");
        let ensemble =
            RetrainConfig { predict: Predict::Ensemble, ..row("swa-srepr-b").unwrap().config(&shared) };
        assert!(
            !row("swa-srepr-b").unwrap().matches(&ensemble)
                && row("swa-srepr-b-ensemble").unwrap().matches(&ensemble)
        );
        let la = RetrainConfig { method: MethodKind::La, ..srepr.config(&shared) };
        assert_eq!(srepr.differences(&la), ["retrain.method: \"srepr\" for the row, \"la\" here"]);
    }
}
