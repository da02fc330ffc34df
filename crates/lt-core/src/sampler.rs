//! Samplers: which training indices an epoch visits, deterministic from a seed.
//!
//! - instance-balanced (`q = 1`): a shuffled pass over the data;
//! - class-balanced: the class-aware sampler of Kang et al. (2020): classes are drawn from a
//!   reshuffled cycle, and each class draw yields `per_class` (4) consecutive samples from that
//!   class's own reshuffled cycle;
//! - square-root (`q = 1/2`) and any exponent `q`: classes drawn with `p_c ∝ n_c^q`, a uniform
//!   sample within the class (with replacement);
//! - progressively balanced: `p = (1 - t/T) p_IB + (t/T) p_CB` at epoch `t` of `T`.
//!
//! Each epoch's order is a pure function of `(seed, epoch)`, so a resumed run visits the same
//! samples as an uninterrupted one. (Kang et al.'s cycle iterators persist across epochs; here
//! they restart each epoch from the epoch's stream, which has the same distribution.)

use std::str::FromStr;

use crate::Rng;
use serde::{Deserialize, Serialize};

/// An invalid sampler name or input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerError(pub String);

impl std::fmt::Display for SamplerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SamplerError {}

/// Consecutive samples per class draw of the decoupling paper's class-aware sampler (cRT, LWS;
/// what `class` parses to).
pub const CLASS_AWARE_RUN: usize = 4;

/// Which sampling scheme.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Plain shuffled epochs.
    Instance,
    /// Kang et al.'s class-aware sampler with `per_class` samples per class draw.
    ClassBalanced {
        /// Consecutive samples per class draw (4 in the decoupling recipes).
        per_class: usize,
    },
    /// `p_c ∝ n_c^q`, with replacement (`q = 0.5` is square-root sampling).
    Power {
        /// Exponent.
        q: f64,
    },
    /// Progressively balanced over `total_epochs`.
    Progressive {
        /// `T`, the number of epochs over which the mix moves from IB to CB.
        total_epochs: usize,
    },
}

impl FromStr for SamplerKind {
    type Err = SamplerError;
    fn from_str(s: &str) -> Result<Self, SamplerError> {
        let s = s.trim().to_ascii_lowercase();
        let kind = match s.as_str() {
            "instance" | "ib" | "instance-balanced" => SamplerKind::Instance,
            "class" | "cb" | "class-balanced" | "class-aware" => {
                SamplerKind::ClassBalanced { per_class: CLASS_AWARE_RUN }
            }
            "sqrt" | "square-root" => SamplerKind::Power { q: 0.5 },
            _ => {
                if let Some(q) = s.strip_prefix("power:") {
                    let q: f64 =
                        q.parse().map_err(|_| SamplerError(format!("bad sampler exponent in {s:?}")))?;
                    SamplerKind::Power { q }
                } else if let Some(t) = s.strip_prefix("progressive:") {
                    let t: usize =
                        t.parse().map_err(|_| SamplerError(format!("bad epoch count in {s:?}")))?;
                    SamplerKind::Progressive { total_epochs: t }
                } else if let Some(k) = s.strip_prefix("class-balanced:") {
                    let k: usize =
                        k.parse().map_err(|_| SamplerError(format!("bad per-class count in {s:?}")))?;
                    SamplerKind::ClassBalanced { per_class: k }
                } else {
                    return Err(SamplerError(format!(
                        "unknown sampler {s:?}; expected instance, class-balanced[:K], sqrt, power:Q or progressive:T"
                    )));
                }
            }
        };
        kind.check().map_err(|e| SamplerError(format!("{s:?}: {}", e.0)))?;
        Ok(kind)
    }
}

impl SamplerKind {
    /// Refuses settings that describe no sampler: a per-class or epoch count of 0, an exponent
    /// that is no finite number ([`Sampler::new`] and the names' parser both ask).
    pub fn check(&self) -> Result<(), SamplerError> {
        let why = match *self {
            SamplerKind::ClassBalanced { per_class: 0 } => {
                "a class-balanced sampler needs a per-class count of at least 1".to_string()
            }
            SamplerKind::Power { q } if !q.is_finite() => {
                format!("a power sampler needs a finite exponent, got {q}")
            }
            SamplerKind::Progressive { total_epochs: 0 } => {
                "a progressive sampler needs an epoch count of at least 1".to_string()
            }
            _ => return Ok(()),
        };
        Err(SamplerError(why))
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SamplerKind::Instance => write!(f, "instance"),
            SamplerKind::ClassBalanced { per_class } => write!(f, "class-balanced:{per_class}"),
            SamplerKind::Power { q } => write!(f, "power:{q}"),
            SamplerKind::Progressive { total_epochs } => write!(f, "progressive:{total_epochs}"),
        }
    }
}

