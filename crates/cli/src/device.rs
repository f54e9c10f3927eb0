//! The global `--device` flag: `cpu`, `cuda` or `cuda:N`.

use anyhow::{bail, Result};
use tch::Device;

/// Parses `cpu`, `cuda` or `cuda:N`, checking that libtorch can use CUDA device N when asked.
pub fn parse_device(s: &str) -> Result<Device> {
    let d = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(i) => Device::Cuda(i),
            None => bail!("--device {s}: expected cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = d {
        if !tch::Cuda::is_available() {
            bail!(
                "--device {s}: CUDA is not available (libtorch sees no GPU, or was built without \
                 CUDA); use --device cpu"
            );
        }
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            bail!("--device {s}: this machine has {n} CUDA device(s), numbered from 0");
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_names_are_refused() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn cuda_is_refused_where_libtorch_has_none() {
        if tch::Cuda::is_available() {
            return;
        }
        for s in ["cuda", "cuda:0", "cuda:3"] {
            let e = parse_device(s).unwrap_err().to_string();
            assert!(e.contains("CUDA is not available"), "{s}: {e}");
        }
    }
}
