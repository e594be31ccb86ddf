//! The optimizer and the EMA on the GPU, for an encoder whose parameters live there
//! ([`crate::plugins::Encoder::device_params`]): the host's [`Optimizer`] maths (SGD with
//! momentum and Nesterov, AdamW) as kernels of `latent_cuda::kernels`, on the encoder's
//! buffers in place, with the moments on the device. The optimizer's state in checkpoints is
//! the host's ([`Optimizer::state`], same names): [`DeviceOptim::to_host`] fills it before a
//! checkpoint is written, [`DeviceOptim::from_host`] takes it after one is read.
//!
//! LARS and gradient clipping need norms of every parameter each step; with them the encoder's
//! parameters go through the host as on the CPU ([`DeviceOptim::handles`] says no).

use super::optim::{OptimConfig, Optimizer, OptimizerKind, State};
use anyhow::Result;
use latent_abi::{DeviceParam, DeviceTensorDesc, ParamDesc, ParamRole};
use latent_cuda::cudarc::driver::CudaSlice;
use latent_cuda::kernels::Ops;
use latent_cuda::{Borrowed, Gpu};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Moments of one parameter on the device.
struct Moments {
    /// Values of the parameter (the buffers hold at least one).
    n: usize,
    m: CudaSlice<f32>,
    v: Option<CudaSlice<f32>>,
    /// SGD's buffer holds a step (PyTorch's first step takes the gradient itself).
    started: bool,
}

/// The encoder's optimizer on its GPU.
pub struct DeviceOptim {
    ops: Ops,
    moments: HashMap<String, Moments>,
}

fn view(gpu: &Gpu, d: &DeviceTensorDesc) -> Result<Borrowed> {
    // SAFETY: the encoder owns its parameter buffers for its whole life (the ABI's contract
    // for `device_params`), longer than any step.
    Ok(unsafe { gpu.borrow(d) }?)
}

impl DeviceOptim {
    /// Whether the device can run this optimizer for parameters `descs`: SGD or AdamW, no
    /// clipping, no EMA target inside the encoder.
    pub fn handles(cfg: &OptimConfig, descs: &[ParamDesc]) -> bool {
        matches!(cfg.name, OptimizerKind::Sgd | OptimizerKind::Adamw)
            && cfg.clip_grad.is_none()
            && cfg.clip_grad_norm.is_none()
            && descs.iter().all(|d| d.role != ParamRole::Target)
    }

    /// An optimizer on `gpu`.
    pub fn new(gpu: Arc<Gpu>) -> DeviceOptim {
        DeviceOptim { ops: Ops::new(gpu), moments: HashMap::new() }
    }

    /// One update of every trained parameter of `params` (named `prefix.NAME` as on the host),
    /// gradients zeroed; `optim` gives the settings, the step's weight decay and Adam's t.
    pub fn update(
        &mut self,
        optim: &Optimizer,
        prefix: &str,
        descs: &[ParamDesc],
        params: &[DeviceParam],
        lr: f64,
    ) -> Result<()> {
        let gpu = self.ops.gpu().clone();
        let c = &optim.cfg;
        for (d, p) in descs.iter().zip(params) {
            if !matches!(d.role, ParamRole::Weight | ParamRole::NoDecay) {
                continue;
            }
            let n = p.value.len();
            let name = format!("{prefix}.{}", d.name);
            let adam = c.name == OptimizerKind::Adamw;
            if !self.moments.contains_key(&name) {
                let m = gpu.zeros(n)?;
                let v = if adam { Some(gpu.zeros(n)?) } else { None };
                self.moments.insert(name.clone(), Moments { n, m, v, started: false });
            }
            let st = self.moments.get_mut(&name).expect("inserted above");
            let (mut w, mut g) = (view(&gpu, &p.value)?, view(&gpu, &p.grad)?);
            let wd = if d.role == ParamRole::Weight { optim.wd as f32 } else { 0.0 };
            let lr32 = lr as f32;
            match c.name {
                OptimizerKind::Sgd => {
                    let mu = c.momentum as f32;
                    self.ops.sgd_update(
                        &mut w,
                        &mut g,
                        &mut st.m,
                        n,
                        (lr32, mu, wd),
                        !st.started,
                        c.nesterov,
                    )?;
                    st.started = true;
                }
                OptimizerKind::Adamw => {
                    let (b1, b2) = (c.betas[0], c.betas[1]);
                    let bc1 = 1.0 - b1.powi(optim.t as i32);
                    let bc2 = 1.0 - b2.powi(optim.t as i32);
                    let step = (lr / bc1) as f32;
                    let bc2s = bc2.sqrt() as f32;
                    let v = st.v.as_mut().expect("AdamW moments");
                    self.ops.adamw_update(
                        &mut w,
                        &mut g,
                        (&mut st.m, v),
                        n,
                        (lr32, wd),
                        (b1 as f32, b2 as f32, c.eps as f32),
                        (step, bc2s),
                    )?;
                }
                OptimizerKind::Lars => {
                    anyhow::bail!("LARS runs on the host (DeviceOptim::handles)")
                }
            }
        }
        Ok(())
    }

