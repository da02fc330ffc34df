//! The settings of a stage-2 run, with their defaults declared once ([`Default`] impls); the
//! `clap` feature derives the command-line flags from the same structs.
//!
//! A preset's `[retrain]` table deserialises into [`RetrainConfig`] (missing keys take the
//! defaults, unknown keys are refused); `[retrain.srepr]` and `[retrain.select]` hold SRepr's and
//! the validation selection's settings.

use lt_core::check;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RetrainError};
pub use crate::vocab::{
    Backbone, Balance, Criterion, KdLogits, KlDirection, MethodKind, Objective, Predict, Teacher, Weighting,
};

/// SRepr's settings (reference sheet section 3; `None` knobs are chosen on validation data).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SreprConfig {
    /// SRepr: balancing loss on each stochastic representation.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SreprConfig::default().balance))]
    pub balance: Balance,
    /// SRepr: SWAG members used (default: every sample in the features artifact).
    #[cfg_attr(feature = "clap", arg(long))]
    pub members: Option<usize>,
    /// SRepr: distillation weight lambda (0: re-training on stochastic representations only, the
    /// ablation (b)); chosen on validation data from `lambda_grid` when not given.
    #[cfg_attr(feature = "clap", arg(long))]
    pub lambda: Option<f64>,
    /// SRepr: distillation temperature T; chosen on validation data from `temperature_grid` when
    /// not given.
    #[cfg_attr(feature = "clap", arg(long))]
    pub temperature: Option<f64>,
    /// SRepr: direction of the KL divergence.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SreprConfig::default().kl))]
    pub kl: KlDirection,
    /// SRepr: also apply the balancing loss to the student (SWA) representation.
    #[cfg_attr(feature = "clap", arg(long))]
    pub student_balance: bool,
    /// SRepr: where the teacher comes from.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SreprConfig::default().teacher))]
    pub teacher: Teacher,
    /// SRepr: how the balancing loss and the distillation combine.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SreprConfig::default().objective))]
    pub objective: Objective,
    /// SRepr: per-sample weighting of the distillation by the teacher's uncertainty.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SreprConfig::default().weighting))]
    pub weighting: Weighting,
    /// SRepr: which logits the distillation compares.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SreprConfig::default().kd_logits))]
    pub kd_logits: KdLogits,
}

impl Default for SreprConfig {
    fn default() -> Self {
        Self {
            balance: Balance::La,
            members: None,
            lambda: None,
            temperature: None,
            kl: KlDirection::Forward,
            student_balance: false,
            teacher: Teacher::Online,
            objective: Objective::Additive,
            weighting: Weighting::None,
            kd_logits: KdLogits::Balanced,
        }
    }
}

/// How knobs left open are chosen on the validation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SelectConfig {
    /// The validation criterion (lower is better).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SelectConfig::default().criterion))]
    pub criterion: Criterion,
    /// Candidate LA temperatures, comma-separated on the command line (LA, post-hoc LA, SRepr's
    /// balancing loss).
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', default_values_t = SelectConfig::default().tau_grid))]
    pub tau_grid: Vec<f64>,
    /// Candidate tau-norm exponents, comma-separated on the command line.
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', default_values_t = SelectConfig::default().tau_norm_grid))]
    pub tau_norm_grid: Vec<f64>,
    /// Candidate distillation weights, comma-separated on the command line (additive objective;
    /// the convex objective uses `convex_grid`).
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', default_values_t = SelectConfig::default().lambda_grid))]
    pub lambda_grid: Vec<f64>,
    /// Candidate mixing weights of the convex objective, comma-separated on the command line.
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', default_values_t = SelectConfig::default().convex_grid))]
    pub convex_grid: Vec<f64>,
    /// Candidate distillation temperatures, comma-separated on the command line.
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', default_values_t = SelectConfig::default().temperature_grid))]
    pub temperature_grid: Vec<f64>,
}

