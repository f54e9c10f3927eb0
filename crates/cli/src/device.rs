//! The `--device` flag.

use anyhow::{bail, Result};
use tch::Device;

/// Parses `cpu`, `cuda` or `cuda:N`, checking that CUDA is there when asked for.
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
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            bail!("--device {s}: this machine has {n} CUDA device(s)");
        }
    }
    Ok(d)
}
