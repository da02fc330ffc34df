//! SRepr: classifier re-training on stochastic representations with self-distillation of the
//! SWAG ensemble into SWA (reference sheet section 3).
//!
//! One linear head `G(.; phi)` is trained on the representations `z_1..z_M` of `M` backbones
//! sampled from the SWAG posterior, and on the SWA representation `z_SWA` (the student, the only
//! path used at test time):
//!
//! `L = (1/M) sum_m B(G(z_m)) [+ B(G(z_SWA))] + lambda T^2 mean_i w_i KL(p_T,i || p_S,i)`
//!
//! with `B` the balancing loss (LA by default), `p_T = (1/M) sum_m softmax(G_T(z_m) / T)` the
//! teacher (the same head with a stop-gradient, or a frozen head trained with `lambda = 0`),
//! `p_S = softmax(G(z_SWA) / T)` and `w_i` optional uncertainty weights; the convex objective
//! uses `(1 - lambda)` in front of the balancing terms. `lambda = 0` is the ablation (b). The
//! knobs left open (tau, lambda, T) are chosen on the validation split: first tau with
//! `lambda = 0`, then `(lambda, T)` on a grid with that tau.

use candle_core::Tensor;
use lt_core::sampler::SamplerKind;
use serde::Serialize;

use super::{taus, Fitted, Tau, DEFAULT_TAU};
use crate::config::{Balance, KdLogits, KlDirection, Objective, RetrainConfig, Teacher, Weighting};
use crate::error::{Result, RetrainError};
use crate::head::Head;
use crate::losses;
use crate::problem::{fit as train, init_head, linear, Problem, CLASS_BALANCED};
use crate::select::{choose, forget_knob, merge_knobs};
use lt_core::formats::facts;

/// The knobs of one SRepr fit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Knobs {
    /// LA temperature of the balancing loss.
    pub tau: f64,
    /// Weight of the distillation term.
    pub lambda: f64,
    /// Distillation temperature.
    pub temperature: f64,
}

/// The defaults when there is no validation split (the reference sheet's choices).
const DEFAULT_KNOBS: Knobs = Knobs { tau: DEFAULT_TAU.tau, lambda: 1.0, temperature: 1.0 };

/// SRepr's loss on one batch.
#[derive(Clone, Copy, Debug)]
pub struct SreprLoss<'a> {
    /// The balancing loss.
    pub balance: Balance,
    /// LA temperature (for [`Balance::La`]).
    pub tau: f64,
    /// `log pi` `[C]`.
    pub log_prior: &'a Tensor,
    /// `log n` `[C]`.
    pub log_counts: &'a Tensor,
    /// Distillation weight.
    pub lambda: f64,
    /// Distillation temperature.
    pub temperature: f64,
    /// KL direction.
    pub kl: KlDirection,
    /// Whether the student also gets the balancing loss.
    pub student_balance: bool,
    /// How the terms combine.
    pub objective: Objective,
    /// Per-sample weighting of the distillation.
    pub weighting: Weighting,
    /// Which logits the distillation compares.
    pub kd_logits: KdLogits,
}

