//! The device the run trains on: the config's `device` key opened once per process.
//!
//! `device = "cpu"` (the default) needs nothing. `device = "cuda:N"` opens the GPU through
//! `latent-cuda` before any data is read, or fails with what is missing (driver, library,
//! device). Encoders are then offered the device ([`crate::plugins::Encoder::bind`]): one that
//! accepts it runs there, and the host copies images in and features out around the
//! objective, which stays on the CPU; one that refuses stays on the CPU, said once in the log.

use anyhow::{bail, Result};
use latent_abi::DeviceKind;
use latent_cuda::Gpu;
use std::sync::{Arc, Mutex};

/// Where encoders run.
#[derive(Clone, Debug)]
pub enum HostDevice {
    /// The CPU.
    Cpu,
    /// An open CUDA device.
    Cuda(Arc<Gpu>),
}

static OPEN: Mutex<Vec<Arc<Gpu>>> = Mutex::new(Vec::new());

/// Opens the device named by the config key `device` (`cpu`, `cuda`, `cuda:N`); a CUDA device
/// is opened once per process and shared.
pub fn open(device: &str) -> Result<HostDevice> {
    let d = latent_cuda::parse_device(device)
        .map_err(|e| anyhow::anyhow!("config key `device`: {e}"))?;
    if d.kind == DeviceKind::Cpu {
        return Ok(HostDevice::Cpu);
    }
    if crate::dist::world().is_distributed() {
        bail!("config key `device` = {device:?}: data-parallel runs (mpirun) train on the cpu only for now; set device = \"cpu\"");
    }
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = open.iter().find(|g| g.device() == d) {
        return Ok(HostDevice::Cuda(g.clone()));
    }
    let gpu = Gpu::open(d.ordinal)
        .map_err(|e| anyhow::anyhow!("config key `device` = {device:?}: {e}"))?;
    tracing::info!("device {}", gpu.describe());
    let gpu = Arc::new(gpu);
    open.push(gpu.clone());
    Ok(HostDevice::Cuda(gpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_gpu_is_a_clear_error() {
        assert!(matches!(open("cpu").unwrap(), HostDevice::Cpu));
        let e = open("gpu0").unwrap_err().to_string();
        assert!(e.contains("config key `device`") && e.contains("cuda:N"), "{e}");
        if !latent_cuda::driver_present() {
            let e = open("cuda:0").unwrap_err().to_string();
            assert!(
                e.contains("config key `device` = \"cuda:0\"") && e.contains("libcuda.so.1"),
                "{e}"
            );
        }
    }
}