    /// The EMA of a target network: each trained parameter `target := τ·target + (1 − τ)·online`.
    pub fn ema(
        &self,
        descs: &[ParamDesc],
        target: &[DeviceParam],
        online: &[DeviceParam],
        tau: f64,
    ) -> Result<()> {
        let gpu = self.ops.gpu().clone();
        let (t, o) = (tau as f32, (1.0 - tau) as f32);
        for ((d, tp), op) in descs.iter().zip(target).zip(online) {
            if matches!(d.role, ParamRole::Weight | ParamRole::NoDecay) {
                let mut tv = view(&gpu, &tp.value)?;
                let ov = view(&gpu, &op.value)?;
                self.ops.ema(&mut tv, &ov, tp.value.len(), (t, o))?;
            }
        }
        Ok(())
    }

    /// Writes the moments into the host's optimizer state (for a checkpoint).
    pub fn to_host(&self, state: &mut BTreeMap<String, State>) -> Result<()> {
        let gpu = self.ops.gpu();
        for (name, st) in &self.moments {
            let e = state.entry(name.clone()).or_default();
            // an SGD buffer that holds no step yet is saved as none, as the host's would be
            e.m =
                if st.started || st.v.is_some() { gpu.download(&st.m, st.n)? } else { Vec::new() };
            e.v = match &st.v {
                Some(v) => gpu.download(v, st.n)?,
                None => Vec::new(),
            };
        }
        Ok(())
    }

