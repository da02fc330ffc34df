//! SRepr's batch loss (`SreprLoss::batch`) against a hand-written f64 reference of the reference
//! sheet's formula, one case per branch: the members' mean balancing loss, the additive and the
//! convex objectives, the student's own balancing loss, distillation on the adjusted logits, the
//! reverse KL, Balanced Softmax, a separate (frozen) teacher, and the stop-gradient on the online
//! teacher.

use candle_core::{Device, Tensor, Var};
use lt_retrain::config::{Balance, KdLogits, KlDirection, Objective, Weighting};
use lt_retrain::methods::srepr::SreprLoss;

/// `[M, B, C]` = `[2, 2, 3]`: the head's logits on two SWAG members' representations.
const MEMBERS: [[[f64; 3]; 2]; 2] =
    [[[1.0, -0.5, 0.3], [0.2, 0.8, -1.1]], [[0.7, 0.1, -0.4], [-0.3, 1.2, 0.5]]];
/// A different teacher (a frozen head's logits on the same representations).
const TEACHER: [[[f64; 3]; 2]; 2] =
    [[[0.4, 0.9, -0.2], [1.5, -0.7, 0.1]], [[-0.6, 0.3, 0.8], [0.9, 0.2, -0.5]]];
/// `[B, C]`: the head's logits on the SWA representation.
const STUDENT: [[f64; 3]; 2] = [[0.5, -0.2, 0.9], [-0.4, 0.6, 0.1]];
const LABELS: [u32; 2] = [0, 2];
const COUNTS: [f64; 3] = [60.0, 30.0, 10.0];
const TAU: f64 = 1.3;
const T: f64 = 2.0;

fn log_sum_exp(z: &[f64]) -> f64 {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let l = log_sum_exp(z);
    z.iter().map(|v| (v - l).exp()).collect()
}

fn log_prior() -> Vec<f64> {
    let n: f64 = COUNTS.iter().sum();
    COUNTS.iter().map(|c| (c / n).ln()).collect()
}

/// What the balancing loss adds to the logits: `tau log pi` (LA) or `log n` (Balanced Softmax).
fn shift(balance: Balance) -> Vec<f64> {
    match balance {
        Balance::La => log_prior().iter().map(|l| TAU * l).collect(),
        Balance::BalancedSoftmax => COUNTS.iter().map(|c| c.ln()).collect(),
        Balance::Ce | Balance::Crt => vec![0.0; 3],
    }
}

/// `CE(z + shift, y)`.
fn balance_loss(z: &[f64], y: u32, balance: Balance) -> f64 {
    let a: Vec<f64> = z.iter().zip(shift(balance)).map(|(v, s)| v + s).collect();
    log_sum_exp(&a) - a[y as usize]
}

/// `(1/M) sum_m (1/B) sum_i B(members_m,i)`.
fn members_loss(balance: Balance) -> f64 {
    let per: Vec<f64> =
        MEMBERS.iter().flat_map(|m| m.iter().zip(LABELS).map(|(z, y)| balance_loss(z, y, balance))).collect();
    per.iter().sum::<f64>() / per.len() as f64
}

/// `T^2 (1/B) sum_i KL(p_T,i || p_S,i)` (or the reverse), `p_T` the members' mean softmax at
/// temperature `T`, with `shift` added to every logit first.
fn kd(teacher: &[[[f64; 3]; 2]; 2], kl: KlDirection, shift: &[f64]) -> f64 {
    let scaled = |z: &[f64; 3]| -> Vec<f64> { z.iter().zip(shift).map(|(v, s)| (v + s) / T).collect() };
    let mut total = 0.0;
    for i in 0..2 {
        let members: Vec<Vec<f64>> = teacher.iter().map(|m| softmax(&scaled(&m[i]))).collect();
        let pt: Vec<f64> = (0..3).map(|c| members.iter().map(|p| p[c]).sum::<f64>() / 2.0).collect();
        let ps = softmax(&scaled(&STUDENT[i]));
        let (p, q) = match kl {
            KlDirection::Forward => (&pt, &ps),
            KlDirection::Reverse => (&ps, &pt),
        };
        total += p.iter().zip(q).map(|(a, b)| a * (a.ln() - b.ln())).sum::<f64>();
    }
    T * T * total / 2.0
}

struct Case {
    balance: Balance,
    lambda: f64,
    kl: KlDirection,
    student_balance: bool,
    objective: Objective,
    kd_logits: KdLogits,
}

const BASE: Case = Case {
    balance: Balance::La,
    lambda: 0.7,
    kl: KlDirection::Forward,
    student_balance: false,
    objective: Objective::Additive,
    kd_logits: KdLogits::Balanced,
};

fn tensor3(v: &[[[f64; 3]; 2]; 2]) -> Tensor {
    let flat: Vec<f32> = v.iter().flatten().flatten().map(|&x| x as f32).collect();
    Tensor::from_vec(flat, (2, 2, 3), &Device::Cpu).unwrap()
}

