//! A plugin library as one built before ABI 0.3.1's device calls: latent's root module and an
//! `EncoderAbi` object, written against `latent-abi` alone, and no `DeviceExport` beside them.
//! The host must load it, build its encoder through `new_encoder`, and run it on the CPU
//! (tests/tests/device.rs). Its one encoder, `flat`, maps each image to (mean, max) of its
//! values and has no parameters.
#![allow(non_local_definitions)]

use abi_stable::export_root_module;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RStr, RVec};
use latent_abi::*;

struct Flat;

impl EncoderAbi for Flat {
    fn out_dim(&mut self, _input: RVec<u64>) -> PResult<u64> {
        ROk(2)
    }
    fn forward(&mut self, images: TensorDesc, _train: bool) -> PResult<TensorDesc> {
        let n = images.shape[0] as usize;
        let per = images.data.len() / n.max(1);
        let mut out = RVec::with_capacity(2 * n);
        for img in images.data.chunks(per.max(1)) {
            out.push(img.iter().sum::<f32>() / per as f32);
            out.push(img.iter().cloned().fold(f32::MIN, f32::max));
        }
        ROk(TensorDesc { shape: vec![n as u64, 2].into(), data: out, device: Device::CPU })
    }
    fn backward(&mut self, _grad: TensorDesc) -> PResult<()> {
        ROk(())
    }
    fn params(&mut self) -> PResult<RVec<ParamDesc>> {
        ROk(RVec::new())
    }
    fn read_params(&mut self) -> PResult<RVec<TensorDesc>> {
        ROk(RVec::new())
    }
    fn write_params(&mut self, _values: RVec<TensorDesc>) -> PResult<()> {
        ROk(())
    }
    fn take_grads(&mut self) -> PResult<RVec<TensorDesc>> {
        ROk(RVec::new())
    }
}

extern "C" fn manifests() -> PResult<RVec<Manifest>> {
    ROk(vec![Manifest {
        name: "flat".into(),
        kind: PluginKind::Encoder,
        version: "0.1.0".into(),
        description: "(mean, max) of each image; a library without device calls (test only)".into(),
        default_config: "{}".into(),
        needs_labels: false,
        needs_target: false,
    }]
    .into())
}

fn missing(kind: &str, name: RStr<'_>) -> PluginError {
    PluginError::new(ErrorKind::NotFound, name.as_str(), "new", format!("no {kind} here"))
}

extern "C" fn new_objective(n: RStr<'_>, _: RStr<'_>, _: &Context) -> PResult<ObjectiveBox> {
    RErr(missing("objective", n))
}

extern "C" fn new_encoder(n: RStr<'_>, _: RStr<'_>, _: &Context) -> PResult<EncoderBox> {
    if n.as_str() == "flat" {
        ROk(EncoderAbi_TO::from_value(Flat, TD_Opaque))
    } else {
        RErr(missing("encoder", n))
    }
}

extern "C" fn new_augmentation(n: RStr<'_>, _: RStr<'_>, _: &Context) -> PResult<AugmentationBox> {
    RErr(missing("augmentation", n))
}

/// The root module, as every plugin library has it.
#[export_root_module]
pub fn root() -> PluginLibRef {
    PluginLib {
        abi_version: RStr::from_str(ABI_VERSION),
        manifests,
        new_objective,
        new_encoder,
        new_augmentation,
    }
    .leak_into_prefix()
}