impl Default for SelectConfig {
    fn default() -> Self {
        Self {
            criterion: Criterion::BalancedNll,
            tau_grid: vec![0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
            tau_norm_grid: (0..=20).map(|k| k as f64 / 10.0).collect(),
            lambda_grid: vec![0.1, 0.3, 1.0, 3.0],
            convex_grid: vec![0.1, 0.3, 0.5, 0.7, 0.9],
            temperature_grid: vec![1.0, 2.0, 4.0],
        }
    }
}

/// Everything that determines one stage-2 run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct RetrainConfig {
    /// The method.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = RetrainConfig::default().method))]
    pub method: MethodKind,
    /// Backbone whose representations (and stage-1 head) are used.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = RetrainConfig::default().backbone))]
    pub backbone: Backbone,
    /// Epochs of `floor(N / batch)` steps.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RetrainConfig::default().epochs))]
    pub epochs: usize,
    /// Steps the run takes at least: where `epochs` epochs fall short (a data set of a few
    /// hundred images has one step per epoch), more epochs run, as many as reach it. 0: `epochs`
    /// alone.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RetrainConfig::default().min_steps))]
    #[serde(skip_serializing_if = "is_zero")]
    pub min_steps: usize,
    /// Batch size.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RetrainConfig::default().batch_size))]
    pub batch_size: usize,
    /// Learning rate (cosine to 0 over the run).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RetrainConfig::default().lr))]
    pub lr: f64,
    /// SGD momentum.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RetrainConfig::default().momentum))]
    pub momentum: f64,
    /// Weight decay.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RetrainConfig::default().weight_decay))]
    pub weight_decay: f64,
    /// Seed (initialisation, sampling).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RetrainConfig::default().seed))]
    pub seed: u64,
    /// LA temperature (la, la-posthoc, SRepr's balancing loss) or tau-norm's exponent; chosen on
    /// validation data when not given (the `tau_grid` / `tau_norm_grid` of the selection).
    #[cfg_attr(feature = "clap", arg(long))]
    pub tau: Option<f64>,
    /// DisAlign's re-weighting exponent rho.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RetrainConfig::default().rho))]
    pub rho: f64,
    /// What the predictions hold: the single backbone's, or the SWAG ensemble's (BMA).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = RetrainConfig::default().predict))]
    pub predict: Predict,
    /// SRepr's settings.
    #[cfg_attr(feature = "clap", command(flatten))]
    pub srepr: SreprConfig,
    /// The validation selection's settings.
    #[cfg_attr(feature = "clap", command(flatten))]
    pub select: SelectConfig,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        Self {
            method: MethodKind::None,
            backbone: Backbone::Swa,
            epochs: 30,
            min_steps: 0,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            tau: None,
            rho: 1.2,
            predict: Predict::Single,
            srepr: SreprConfig::default(),
            select: SelectConfig::default(),
        }
    }
}