fn tensor1(v: Vec<f64>) -> Tensor {
    Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<_>>(), 3, &Device::Cpu).unwrap()
}

/// The project's loss for `case`, with `teacher` as the teacher's logits (`None`: the online
/// teacher, the members themselves).
fn project(case: &Case, members: &Tensor, teacher: Option<&Tensor>) -> Tensor {
    let log_prior = tensor1(log_prior());
    let log_counts = tensor1(COUNTS.iter().map(|c| c.ln()).collect());
    let student: Vec<f32> = STUDENT.iter().flatten().map(|&x| x as f32).collect();
    let student = Tensor::from_vec(student, (2, 3), &Device::Cpu).unwrap();
    let labels = Tensor::new(&LABELS, &Device::Cpu).unwrap();
    let spec = SreprLoss {
        balance: case.balance,
        tau: TAU,
        log_prior: &log_prior,
        log_counts: &log_counts,
        lambda: case.lambda,
        temperature: T,
        kl: case.kl,
        student_balance: case.student_balance,
        objective: case.objective,
        weighting: Weighting::None,
        kd_logits: case.kd_logits,
    };
    spec.batch(members, teacher.unwrap_or(members), Some(&student), &labels).unwrap()
}

fn value(case: &Case, teacher: Option<&[[[f64; 3]; 2]; 2]>) -> f64 {
    let t = teacher.map(tensor3);
    project(case, &tensor3(&MEMBERS), t.as_ref()).to_scalar::<f32>().unwrap() as f64
}

/// The reference: `w_B sum_m B(members)/M [+ B(student)] + lambda KD` with `w_B = 1 - lambda`
/// for the convex objective.
fn reference(case: &Case, teacher: &[[[f64; 3]; 2]; 2]) -> f64 {
    let mut balance = members_loss(case.balance);
    if case.student_balance {
        balance +=
            STUDENT.iter().zip(LABELS).map(|(z, y)| balance_loss(z, y, case.balance)).sum::<f64>() / 2.0;
    }
    let kd_shift = match case.kd_logits {
        KdLogits::Balanced => vec![0.0; 3],
        KdLogits::Adjusted => shift(case.balance),
    };
    let kd = kd(teacher, case.kl, &kd_shift);
    match case.objective {
        Objective::Additive => balance + case.lambda * kd,
        Objective::Convex => (1.0 - case.lambda) * balance + case.lambda * kd,
    }
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{what}: got {got}, want {want}");
}

#[test]
fn every_branch_matches_the_formula() {
    let cases = [
        ("lambda 0: the members' mean LA loss", Case { lambda: 0.0, ..BASE }),
        ("additive", BASE),
        ("convex", Case { objective: Objective::Convex, lambda: 0.3, ..BASE }),
        ("student balanced too", Case { student_balance: true, ..BASE }),
        ("KD on the adjusted logits", Case { kd_logits: KdLogits::Adjusted, ..BASE }),
        ("reverse KL", Case { kl: KlDirection::Reverse, ..BASE }),
        ("Balanced Softmax", Case { balance: Balance::BalancedSoftmax, ..BASE }),
        (
            "Balanced Softmax, adjusted KD, convex",
            Case {
                balance: Balance::BalancedSoftmax,
                kd_logits: KdLogits::Adjusted,
                objective: Objective::Convex,
                lambda: 0.4,
                ..BASE
            },
        ),
        ("plain cross-entropy", Case { balance: Balance::Ce, ..BASE }),
    ];
    for (what, case) in &cases {
        assert_close(value(case, None), reference(case, &MEMBERS), what);
        assert_close(
            value(case, Some(&TEACHER)),
            reference(case, &TEACHER),
            &format!("{what}, frozen teacher"),
        );
    }
    // The terms are not interchangeable: the cases give different values.
    assert!((reference(&BASE, &MEMBERS) - members_loss(Balance::La)).abs() > 1e-3);
    assert!((reference(&BASE, &TEACHER) - reference(&BASE, &MEMBERS)).abs() > 1e-3);
}

/// The online teacher is the head itself behind a stop-gradient: the members' gradient is the
/// balancing loss's alone, whatever lambda.
#[test]
fn the_online_teacher_passes_no_gradient() {
    let grad = |lambda: f64| -> Vec<f32> {
        let members = Var::from_tensor(&tensor3(&MEMBERS)).unwrap();
        let loss = project(&Case { lambda, ..BASE }, members.as_tensor(), None);
        let grads = loss.backward().unwrap();
        grads.get(members.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let (with_kd, without) = (grad(0.7), grad(0.0));
    assert!(without.iter().any(|g| g.abs() > 1e-3));
    for (a, b) in with_kd.iter().zip(&without) {
        assert!((a - b).abs() < 1e-6, "{with_kd:?} vs {without:?}");
    }
}
