//! Hessian preparation for GPTQ (Frantar et al. 2022, Algorithm 1): dead
//! columns, damping, and the upper Cholesky factor of the inverse Hessian.

use faer::linalg::solvers::Llt;
use faer::{MatMut, MatRef, Par, Side};

use crate::error::{Error, Result};

/// Columns whose Hessian diagonal is zero: the calibration data never
/// activated them, so their weights cannot matter to the layer's output. The
/// reference sets `H_ii = 1` and zeroes the weights (gptq.py `dead`).
pub fn dead_columns(h: &[f32], n: usize) -> Vec<bool> {
    (0..n).map(|i| h[i * n + i] == 0.0).collect()
}

/// Mean of the diagonal, as the damping base (`percdamp * mean(diag(H))`).
pub fn mean_diagonal(h: &[f32], n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    (0..n).map(|i| h[i * n + i] as f64).sum::<f64>() / n as f64
}

/// The upper triangular `U` with `H⁻¹ = Uᵀ U` (what the reference gets from
/// `cholesky(cholesky_inverse(cholesky(H)), upper=True)`), in row-major order.
///
/// One factorization and one triangular inverse instead of three O(n³)
/// steps: with `J` the reversal permutation, `J H J = L Lᵀ` gives `H = R Rᵀ`
/// with `R = J L J` upper triangular, hence `H⁻¹ = R⁻ᵀ R⁻¹ = Uᵀ U` with
/// `U = R⁻¹`. Both have positive diagonals, so `U` is the unique factor.
pub fn inverse_upper_cholesky(h: &[f32], n: usize) -> Result<Vec<f32>> {
    // J H J is H's row-major storage reversed, and contiguous (faster to factor than
    // a view with negative strides).
    let reversed: Vec<f32> = h.iter().rev().copied().collect();
    let view = MatRef::from_row_major_slice(&reversed, n, n);
    let llt = Llt::new(view, Side::Lower).map_err(|e| {
        Error::Value(format!(
            "Hessian is not positive definite after damping ({e}); \
             raise the damping or give more calibration tokens"
        ))
    })?;
    // Uᵀ = (R⁻¹)ᵀ = (Rᵀ)⁻¹ with Rᵀ = J Lᵀ J lower triangular. Written column-major,
    // Uᵀ's storage is U in row-major order, which the column loop reads row by row.
    let r_t = llt.L().transpose().reverse_rows_and_cols();
    let mut out = vec![0f32; n * n];
    let dst = MatMut::from_column_major_slice_mut(&mut out, n, n);
    faer::linalg::triangular_inverse::invert_lower_triangular(dst, r_t, Par::rayon(0));
    // The strict upper part of Uᵀ (lower part of U) is left untouched: zeros.
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::Value(
            "inverse Hessian factor is not finite; raise the damping".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_factor_reproduces_inverse() {
        let n = 5;
        // H = A Aᵀ + I, symmetric positive definite.
        let a: Vec<f32> = (0..n * n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let mut h = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f32>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let u = inverse_upper_cholesky(&h, n).expect("positive definite");
        // H (Uᵀ U) = I
        for i in 0..n {
            for j in 0..n {
                let mut s = 0f64;
                for k in 0..n {
                    let hinv_kj: f64 = (0..n).map(|m| (u[m * n + k] * u[m * n + j]) as f64).sum();
                    s += h[i * n + k] as f64 * hinv_kj;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-3, "({i},{j}) = {s}");
            }
        }
        for i in 0..n {
            assert!(u[i * n + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
    }

    #[test]
    fn indefinite_hessian_is_an_error() {
        let h = [1.0f32, 2.0, 2.0, 1.0];
        assert!(inverse_upper_cholesky(&h, 2).is_err());
    }
}
