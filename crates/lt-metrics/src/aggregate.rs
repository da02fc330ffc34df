//! Aggregation over seeds: mean and sample standard deviation.

use serde::{Deserialize, Serialize};

/// Mean and sample standard deviation (`n - 1` in the denominator; 0 for one value).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

/// Mean ± sample standard deviation of `values` (`None` when empty).
pub fn mean_std(values: &[f64]) -> Option<MeanStd> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(MeanStd { mean, std, n })
}

impl MeanStd {
    /// Formats as `mean ± std` with `decimals`, scaling by `scale` (100 for percentages).
    pub fn format(&self, scale: f64, decimals: usize) -> String {
        format!("{:.*} ± {:.*}", decimals, self.mean * scale, decimals, self.std * scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_standard_deviation() {
        let m = mean_std(&[1.0, 2.0, 4.0]).unwrap();
        assert!((m.mean - 7.0 / 3.0).abs() < 1e-12);
        let var =
            ((1.0f64 - 7.0 / 3.0).powi(2) + (2.0f64 - 7.0 / 3.0).powi(2) + (4.0f64 - 7.0 / 3.0).powi(2))
                / 2.0;
        assert!((m.std - var.sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]).unwrap().std, 0.0);
        assert!(mean_std(&[]).is_none());
        assert_eq!(mean_std(&[0.5, 0.5]).unwrap().format(100.0, 2), "50.00 ± 0.00");
    }
}
