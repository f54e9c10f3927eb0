//! An exponential moving average of model weights, for sampling from a smoothed model.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use tch::{nn::VarStore, Tensor};

/// Shadow copies `s ← decay · s + (1 − decay) · θ` of a VarStore's trainable variables, by name.
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    /// Starts the average at the current values of `vs`'s variables that require grad (frozen
    /// variables never change, so averaging them is wasted work).
    pub fn new(vs: &VarStore, decay: f64) -> Result<Self> {
        ensure!(
            (0.0..=1.0).contains(&decay),
            "EMA decay must be in [0, 1], got {decay}"
        );
        let shadow = vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(k, v)| (k, v.detach().copy()))
            .collect();
        Ok(Self { decay, shadow })
    }

    /// Changes the decay (warm-up schedules); values outside [0, 1] are clamped.
    pub fn set_decay(&mut self, decay: f64) {
        self.decay = decay.clamp(0.0, 1.0);
    }

    /// The decay.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Names of the averaged variables.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shadow.keys().map(String::as_str)
    }

    /// The averages as named tensors, each name prefixed (for checkpoints).
    pub fn named(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.shadow
            .iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v.shallow_clone()))
            .collect()
    }

    /// Restores the averages written by [`Ema::named`] with the same prefix.
    pub fn restore(
        &mut self,
        saved: &std::collections::HashMap<String, Tensor>,
        prefix: &str,
    ) -> Result<()> {
        for (name, s) in self.shadow.iter_mut() {
            let t = saved
                .get(&format!("{prefix}{name}"))
                .with_context(|| format!("checkpoint has no EMA tensor '{prefix}{name}'"))?;
            ensure!(
                t.size() == s.size(),
                "EMA tensor '{prefix}{name}' has shape {:?}, expected {:?}",
                t.size(),
                s.size()
            );
            *s = t.to_kind(s.kind()).to_device(s.device());
        }
        Ok(())
    }

    /// The average of one variable.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.shadow.get(name)
    }

    /// Moves the average towards the current values of `vs` (call after each optimiser step).
    pub fn update(&mut self, vs: &VarStore) -> Result<()> {
        let vars = vs.variables();
        tch::no_grad(|| {
            for (name, s) in self.shadow.iter_mut() {
                let v = vars
                    .get(name)
                    .with_context(|| format!("EMA variable `{name}` is not in the VarStore"))?;
                // s + (1 - decay) (v - s)
                let _ = s.lerp_(&v.to_kind(s.kind()), 1.0 - self.decay);
            }
            Ok(())
        })
    }

    /// Writes the averages into the variables of the same names in `vs` (e.g. a copy of the
    /// model used for sampling).
    pub fn copy_to(&self, vs: &VarStore) -> Result<()> {
        let vars = vs.variables();
        tch::no_grad(|| {
            for (name, s) in &self.shadow {
                let Some(v) = vars.get(name) else {
                    bail!("EMA variable `{name}` is not in the target VarStore");
                };
                ensure!(
                    v.size() == s.size(),
                    "EMA variable `{name}` has shape {:?}, the target {:?}",
                    s.size(),
                    v.size()
                );
                v.shallow_clone().copy_(s);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    #[test]
    fn average_moves_by_one_minus_decay() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(0.0));
        let frozen = vs.root().ones_no_train("f", &[1]);
        let mut ema = Ema::new(&vs, 0.9).unwrap();
        assert_eq!(ema.names().collect::<Vec<_>>(), ["w"]);
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(1.0);
        });
        ema.update(&vs).unwrap();
        ema.update(&vs).unwrap();
        // 0 → 0.1 → 0.19
        let got = ema.get("w").unwrap().mean(Kind::Double).double_value(&[]);
        assert!((got - 0.19).abs() < 1e-6, "{got}");

        let target = nn::VarStore::new(Device::Cpu);
        let tw = target.root().var("w", &[2], nn::Init::Const(5.0));
        ema.copy_to(&target).unwrap();
        assert!((tw.mean(Kind::Double).double_value(&[]) - 0.19).abs() < 1e-6);
        drop(frozen);
    }
}