impl SreprLoss<'_> {
    /// The balancing loss of `logits` against `labels`.
    pub fn balance_loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        match self.balance {
            Balance::La => losses::logit_adjusted(logits, labels, self.log_prior, self.tau),
            Balance::BalancedSoftmax => losses::balanced_softmax(logits, labels, self.log_counts),
            Balance::Ce | Balance::Crt => losses::cross_entropy(logits, labels),
        }
    }

    /// The logits the balancing loss adjusts (`eta + tau log pi` for LA, `eta + log n` for
    /// Balanced Softmax, `eta` for plain cross-entropy).
    fn adjusted(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(match self.balance {
            Balance::La => logits.broadcast_add(&(self.log_prior * self.tau)?)?,
            Balance::BalancedSoftmax => logits.broadcast_add(self.log_counts)?,
            Balance::Ce | Balance::Crt => logits.clone(),
        })
    }

    /// Whether the student path is needed at all.
    pub fn needs_student(&self) -> bool {
        self.lambda > 0.0 || self.student_balance
    }

    /// The batch loss from the head's logits on every SWAG representation (`members`, `[M, B, C]`,
    /// differentiable), the teacher's logits on the same representations (`teacher`, `[M, B, C]`:
    /// the same tensor for the online teacher; detached here), the head's logits on the SWA
    /// representation (`student`, `[B, C]`, needed when [`SreprLoss::needs_student`]) and the
    /// labels `[B]`. The members' balancing losses are averaged: `(1/M) sum_m B(members_m)`.
    pub fn batch(
        &self,
        members: &Tensor,
        teacher: &Tensor,
        student: Option<&Tensor>,
        labels: &Tensor,
    ) -> Result<Tensor> {
        let (m, b, c) = members.dims3()?;
        if m == 0 || b == 0 {
            return Err(RetrainError::Invalid(
                "SRepr's loss needs at least one member and one sample".into(),
            ));
        }
        // Every member has B samples, so the mean over all M * B rows is the mean of the members'
        // batch means.
        let all_labels = labels.unsqueeze(0)?.broadcast_as((m, b))?.flatten_all()?;
        let mut loss = self.balance_loss(&members.reshape((m * b, c))?, &all_labels)?;
        if !self.needs_student() {
            return Ok(loss);
        }
        let student = student.ok_or_else(|| {
            RetrainError::Invalid("SRepr's loss needs the student's logits for distillation".into())
        })?;
        if self.student_balance {
            loss = (loss + self.balance_loss(student, labels)?)?;
        }
        if self.lambda > 0.0 {
            let (t, s) = match self.kd_logits {
                KdLogits::Balanced => (teacher.clone(), student.clone()),
                KdLogits::Adjusted => (self.adjusted(teacher)?, self.adjusted(student)?),
            };
            let kd = losses::distillation_stacked(&t, &s, self.temperature, self.kl, self.weighting)?;
            loss = match self.objective {
                Objective::Additive => (loss + (kd * self.lambda)?)?,
                Objective::Convex => ((loss * (1.0 - self.lambda))? + (kd * self.lambda)?)?,
            };
        }
        Ok(loss)
    }
}

/// One fit with fixed knobs; `teacher` is the frozen teacher head, if any.
fn fit_one(
    p: &Problem,
    cfg: &RetrainConfig,
    members: &[usize],
    k: Knobs,
    teacher: Option<&Head>,
) -> Result<Fitted> {
    let c = &cfg.srepr;
    let spec = SreprLoss {
        balance: c.balance,
        tau: k.tau,
        log_prior: &p.log_prior,
        log_counts: &p.log_counts,
        lambda: k.lambda,
        temperature: k.temperature,
        kl: c.kl,
        student_balance: c.student_balance,
        objective: c.objective,
        weighting: c.weighting,
        kd_logits: c.kd_logits,
    };
    let (w, b) = init_head(p.classes, p.dim, cfg.seed, &p.device)?;
    let params = vec![("bias".to_string(), b.clone()), ("weight".to_string(), w.clone())];
    let sampler = if c.balance == Balance::Crt { CLASS_BALANCED } else { SamplerKind::Instance };
    let epoch_losses = train(&params, cfg, &p.labels, p.classes, sampler, |idx| {
        let y = p.batch_labels(idx)?;
        // The M members' representations stacked: [M * B, D].
        let zs = members.iter().map(|&m| p.rows(m, idx)).collect::<Result<Vec<_>>>()?;
        let z = Tensor::cat(&zs, 0)?;
        let shape = (members.len(), idx.len(), p.classes);
        let logits = linear(&z, w.as_tensor(), b.as_tensor())?.reshape(shape)?;
        let frozen = match teacher {
            Some(t) => Some(t.logits(&z)?.reshape(shape)?),
            None => None,
        };
        let student = if spec.needs_student() {
            Some(linear(&p.rows(p.index, idx)?, w.as_tensor(), b.as_tensor())?)
        } else {
            None
        };
        spec.batch(&logits, frozen.as_ref().unwrap_or(&logits), student.as_ref(), &y)
    })?;
    let mut f = Fitted::new(Head::linear(w.as_detached_tensor(), b.as_detached_tensor()));
    f.epoch_losses = epoch_losses;
    Ok(f)
}

