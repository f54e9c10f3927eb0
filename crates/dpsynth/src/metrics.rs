//! Classification metrics: accuracy, per-class accuracy and the confusion matrix.

use serde::{Deserialize, Serialize};

/// Accuracy figures of a classifier on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Accuracy within each true class (NaN-free: a class with no example gets 0).
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl Metrics {
    /// Computes the metrics from true labels and predictions over `num_classes` classes.
    /// Labels or predictions outside `0..num_classes` are counted as wrong and left out of the
    /// matrix, so a buggy model cannot corrupt the report.
    pub fn from_predictions(labels: &[usize], predictions: &[usize], num_classes: usize) -> Self {
        let mut confusion = vec![vec![0u64; num_classes]; num_classes];
        let mut correct = 0u64;
        for (&y, &p) in labels.iter().zip(predictions) {
            if y < num_classes && p < num_classes {
                confusion[y][p] += 1;
            }
            if y == p {
                correct += 1;
            }
        }
        let per_class_accuracy = confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: u64 = row.iter().sum();
                if n == 0 {
                    0.0
                } else {
                    row[c] as f64 / n as f64
                }
            })
            .collect();
        Self {
            accuracy: if labels.is_empty() {
                0.0
            } else {
                correct as f64 / labels.len() as f64
            },
            per_class_accuracy,
            confusion,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates() {
        let m = Metrics::from_predictions(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert_eq!(m.per_class_accuracy, vec![0.5, 1.0, 0.0]);
    }
}