/// A sampler over fixed labels.
#[derive(Clone, Debug)]
pub struct Sampler {
    kind: SamplerKind,
    seed: u64,
    n: usize,
    by_class: Vec<Vec<usize>>,
}

impl Sampler {
    /// A sampler of `kind` over `labels` (`< classes`), seeded with `seed`.
    pub fn new(kind: SamplerKind, labels: &[u32], classes: usize, seed: u64) -> Result<Self, SamplerError> {
        kind.check()?;
        if labels.is_empty() {
            return Err(SamplerError("cannot sample from an empty training set".into()));
        }
        let mut by_class = vec![Vec::new(); classes];
        for (i, &y) in labels.iter().enumerate() {
            let y = y as usize;
            if y >= classes {
                return Err(SamplerError(format!("label {y} at index {i} is outside 0..{classes}")));
            }
            by_class[y].push(i);
        }
        Ok(Self { kind, seed, n: labels.len(), by_class })
    }

    /// The scheme.
    pub fn kind(&self) -> &SamplerKind {
        &self.kind
    }

    /// Number of training samples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no samples (never true: construction refuses empty sets).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Class-sampling probabilities at `epoch` (for inspection and tests).
    pub fn class_probabilities(&self, epoch: usize) -> Vec<f64> {
        let counts: Vec<f64> = self.by_class.iter().map(|v| v.len() as f64).collect();
        let nonempty = counts.iter().filter(|&&c| c > 0.0).count() as f64;
        let normalise = |w: Vec<f64>| {
            let s: f64 = w.iter().sum();
            w.into_iter().map(|x| x / s).collect::<Vec<_>>()
        };
        match &self.kind {
            SamplerKind::Instance => normalise(counts),
            SamplerKind::ClassBalanced { .. } => {
                counts.iter().map(|&c| if c > 0.0 { 1.0 / nonempty } else { 0.0 }).collect()
            }
            SamplerKind::Power { q } => {
                normalise(counts.iter().map(|&c| if c > 0.0 { c.powf(*q) } else { 0.0 }).collect())
            }
            SamplerKind::Progressive { total_epochs } => {
                let t = (epoch as f64 / (*total_epochs).max(1) as f64).min(1.0);
                let n: f64 = counts.iter().sum();
                counts.iter().map(|&c| (1.0 - t) * c / n + if c > 0.0 { t / nonempty } else { 0.0 }).collect()
            }
        }
    }

    /// The `len` training indices visited in `epoch`, in order.
    pub fn epoch(&self, epoch: usize, len: usize) -> Vec<usize> {
        let mut rng = Rng::stream(self.seed, &[crate::rng::streams::SAMPLER, epoch as u64]);
        match &self.kind {
            SamplerKind::Instance => {
                let mut out = Vec::with_capacity(len);
                while out.len() < len {
                    let p = rng.permutation(self.n);
                    let take = (len - out.len()).min(self.n);
                    out.extend_from_slice(&p[..take]);
                }
                out
            }
            SamplerKind::ClassBalanced { per_class } => {
                let classes: Vec<usize> =
                    (0..self.by_class.len()).filter(|&c| !self.by_class[c].is_empty()).collect();
                let mut class_cycle = Cycle::new(classes);
                let mut data_cycles: Vec<Cycle> =
                    self.by_class.iter().map(|v| Cycle::new(v.clone())).collect();
                let mut out = Vec::with_capacity(len);
                while out.len() < len {
                    let c = class_cycle.next(&mut rng);
                    for _ in 0..*per_class {
                        if out.len() == len {
                            break;
                        }
                        out.push(data_cycles[c].next(&mut rng));
                    }
                }
                out
            }
            SamplerKind::Power { .. } | SamplerKind::Progressive { .. } => {
                let p = self.class_probabilities(epoch);
                let mut cdf = Vec::with_capacity(p.len());
                let mut acc = 0.0;
                for x in &p {
                    acc += x;
                    cdf.push(acc);
                }
                (0..len)
                    .map(|_| {
                        let u = rng.uniform() * acc;
                        let c = cdf.partition_point(|&x| x <= u).min(p.len() - 1);
                        let members = &self.by_class[c];
                        members[rng.below(members.len() as u64) as usize]
                    })
                    .collect()
            }
        }
    }
}