    /// Takes the host's optimizer state (after a checkpoint was read) for names under
    /// `prefix.`; moments not in it start from zero.
    pub fn from_host(&mut self, state: &BTreeMap<String, State>, prefix: &str) -> Result<()> {
        self.moments.clear();
        let gpu = self.ops.gpu().clone();
        for (name, st) in state {
            if !name.starts_with(&format!("{prefix}.")) || st.m.is_empty() {
                continue;
            }
            let m = gpu.upload(&st.m)?;
            let v = if st.v.is_empty() { None } else { Some(gpu.upload(&st.v)?) };
            self.moments.insert(name.clone(), Moments { n: st.m.len(), m, v, started: true });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The update kernels run on the CPU (`latent_cuda::emulate`) against [`Optimizer::update`]:
    //! the same f32 operations in the same order, so the same bits.
    use super::*;
    use latent_cuda::emulate::random as data;
    use latent_cuda::emulate::Emulated;
    use latent_cuda::kernels::{grid, ELEMENTWISE};

    fn optimizer(name: OptimizerKind, nesterov: bool) -> Optimizer {
        let cfg =
            OptimConfig { name, momentum: 0.9, nesterov, weight_decay: 0.05, ..Default::default() };
        Optimizer::new(cfg).unwrap()
    }

    type Sgd =
        unsafe extern "C" fn(u32, u32, *mut f32, *mut f32, *mut f32, i32, f32, f32, f32, i32, i32);
    type Adam = unsafe extern "C" fn(
        u32,
        u32,
        *mut f32,
        *mut f32,
        *mut f32,
        *mut f32,
        i32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
    );

    #[test]
    fn sgd_on_the_device_is_the_hosts_bit_for_bit() {
        let k = Emulated::compile(ELEMENTWISE).unwrap();
        let sgd = unsafe { k.get::<Sgd>("sgd_update") }.unwrap();
        let n = 300;
        let g = grid(n);
        for nesterov in [false, true] {
            for role in [ParamRole::Weight, ParamRole::NoDecay] {
                let mut host = optimizer(OptimizerKind::Sgd, nesterov);
                let (mut w_host, mut w_dev) = (data(n, 1), data(n, 1));
                let mut m = vec![0f32; n];
                for step in 0..3 {
                    let grad = data(n, 10 + step);
                    host.begin_step();
                    host.update("p", role, &mut w_host, &grad, 0.1);
                    let wd = if role == ParamRole::Weight { host.wd as f32 } else { 0.0 };
                    let mut gd = grad.clone();
                    unsafe {
                        sgd(
                            g.grid_dim.0,
                            g.block_dim.0,
                            w_dev.as_mut_ptr(),
                            gd.as_mut_ptr(),
                            m.as_mut_ptr(),
                            n as i32,
                            0.1,
                            0.9,
                            wd,
                            (step == 0) as i32,
                            nesterov as i32,
                        )
                    };
                    assert_eq!(w_dev, w_host, "nesterov {nesterov}, {role:?}, step {step}");
                    assert_eq!(m, host.state["p"].m, "momentum, step {step}");
                    assert!(gd.iter().all(|&x| x == 0.0), "the gradient is zeroed");
                }
            }
        }
    }

    #[test]
    fn adamw_and_the_ema_on_the_device_are_the_hosts_bit_for_bit() {
        let k = Emulated::compile(ELEMENTWISE).unwrap();
        let adam = unsafe { k.get::<Adam>("adamw_update") }.unwrap();
        let n = 300;
        let g = grid(n);
        let mut host = optimizer(OptimizerKind::Adamw, false);
        let (mut w_host, mut w_dev) = (data(n, 2), data(n, 2));
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let c = host.cfg.clone();
        for step in 0..3 {
            let grad = data(n, 20 + step);
            host.begin_step();
            host.update("p", ParamRole::Weight, &mut w_host, &grad, 0.01);
            let (b1, b2) = (c.betas[0], c.betas[1]);
            let st = (0.01 / (1.0 - b1.powi(host.t as i32))) as f32;
            let bc2s = (1.0 - b2.powi(host.t as i32)).sqrt() as f32;
            let mut gd = grad.clone();
            unsafe {
                adam(
                    g.grid_dim.0,
                    g.block_dim.0,
                    w_dev.as_mut_ptr(),
                    gd.as_mut_ptr(),
                    m.as_mut_ptr(),
                    v.as_mut_ptr(),
                    n as i32,
                    0.01,
                    host.wd as f32,
                    b1 as f32,
                    b2 as f32,
                    c.eps as f32,
                    st,
                    bc2s,
                )
            };
            assert_eq!(w_dev, w_host, "step {step}");
            assert_eq!((&m, &v), (&host.state["p"].m, &host.state["p"].v), "moments, step {step}");
        }
        // the EMA, as learner.rs's
        type Ema = unsafe extern "C" fn(u32, u32, *mut f32, *const f32, i32, f32, f32);
        let ema = unsafe { k.get::<Ema>("ema_update") }.unwrap();
        let (online, mut t_dev) = (data(n, 3), data(n, 4));
        let tau = 0.996f64;
        let want: Vec<f32> = t_dev
            .iter()
            .zip(&online)
            .map(|(a, b)| tau as f32 * a + (1.0 - tau) as f32 * b)
            .collect();
        unsafe {
            ema(
                g.grid_dim.0,
                g.block_dim.0,
                t_dev.as_mut_ptr(),
                online.as_ptr(),
                n as i32,
                tau as f32,
                (1.0 - tau) as f32,
            )
        };
        assert_eq!(t_dev, want);
    }
}
