//! Real-input FFT convolution and self-convolution of probability vectors.

use std::sync::{Arc, Mutex, OnceLock};

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::PrivacyError;

fn numerical(e: impl std::fmt::Display) -> PrivacyError {
    PrivacyError::Numerical(format!("FFT: {e}"))
}

type Plans = (Arc<dyn RealToComplex<f64>>, Arc<dyn ComplexToReal<f64>>);

/// How many FFT lengths keep their plans (a plan of length n holds O(n)
/// twiddles, so the cache must stay small).
const CACHED_PLANS: usize = 4;

/// Forward and inverse real FFTs of length `len`. The most recently used
/// lengths are cached: planning a large mixed-radix FFT costs about as much as
/// running it, and both directions of an event use the same length.
fn plans(len: usize) -> Plans {
    static CACHE: OnceLock<Mutex<Vec<(usize, Plans)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(i) = cache.iter().position(|(n, _)| *n == len) {
        let entry = cache.remove(i);
        let plans = entry.1.clone();
        cache.push(entry);
        return plans;
    }
    let mut planner = RealFftPlanner::<f64>::new();
    let plans: Plans = (planner.plan_fft_forward(len), planner.plan_fft_inverse(len));
    if cache.len() >= CACHED_PLANS {
        cache.remove(0);
    }
    cache.push((len, plans.clone()));
    plans
}

/// Smallest even length ≥ n whose only prime factors are 2, 3 and 5 (the
/// lengths rustfft transforms fastest).
pub(crate) fn fast_len(n: usize) -> usize {
    let n = n.max(2);
    let mut best = n.next_power_of_two();
    let mut p5 = 1usize;
    while p5 < best {
        let mut p35 = p5;
        while p35 < best {
            // Smallest p35 · 2^k ≥ n with k ≥ 1.
            let mut m = p35 * 2;
            while m < n {
                m *= 2;
            }
            best = best.min(m);
            p35 *= 3;
        }
        p5 *= 5;
    }
    best
}

/// z^n by repeated squaring.
fn pow_u64(mut z: Complex<f64>, mut n: u64) -> Complex<f64> {
    let mut acc = Complex::new(1.0, 0.0);
    while n > 0 {
        if n & 1 == 1 {
            acc *= z;
        }
        n >>= 1;
        if n > 0 {
            z = z * z;
        }
    }
    acc
}

/// The `times`-fold self-convolution of `probs`, computed cyclically with
/// length `len` ≥ probs.len(): the spectrum is raised to the power `times` by
/// repeated squaring. Returns the cyclic result (index i holds the mass of all
/// sums ≡ i mod len); the caller picks the window it knows holds all but a
/// negligible mass. Tiny negative values from round-off are set to zero.
pub(crate) fn self_convolve_cyclic(
    probs: &[f64],
    times: u64,
    len: usize,
) -> Result<Vec<f64>, PrivacyError> {
    let (forward, inverse) = plans(len);
    let mut buf = forward.make_input_vec();
    buf[..probs.len()].copy_from_slice(probs);
    let mut spectrum = forward.make_output_vec();
    forward
        .process(&mut buf, &mut spectrum)
        .map_err(numerical)?;
    for c in spectrum.iter_mut() {
        *c = pow_u64(*c, times);
    }
    clear_edge_imaginary(&mut spectrum, len);
    inverse
        .process(&mut spectrum, &mut buf)
        .map_err(numerical)?;
    let scale = 1.0 / len as f64;
    for v in buf.iter_mut() {
        *v = (*v * scale).max(0.0);
    }
    Ok(buf)
}

/// Linear convolution of two probability vectors (length a.len()+b.len()−1).
pub(crate) fn convolve(a: &[f64], b: &[f64]) -> Result<Vec<f64>, PrivacyError> {
    let out_len = a.len() + b.len() - 1;
    if a.len().min(b.len()) <= 32 {
        // Direct is faster and exact for short kernels.
        let mut out = vec![0.0; out_len];
        let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
        for (i, &s) in short.iter().enumerate() {
            for (o, &l) in out[i..i + long.len()].iter_mut().zip(long) {
                *o += s * l;
            }
        }
        return Ok(out);
    }
    let len = fast_len(out_len);
    let (forward, inverse) = plans(len);
    let mut buf = forward.make_input_vec();
    buf[..a.len()].copy_from_slice(a);
    let mut sa = forward.make_output_vec();
    forward.process(&mut buf, &mut sa).map_err(numerical)?;
    buf.iter_mut().for_each(|v| *v = 0.0);
    buf[..b.len()].copy_from_slice(b);
    let mut sb = forward.make_output_vec();
    forward.process(&mut buf, &mut sb).map_err(numerical)?;
    for (x, y) in sa.iter_mut().zip(&sb) {
        *x *= *y;
    }
    clear_edge_imaginary(&mut sa, len);
    inverse.process(&mut sa, &mut buf).map_err(numerical)?;
    let scale = 1.0 / len as f64;
    buf.truncate(out_len);
    for v in buf.iter_mut() {
        *v = (*v * scale).max(0.0);
    }
    Ok(buf)
}

/// The DC (and, for even lengths, Nyquist) bins of a real signal's spectrum
/// are real; round-off must not make the inverse transform reject them.
fn clear_edge_imaginary(spectrum: &mut [Complex<f64>], len: usize) {
    spectrum[0].im = 0.0;
    if len.is_multiple_of(2) {
        if let Some(last) = spectrum.last_mut() {
            last.im = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_len_is_smooth_and_minimal() {
        assert_eq!(fast_len(1), 2);
        assert_eq!(fast_len(7), 8);
        assert_eq!(fast_len(11), 12);
        assert_eq!(fast_len(1001), 1024);
        assert_eq!(fast_len(1025), 1080);
    }

    #[test]
    fn self_convolution_matches_direct() {
        let p = [0.2, 0.5, 0.3];
        let cyc = self_convolve_cyclic(&p, 3, 8).unwrap();
        let direct = convolve(&convolve(&p, &p).unwrap(), &p).unwrap();
        for (i, d) in direct.iter().enumerate() {
            assert!((cyc[i] - d).abs() < 1e-15);
        }
    }

    #[test]
    fn fft_convolution_matches_direct() {
        let a: Vec<f64> = (0..100).map(|i| (i as f64 * 0.37).sin().abs()).collect();
        let b: Vec<f64> = (0..70).map(|i| (i as f64 * 0.11).cos().abs()).collect();
        let fft = convolve(&a, &b).unwrap();
        let mut direct = vec![0.0; a.len() + b.len() - 1];
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                direct[i + j] += x * y;
            }
        }
        for (f, d) in fft.iter().zip(&direct) {
            assert!((f - d).abs() < 1e-12);
        }
    }
}