/// Kang et al.'s `RandomCycleIter`: yields a list's items in a random order, reshuffling each pass.
struct Cycle {
    items: Vec<usize>,
    pos: usize,
}

impl Cycle {
    fn new(items: Vec<usize>) -> Self {
        let pos = items.len();
        Self { items, pos }
    }
    fn next(&mut self, rng: &mut Rng) -> usize {
        if self.pos >= self.items.len() {
            rng.shuffle(&mut self.items);
            self.pos = 0;
        }
        self.pos += 1;
        self.items[self.pos - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<u32> {
        // counts 80, 15, 5
        let mut l = vec![0u32; 80];
        l.extend(vec![1u32; 15]);
        l.extend(vec![2u32; 5]);
        l
    }

    fn class_hist(idx: &[usize], labels: &[u32]) -> Vec<usize> {
        let mut h = vec![0; 3];
        for &i in idx {
            h[labels[i] as usize] += 1;
        }
        h
    }

    #[test]
    fn instance_epoch_is_a_permutation_and_deterministic() {
        let l = labels();
        let s = Sampler::new(SamplerKind::Instance, &l, 3, 1).unwrap();
        let mut e = s.epoch(0, 100);
        assert_eq!(e, s.epoch(0, 100));
        assert_ne!(e, s.epoch(1, 100));
        e.sort();
        assert_eq!(e, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn class_balanced_draws_runs_of_four_and_balances_classes() {
        let l = labels();
        let s = Sampler::new(SamplerKind::ClassBalanced { per_class: 4 }, &l, 3, 7).unwrap();
        let e = s.epoch(0, 1200);
        for run in e.chunks(4) {
            assert!(run.iter().all(|&i| l[i] == l[run[0]]), "a class draw yields 4 samples of one class");
        }
        let h = class_hist(&e, &l);
        assert_eq!(h, vec![400, 400, 400], "the class cycle visits every class once per pass");
        // Within a class, the cycle visits every sample before repeating one.
        let few: Vec<usize> = e.iter().copied().filter(|&i| l[i] == 2).take(5).collect();
        let mut sorted = few.clone();
        sorted.sort();
        assert_eq!(sorted, vec![95, 96, 97, 98, 99]);
    }

    #[test]
    fn power_and_progressive_match_their_probabilities() {
        let l = labels();
        let s = Sampler::new(SamplerKind::Power { q: 0.5 }, &l, 3, 3).unwrap();
        let p = s.class_probabilities(0);
        let z = 80f64.sqrt() + 15f64.sqrt() + 5f64.sqrt();
        assert!((p[0] - 80f64.sqrt() / z).abs() < 1e-12);
        let e = s.epoch(0, 60_000);
        let h = class_hist(&e, &l);
        for c in 0..3 {
            let f = h[c] as f64 / 60_000.0;
            assert!((f - p[c]).abs() < 0.01, "class {c}: {f} vs {}", p[c]);
        }
        let q0 = Sampler::new(SamplerKind::Power { q: 0.0 }, &l, 3, 3).unwrap().class_probabilities(0);
        assert!(q0.iter().all(|&x| (x - 1.0 / 3.0).abs() < 1e-12));
        let prog = Sampler::new(SamplerKind::Progressive { total_epochs: 10 }, &l, 3, 3).unwrap();
        let p0 = prog.class_probabilities(0);
        let p5 = prog.class_probabilities(5);
        let p10 = prog.class_probabilities(10);
        assert!((p0[0] - 0.8).abs() < 1e-12);
        assert!((p5[2] - (0.5 * 0.05 + 0.5 / 3.0)).abs() < 1e-12);
        assert!((p10[1] - 1.0 / 3.0).abs() < 1e-12);
    }

    /// Every scheme's probabilities with a class that has no sample: 0 for it, the scheme's own
    /// weights over the others, summing to 1; past its last epoch the progressive scheme stays
    /// class-balanced.
    #[test]
    fn probabilities_leave_out_a_class_without_samples() {
        // Counts 6, 0, 2.
        let l = [0u32, 0, 0, 0, 0, 0, 2, 2];
        let p = |kind| Sampler::new(kind, &l, 3, 0).unwrap().class_probabilities(0);
        assert_eq!(p(SamplerKind::Instance), [0.75, 0.0, 0.25]);
        assert_eq!(p(SamplerKind::ClassBalanced { per_class: 4 }), [0.5, 0.0, 0.5]);
        let power = p(SamplerKind::Power { q: 0.5 });
        let z = 6f64.sqrt() + 2f64.sqrt();
        assert!((power[0] - 6f64.sqrt() / z).abs() < 1e-12 && power[1] == 0.0, "{power:?}");
        let prog = Sampler::new(SamplerKind::Progressive { total_epochs: 4 }, &l, 3, 0).unwrap();
        let at = |e| prog.class_probabilities(e);
        // Epoch 1 of 4: a quarter of the way from instance (6/8) to class-balanced (1/2).
        assert!((at(1)[0] - (0.75 * 0.75 + 0.25 * 0.5)).abs() < 1e-12, "{:?}", at(1));
        assert_eq!((at(1)[1], at(8)), (0.0, at(4)));
        for e in [0, 1, 4] {
            assert!((at(e).iter().sum::<f64>() - 1.0).abs() < 1e-12, "epoch {e}");
        }
        let s = Sampler::new(SamplerKind::Power { q: 0.0 }, &l, 3, 0).unwrap();
        assert!(s.epoch(0, 400).iter().all(|&i| l[i] != 1) && (s.len(), s.is_empty()) == (8, false));
    }

    /// An instance-balanced epoch longer than the set runs through it whole, then again.
    #[test]
    fn an_instance_epoch_longer_than_the_set_repeats_it_whole() {
        let l = labels();
        let e = Sampler::new(SamplerKind::Instance, &l, 3, 5).unwrap().epoch(0, 250);
        assert_eq!(e.len(), 250);
        let mut first = e[..100].to_vec();
        first.sort();
        assert_eq!(first, (0..100).collect::<Vec<_>>());
        let err = Sampler::new(SamplerKind::Instance, &[0, 5], 3, 0).err().unwrap().to_string();
        assert_eq!(err, "label 5 at index 1 is outside 0..3");
    }

    #[test]
    fn parses_names() {
        assert_eq!("sqrt".parse::<SamplerKind>().unwrap(), SamplerKind::Power { q: 0.5 });
        assert_eq!(
            "class-balanced".parse::<SamplerKind>().unwrap(),
            SamplerKind::ClassBalanced { per_class: 4 }
        );
        assert_eq!(
            "progressive:30".parse::<SamplerKind>().unwrap(),
            SamplerKind::Progressive { total_epochs: 30 }
        );
        assert!("bogus".parse::<SamplerKind>().is_err());
        assert_eq!("instance".parse::<SamplerKind>().unwrap(), SamplerKind::Instance);
        // Every kind reads back from its name.
        for k in [
            SamplerKind::Power { q: 0.25 },
            SamplerKind::ClassBalanced { per_class: 2 },
            SamplerKind::Progressive { total_epochs: 7 },
            SamplerKind::Instance,
        ] {
            assert_eq!(k.to_string().parse::<SamplerKind>().unwrap(), k);
        }
        // Counts of 0 and exponents that are no number are refused, not taken as something else.
        for (bad, why) in [
            ("class-balanced:0", "per-class count"),
            ("class-balanced:x", "per-class count"),
            ("progressive:0", "epoch count"),
            ("power:nan", "exponent"),
            ("power:inf", "exponent"),
        ] {
            let err = bad.parse::<SamplerKind>().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
        // The same rules hold for a kind built in code or read by serde: `Sampler::new` asks.
        for kind in [
            SamplerKind::ClassBalanced { per_class: 0 },
            SamplerKind::Power { q: f64::NAN },
            SamplerKind::Progressive { total_epochs: 0 },
        ] {
            let err = Sampler::new(kind.clone(), &[0, 1], 2, 0).err().map(|e| e.to_string());
            assert!(err.as_deref().is_some_and(|e| e.contains("sampler needs")), "{kind:?}: {err:?}");
        }
    }
}
