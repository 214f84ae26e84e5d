//! Token sampling: greedy, or temperature with top-k and top-p (nucleus)
//! filtering, in the order llama.cpp's default chain applies them
//! (top-k, top-p, temperature), drawn from a seeded xorshift generator.

/// A seeded random source (xorshift64*); the same seed gives the same text.
pub struct Sampler {
    state: u64,
}

impl Sampler {
    pub fn new(seed: u64) -> Sampler {
        Sampler {
            state: seed ^ 0x9e37_79b9_7f4a_7c15 | 1,
        }
    }

    fn next_f64(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Pick a token from `logits`. `temperature <= 0` is greedy; `top_k == 0`
    /// and `top_p >= 1` switch those filters off.
    pub fn sample(&mut self, logits: &[f32], temperature: f32, top_k: usize, top_p: f32) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        if temperature.is_nan() || temperature <= 0.0 {
            return argmax(logits);
        }
        let mut idx: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect();
        if idx.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if top_k > 0 && top_k < idx.len() {
            idx.select_nth_unstable_by(top_k - 1, by_logit);
            idx.truncate(top_k);
        }
        idx.sort_unstable_by(by_logit);
        let max = logits[idx[0] as usize];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i as usize] - max) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        if top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (j, p) in probs.iter().enumerate() {
                cum += p / total;
                if cum >= top_p as f64 {
                    keep = j + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        for (p, &i) in probs.iter_mut().zip(&idx) {
            *p = (((logits[i as usize] - max) / temperature) as f64).exp();
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.next_f64() * total;
        for (p, &i) in probs.iter().zip(&idx) {
            r -= p;
            if r <= 0.0 {
                return i;
            }
        }
        idx[idx.len() - 1]
    }
}

/// The index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_filters() {
        let logits = [0.0, 3.0, 1.0, 2.9, -1.0];
        let mut s = Sampler::new(1);
        assert_eq!(s.sample(&logits, 0.0, 0, 1.0), 1);
        for _ in 0..200 {
            let t = s.sample(&logits, 1.0, 2, 1.0);
            assert!(t == 1 || t == 3, "top-k 2 gave {t}");
        }
        for _ in 0..50 {
            assert_eq!(s.sample(&logits, 1.0, 0, 0.1), 1);
        }
        let mut a = Sampler::new(5);
        let mut b = Sampler::new(5);
        let xa: Vec<u32> = (0..20).map(|_| a.sample(&logits, 0.8, 0, 0.95)).collect();
        let xb: Vec<u32> = (0..20).map(|_| b.sample(&logits, 0.8, 0, 0.95)).collect();
        assert_eq!(xa, xb);
    }
}