/// SRepr with its open knobs chosen on validation data (see the module docs).
pub(super) fn fit(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    let members = p.members(cfg, "SRepr")?;
    let c = &cfg.srepr;
    let tau_candidates: Vec<Tau> =
        if c.balance == Balance::La { taus(cfg.tau, &cfg.select.tau_grid) } else { vec![DEFAULT_TAU] };
    // The (b) model (lambda = 0): the ablation itself, or step 1 (tau) and the frozen teacher.
    let plain =
        |t: &Tau| fit_one(p, cfg, &members, Knobs { lambda: 0.0, ..DEFAULT_KNOBS.with_tau(t.tau) }, None);
    let mut out = if c.lambda == Some(0.0) {
        let mut f = choose(p, cfg, &tau_candidates, DEFAULT_TAU, plain)?.0;
        merge_knobs(&mut f.facts, facts::FIXED, &serde_json::json!({"lambda": 0.0}));
        f
    } else {
        let needs_b = tau_candidates.len() > 1 || c.teacher == Teacher::Frozen;
        let (b_fit, tau) = if needs_b {
            let (f, t) = choose(p, cfg, &tau_candidates, DEFAULT_TAU, plain)?;
            (Some(f), t.tau)
        } else {
            (None, tau_candidates[0].tau)
        };
        let teacher = match c.teacher {
            Teacher::Frozen => Some(b_fit.as_ref().expect("fitted above").head.clone()),
            Teacher::Online => None,
        };
        let lambdas = match c.objective {
            Objective::Additive => &cfg.select.lambda_grid,
            Objective::Convex => &cfg.select.convex_grid,
        };
        let lambdas = c.lambda.map(|l| vec![l]).unwrap_or_else(|| lambdas.clone());
        let temps = c.temperature.map(|t| vec![t]).unwrap_or_else(|| cfg.select.temperature_grid.clone());
        let grid: Vec<Knobs> = lambdas
            .iter()
            .flat_map(|&lambda| temps.iter().map(move |&temperature| Knobs { tau, lambda, temperature }))
            .collect();
        // Without a validation split the open knobs take their defaults; a knob with one
        // candidate (given, or a grid of one) keeps it, and is fixed rather than chosen.
        let one = |v: &[f64], default: f64| if v.len() == 1 { v[0] } else { default };
        let fallback = Knobs {
            tau,
            lambda: one(&lambdas, DEFAULT_KNOBS.lambda),
            temperature: one(&temps, DEFAULT_KNOBS.temperature),
        };
        let (mut f, _) =
            choose(p, cfg, &grid, fallback, |k| fit_one(p, cfg, &members, *k, teacher.as_ref()))?;
        for (name, values) in [("lambda", &lambdas), ("temperature", &temps)] {
            if values.len() == 1 {
                merge_knobs(&mut f.facts, facts::FIXED, &serde_json::json!({ name: values[0] }));
            }
        }
        // The tau step's record goes first.
        if let Some(b) = b_fit {
            let mut sel =
                b.facts.get(facts::SELECTION).and_then(|v| v.as_array()).cloned().unwrap_or_default();
            if let Some(mine) = f.facts.get(facts::SELECTION).and_then(|v| v.as_array()) {
                sel.extend(mine.iter().cloned());
            }
            f.facts.insert(facts::SELECTION.into(), sel.into());
            // Tau as the first step took it: chosen, fixed, or a default (no validation split).
            for how in facts::KINDS {
                if b.facts.get(how).and_then(|k| k.get("tau")).is_some() {
                    merge_knobs(&mut f.facts, how, &serde_json::json!({"tau": tau}));
                }
            }
        } else {
            // Tau had one candidate: the grid step fitted it, but did not choose it.
            merge_knobs(&mut f.facts, facts::FIXED, &serde_json::json!({"tau": tau}));
        }
        f
    };
    out.facts.insert("members".into(), members.len().into());
    if c.balance != Balance::La {
        // Tau adjusts the LA balancing loss only: no knob of this run.
        forget_knob(&mut out.facts, "tau");
    }
    Ok(out)
}

impl Knobs {
    fn with_tau(self, tau: f64) -> Self {
        Self { tau, ..self }
    }
}