/// Whether `n` is 0 (a setting left at its default is not written, so the configurations
/// recorded before it existed keep their fingerprints).
fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl RetrainConfig {
    /// Epochs of `steps_per_epoch` steps the run takes: `epochs`, or more where they fall short
    /// of `min_steps`.
    pub fn epochs_run(&self, steps_per_epoch: usize) -> usize {
        self.epochs.max(self.min_steps.div_ceil(steps_per_epoch.max(1)))
    }

    /// Every setting as JSON, `min_steps` included where the recorded configuration leaves it
    /// out at its default: what `lt preset` prints.
    pub fn settings(&self) -> serde_json::Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("min_steps".into(), self.min_steps.into());
        }
        Ok(v)
    }

    /// Whether this run reads `setting`, a field named as in a preset's `[retrain]` table
    /// (`srepr.lambda`, `rho`, `select.tau_grid`): SRepr's settings only SRepr (`srepr.members`
    /// ensemble predictions too), `rho` only DisAlign, `tau` and the selection's grids and
    /// criterion the methods that choose them (SRepr's tau only with its LA balancing loss), the
    /// optimiser's settings the methods that train (not `none`, `tau-norm`, `la-posthoc`);
    /// `method`, `backbone`, `seed` and `predict` every method. A setting the table does not
    /// name is read by none (a test holds every setting to a method that reads it, so a new one
    /// is added here). `lt retrain` refuses a flag given for a setting its method does not read.
    pub fn reads(&self, setting: &str) -> bool {
        use MethodKind as M;
        let m = self.method;
        // SRepr's tau adjusts its LA balancing loss only.
        let srepr_la = m == M::Srepr && self.srepr.balance == Balance::La;
        match setting {
            "method" | "backbone" | "seed" | "predict" => true,
            "srepr.members" => m == M::Srepr || self.predict == Predict::Ensemble,
            s if s.starts_with("srepr.") => m == M::Srepr,
            "rho" => m == M::Disalign,
            "tau" => matches!(m, M::La | M::LaPosthoc | M::TauNorm) || srepr_la,
            "select.criterion" => matches!(m, M::La | M::LaPosthoc | M::TauNorm | M::Srepr),
            "select.tau_grid" => matches!(m, M::La | M::LaPosthoc) || srepr_la,
            "select.tau_norm_grid" => m == M::TauNorm,
            "select.lambda_grid" | "select.convex_grid" | "select.temperature_grid" => m == M::Srepr,
            "epochs" | "min_steps" | "batch_size" | "lr" | "momentum" | "weight_decay" => {
                !matches!(m, M::None | M::TauNorm | M::LaPosthoc)
            }
            _ => false,
        }
    }

    /// The defaults with another method.
    pub fn new(method: MethodKind) -> Self {
        Self { method, ..Self::default() }
    }

    /// Checks every setting; the error names the field and what was expected.
    pub fn validate(&self) -> Result<()> {
        self.check_numbers()?;
        if self.method == MethodKind::Srepr && self.backbone != Backbone::Swa {
            return Err(RetrainError::Invalid(
                "SRepr distils the SWAG ensemble into SWA: it needs backbone swa".into(),
            ));
        }
        if self.predict == Predict::Ensemble && self.backbone != Backbone::Swa {
            return Err(RetrainError::Invalid(
                "ensemble predictions average the SWAG members around SWA: they need backbone swa".into(),
            ));
        }
        Ok(())
    }

    /// The rules on numeric fields, each named as in a preset's `[retrain]` section.
    fn check_numbers(&self) -> check::Result {
        check::non_zero("retrain.epochs", self.epochs as u64)?;
        check::non_zero("retrain.batch_size", self.batch_size as u64)?;
        check::positive("retrain.lr", self.lr)?;
        check::in_range("retrain.momentum", self.momentum, 0.0..1.0)?;
        check::non_negative("retrain.weight_decay", self.weight_decay)?;
        check::non_negative("retrain.rho", self.rho)?;
        if let Some(t) = self.tau {
            check::non_negative("retrain.tau", t)?;
        }
        let s = &self.select;
        check::each("retrain.select.tau_grid", &s.tau_grid, check::non_negative)?;
        check::each("retrain.select.tau_norm_grid", &s.tau_norm_grid, check::non_negative)?;
        check::each("retrain.select.lambda_grid", &s.lambda_grid, check::non_negative)?;
        check::each("retrain.select.convex_grid", &s.convex_grid, check::probability)?;
        check::each("retrain.select.temperature_grid", &s.temperature_grid, check::positive)?;
        let c = &self.srepr;
        if let Some(l) = c.lambda {
            if c.objective == Objective::Convex {
                check::probability("retrain.srepr.lambda (convex objective)", l)?;
            } else {
                check::non_negative("retrain.srepr.lambda", l)?;
            }
        }
        if let Some(t) = c.temperature {
            check::positive("retrain.srepr.temperature", t)?;
        }
        if let Some(m) = c.members {
            check::non_zero("retrain.srepr.members", m as u64)?;
        }
        Ok(())
    }

    /// A short identifier, the row a run records without `--row`: backbone, method, SRepr's
    /// settings that are fixed or away from their defaults, and `-ensemble` for ensemble
    /// predictions (other settings, such as a fixed `tau`, do not show).
    pub fn id(&self) -> String {
        let mut id = format!("{}-{}", self.backbone, self.method);
        if self.method == MethodKind::Srepr {
            let (c, d) = (&self.srepr, SreprConfig::default());
            let mut part = |s: String| {
                id.push('-');
                id.push_str(&s);
            };
            if let Some(l) = c.lambda {
                part(format!("lambda{l}"));
            }
            if let Some(t) = c.temperature {
                part(format!("t{t}"));
            }
            if c.balance != d.balance {
                part(c.balance.to_string());
            }
            if c.kl != d.kl {
                part(c.kl.to_string());
            }
            if c.student_balance {
                part("student-balance".into());
            }
            if c.teacher != d.teacher {
                part(format!("{}-teacher", c.teacher));
            }
            if c.objective != d.objective {
                part(c.objective.to_string());
            }
            if c.weighting != d.weighting {
                part(format!("{}-weighted", c.weighting));
            }
            if c.kd_logits != d.kd_logits {
                part(format!("kd-{}", c.kd_logits));
            }
            if let Some(m) = c.members {
                part(format!("m{m}"));
            }
        }
        if self.predict == Predict::Ensemble {
            id.push_str("-ensemble");
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SRepr's settings are SRepr's (its members also ensemble predictions'), `rho` DisAlign's.
    #[test]
    fn each_method_reads_its_own_settings() {
        let srepr = RetrainConfig::new(MethodKind::Srepr);
        let la = RetrainConfig::new(MethodKind::La);
        let ensemble = RetrainConfig { predict: Predict::Ensemble, ..la.clone() };
        for s in ["srepr.lambda", "srepr.temperature", "srepr.members", "srepr.kl", "epochs", "tau"] {
            assert!(srepr.reads(s), "{s}");
        }
        assert!(!srepr.reads("rho") && RetrainConfig::new(MethodKind::Disalign).reads("rho"));
        let mut ce = srepr.clone();
        ce.srepr.balance = Balance::Ce;
        assert!(!ce.reads("tau") && !ce.reads("select.tau_grid") && ce.reads("srepr.lambda"));
        assert!(!la.reads("srepr.lambda") && !la.reads("srepr.members") && !la.reads("rho"));
        assert!(ensemble.reads("srepr.members") && !ensemble.reads("srepr.temperature"));
        assert!(la.reads("epochs") && la.reads("select.tau_grid") && la.reads("predict"));
        let crt = RetrainConfig::new(MethodKind::Crt);
        assert!(!crt.reads("tau") && !crt.reads("select.tau_grid") && !crt.reads("select.criterion"));
        assert!(crt.reads("epochs") && crt.reads("lr") && crt.reads("seed") && crt.reads("backbone"));
        let tau_norm = RetrainConfig::new(MethodKind::TauNorm);
        assert!(
            tau_norm.reads("tau")
                && tau_norm.reads("select.tau_norm_grid")
                && !tau_norm.reads("select.tau_grid")
        );
        assert!(!tau_norm.reads("epochs") && !tau_norm.reads("min_steps") && !tau_norm.reads("lr"));
        for grid in ["select.lambda_grid", "select.convex_grid", "select.temperature_grid"] {
            assert!(srepr.reads(grid) && !la.reads(grid), "{grid}");
        }
        // Every setting is read by some method (a new one is added to the table, not read by
        // none), and every name the table knows is a setting (a misspelled one would never match).
        let mut configs: Vec<RetrainConfig> =
            MethodKind::ALL.iter().map(|&m| RetrainConfig::new(m)).collect();
        configs.push(ensemble.clone());
        let mut names = Vec::new();
        setting_names(&srepr.settings().unwrap(), "", &mut names);
        assert!(names.len() > 20 && names.contains(&"select.tau_grid".to_string()), "{names:?}");
        for name in &names {
            assert!(configs.iter().any(|c| c.reads(name)), "{name} is read by no method: add it to `reads`");
        }
        let fields = srepr.settings().unwrap();
        for name in [
            "srepr.members",
            "rho",
            "tau",
            "select.criterion",
            "select.tau_grid",
            "select.tau_norm_grid",
            "select.lambda_grid",
            "select.convex_grid",
            "select.temperature_grid",
            "epochs",
            "min_steps",
            "batch_size",
            "lr",
            "momentum",
            "weight_decay",
        ] {
            assert!(fields.pointer(&format!("/{}", name.replace('.', "/"))).is_some(), "{name}");
        }
    }

    /// The settings' names in `v`, as a preset's `[retrain]` table writes them (`srepr.lambda`).
    fn setting_names(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in v.as_object().expect("settings are an object") {
            match v {
                serde_json::Value::Object(_) => setting_names(v, &format!("{prefix}{k}."), out),
                _ => out.push(format!("{prefix}{k}")),
            }
        }
    }

    /// The crate docs' method table has a row for every method.
    #[test]
    fn the_crate_docs_table_has_every_method() {
        let docs = include_str!("lib.rs");
        for m in MethodKind::ALL {
            assert!(docs.contains(&format!("//! | `{m}` |")), "no row for {m} in lt-retrain's method table");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |f: &dyn Fn(&mut RetrainConfig)| {
            let mut c = RetrainConfig::new(MethodKind::Srepr);
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(&|c| c.lr = f64::NAN).contains("retrain.lr must be a finite number > 0, got NaN"));
        assert!(bad(&|c| c.weight_decay = -1.0).contains("retrain.weight_decay"));
        assert!(bad(&|c| c.srepr.lambda = Some(f64::NAN)).contains("retrain.srepr.lambda"));
        assert!(bad(&|c| {
            c.srepr.objective = Objective::Convex;
            c.srepr.lambda = Some(2.0)
        })
        .contains("convex"));
        assert!(bad(&|c| c.select.temperature_grid = vec![]).contains("non-empty"));
        assert!(bad(&|c| c.backbone = Backbone::Sgd).contains("needs backbone swa"));
        RetrainConfig::new(MethodKind::Srepr).validate().unwrap();
    }

    #[test]
    fn a_preset_table_fills_in_the_defaults_and_refuses_unknown_keys() {
        let c: RetrainConfig =
            toml::from_str("epochs = 5\n[srepr]\nlambda = 0.3\n[select]\ncriterion = \"balanced-error\"\n")
                .unwrap();
        assert_eq!(c.epochs, 5);
        assert_eq!(c.srepr.lambda, Some(0.3));
        assert_eq!(c.select.criterion, Criterion::BalancedError);
        assert_eq!(c.lr, RetrainConfig::default().lr);
        let err = toml::from_str::<RetrainConfig>("epoch = 5").unwrap_err().to_string();
        assert!(err.contains("epoch"), "{err}");
    }
}
