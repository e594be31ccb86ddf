//! # latent-sdk: the kit to write `latent` plugins with
//!
//! `latent` loads objectives, encoders and augmentations from separately compiled libraries.
//! Two crates serve them:
//!
//! - `latent-abi`, re-exported here as [`abi`]: the stable contract and nothing else.
//!   `#[repr(C)]` types checked by abi_stable at load time: tensors as plain descriptors
//!   ([`abi::TensorDesc`]), manifests, parameter descriptors, errors, the three plugin-object
//!   traits and the prefix-type root module ([`abi::PluginLib`]). Nothing Rust-specific (no
//!   dfdx type) crosses, and that crate compiles no numeric code.
//! - this crate: [`plugin`], [`autodiff`], [`check`] and [`kit`], compiled into each plugin,
//!   never crossing. [`plugin`] holds the traits an author implements — forward-only
//!   [`plugin::Objective`] and [`plugin::Encoder`] (exported as [`plugin::Taped`]), and the
//!   low-level [`plugin::ObjectivePlugin`], [`plugin::EncoderPlugin`],
//!   [`plugin::AugmentationPlugin`] — and the wrappers that catch panics at the boundary;
//!   [`autodiff`] is the tape on dfdx ([`autodiff::Graph`], [`autodiff::Var`], operations,
//!   [`autodiff::nn::Head`] and layers); [`check`] runs finite-difference and determinism
//!   checks through a plugin's ABI object (`latent check-plugin --deep`); [`kit`] holds the
//!   fast runtime-shaped kernels with hand-written backward ([`kit::Conv2d`],
//!   [`kit::BatchNorm`], pooling: custom ops on the tape, and the `resnet` plugin's layers),
//!   named parameters ([`kit::Param`], [`kit::Init`]) and their finite-difference checks.
//!
//! An author writes plain Rust against [`plugin`] and [`autodiff`] and never touches [`abi`]:
//! one line, [`export_plugins!`], turns the plugin types into the library's root module.
//! `latent new-plugin --kind objective|encoder|augmentation NAME` writes a crate that builds,
//! loads and trains as it is; `docs/TUTORIAL.md` walks through it, and `examples/` holds one
//! complete plugin of each kind (the spectral contrastive loss, a small CNN, cutout).
//!
//! # A plugin in one file
//! An objective is its forward maths: the SDK traces the views, runs backward, returns
//! d loss / d views to the host and fills the gradients of the parameters on the tape.
//! ```
//! use latent_sdk::prelude::*;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! #[serde(default, deny_unknown_fields)]       // omitted keys: defaults; unknown keys: refused
//! pub struct Config { pub temperature: f32 }
//!
//! /// InfoNCE between the two views, no head.
//! pub struct MyLoss { cfg: Config }
//! impl Plugin for MyLoss {
//!     type Config = Config;
//!     const NAME: &'static str = "my-loss";
//!     const DESCRIPTION: &'static str = "what it does, in one line";
//!     fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> {
//!         ensure!(cfg.temperature > 0.0, "temperature must be positive, got {}", cfg.temperature);
//!         Ok(MyLoss { cfg })
//!     }
//! }
//! impl Module for MyLoss { fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {} }
//! impl Objective for MyLoss {
//!     fn forward(&mut self, _g: &Graph, b: &Views) -> anyhow::Result<Loss> {
//!         ensure!(b.views.len() == 2, "my-loss needs 2 views, got {}", b.views.len());
//!         let logits = b.views[0].cosine_matrix(&b.views[1]) / self.cfg.temperature;
//!         let diagonal: Vec<usize> = (0..logits.rows()).collect();
//!         let loss = cross_entropy(&logits, &diagonal);
//!         Ok(Loss::new(loss))
//!     }
//! }
//! latent_sdk::export_plugins!(objectives: [MyLoss], encoders: [], augmentations: []);
//! # fn main() {
//! # use latent_sdk::kit::gradcheck::random;
//! # let mut obj = latent_sdk::plugin::new_objective::<MyLoss>(abi_stable::std_types::RStr::from_str(r#"{"temperature": 0.5}"#), &Context::default()).unwrap();
//! # latent_sdk::check::assert_objective_gradients(&mut obj, vec![random(&[4, 3], 1), random(&[4, 3], 2)], vec![], vec![], 1e-2, 1e-2);
//! # }
//! ```
//! The crate is a `cdylib` (the library the host loads; add `rlib` for unit tests) depending
//! on `latent-sdk`, `abi_stable` (the export macro names it), `serde` and `anyhow`. One
//! library may export any number of plugins of each kind; plugin names are unique across
//! everything the host loads.
//!
//! # The contract of each kind
//!
//! Every plugin implements [`plugin::Plugin`]: a unique `NAME` (what configs say), a one-line
//! `DESCRIPTION`, a serde `Config` with a `Default` (the manifest publishes the default as
//! JSON; `latent plugins --json` shows it), and `new(config, ctx)`, which validates the config
//! and returns an error a user can act on. [`abi::Context`] carries the device (the CPU
//! today), the seed for initialisation and a thread hint (the host sends 0, the plugin's
//! choice).
//!
//! ## Encoder ([`plugin::EncoderPlugin`])
//! Caffe-style, images `[N, C, H, W]` to features `[N, D]`:
//! 1. `out_dim([C, H, W])` is called once, before any forward, with the shape of the views.
//!    Build shape-dependent layers here; refuse shapes that cannot work. The answer `D` must
//!    not change afterwards.
//! 2. `forward(images, train)` returns `[N, D]` with finite values (the host checks both).
//!    With `train = true` keep what backward needs (kit layers do); with `train = false`
//!    (evaluation, feature extraction) change no state: batch-norm uses its running statistics.
//!    The host sends all views of a step as one batch, so batch statistics span the views.
//! 3. `backward(d loss / d features)` follows the last training forward and **accumulates**
//!    parameter gradients (`+=`). It returns nothing: there is nothing upstream of an encoder.
//!
//! ## Objective ([`plugin::Objective`], or the low-level [`plugin::ObjectivePlugin`])
//! With [`plugin::Objective`], `forward(g, Views)` sees the same inputs as traced
//! [`autodiff::Var`]s and returns a [`plugin::Loss`]; the SDK does the rest of what follows.
//! The low-level `compute(ObjectiveBatch)` gets the online encoder output of each view (`views[v]`, `[B, D]`,
//! row `i` of every view is sample `i`), plus `targets` (the EMA encoder's output, only with
//! `NEEDS_TARGET = true`) and `labels` (one per sample, only with `NEEDS_LABELS = true`; the
//! host then samples class-balanced batches), `step`, `total_steps` and `train`. It runs its
//! heads, the loss and their backward in that one call, and returns
//! [`plugin::ObjectiveResult`]: a finite `loss`; `grads`, one `d loss / d views[v]` per view
//! with the view's shape (empty when `train` is false); named `metrics` (logged in
//! `metrics.jsonl`); and `target_momentum`, the EMA rate τ the host applies to the target
//! network after this step (1.0 when there is none). Head parameters accumulate their
//! gradients like an encoder's.
//!
//! ## Augmentation ([`plugin::AugmentationPlugin`])
//! `output_shape([C, H, W])` gives a view's shape; `apply(image, [C, H, W], seed)` transforms
//! one image (values in [0, 1]) and returns `C'·H'·W'` values. **A view is a pure function of
//! (image, seed)**: the same inputs give the same output on any thread, in any order, so runs
//! are reproducible whatever the number of loader threads. Draw all randomness from a
//! generator seeded with `seed`; keep no state between calls. Each `[[augment]]` entry of an
//! experiment is one view.
//!
//! ## Parameters (encoders and objectives, through [`kit::Module`])
//! `visit_params` visits every [`kit::Param`] in the same order every time; that order is the
//! order of `params`, `read_params`, `write_params` and `take_grads` at the boundary. Names are
//! dotted and unique within the plugin (build them with [`kit::Init::pp`]); checkpoints are
//! keyed by them. Roles ([`abi::ParamRole`]) tell the host what to do: `Weight` (trained, weight
//! decay, LARS adaptation), `NoDecay` (trained, neither: biases, batch-norm affine), `Buffer`
//! (not trained, checkpointed: running statistics), `Target` (the EMA of the online parameter
//! named in `ema_of`; see [`kit::Param::target_copy`]). The host reads the gradients with
//! `take_grads` (which zeroes them), runs its one optimizer, and writes the values back: a
//! plugin never updates its own trained parameters.
//!
//! # Ownership and lifetime of buffers
//! - **Tensors cross by value; the receiver owns them.** The host gives a plugin its inputs
//!   ([`abi::TensorDesc`]: shape, `RVec<f32>`, device) and never looks at them again; what the
//!   plugin returns belongs to the host. No reference into the other side's memory survives a
//!   call, so there is nothing to keep alive and nothing to free by hand. An `RVec` carries its
//!   own deallocator, so a buffer allocated in the plugin is freed correctly by the host (and
//!   back); converting one to a `Vec` on the other side may copy it. The wrappers do these
//!   conversions: an author sees owned [`kit::Tensor`]s.
//! - Borrowed arguments (the config string, the [`abi::Context`]) live for the call only: copy
//!   what you need (the seed, the thread hint) into the plugin.
//! - A plugin owns everything it keeps between calls (layers, caches, running statistics) in
//!   its own struct. The host owns the instance and drops it (running the plugin's `Drop`
//!   inside the plugin's library); libraries stay loaded until the process exits.
//!
//! # Threads
//! - **Encoders and objectives** take `&mut self` and are `Send`, not `Sync`: the host calls an
//!   instance from one thread at a time, though not always the same thread, so do not rely on
//!   thread-local state between calls. Inside a call a plugin may use as many threads as it
//!   likes (the kit's kernels use rayon); [`abi::Context::threads`] is a hint.
//! - **Augmentations** are `Send + Sync` and take `&self`: one instance is shared by all
//!   loader threads and `apply` runs concurrently. Interior mutability needs synchronisation,
//!   and would break purity anyway.
//!
//! # Errors and panics
//! - Author methods return `anyhow::Result`. The wrappers turn an error into an
//!   [`abi::PluginError`] naming the plugin and the call, with the whole context chain
//!   (`{e:#}`): [`abi::ErrorKind::Config`] from `new` (and for unparsable or unknown config
//!   keys), [`abi::ErrorKind::Input`] for inputs the wrapper refuses (bad shapes, another
//!   device), [`abi::ErrorKind::Failed`] for errors from the plugin's own code. The host prints
//!   them as `plugin 'x' failed in `compute`: ...` and, during training, names the step and the
//!   last good checkpoint. Write messages a user can act on: lower case, with the offending
//!   value.
//! - **Panics** never cross the boundary (unwinding through `extern "C"` would abort the
//!   process): every call runs under `catch_unwind` in the wrapper ([`plugin::guard`]), and a
//!   panic becomes [`abi::ErrorKind::Panicked`], `plugin 'x' panicked: <message>`. The instance
//!   is then **poisoned**: its state may be half-updated, so every later call answers
//!   [`abi::ErrorKind::Poisoned`] without running plugin code. A new instance works normally.
//!   Plugins must be built with `panic = "unwind"` (the default); with `panic = "abort"` a
//!   panic kills the host.
//! - Non-finite losses, features or gradients are refused by the host with the plugin's name.
//!
//! # Versioning
//! Each library records the ABI version it was built with ([`abi::ABI_VERSION`], the version
//! of the `latent-abi` crate this SDK depends on). At load the host checks it with abi_stable's rules (the same major version; for 0.x the
//! same major and minor), then the layout of every type reachable from the root module; a
//! refused library is reported by `latent plugins` with the reason and never called.
//!
//! Two kinds of compatibility are kept apart:
//! - **Binary (ABI)**: does a compiled plugin keep loading?
//!   - *Compatible* (a minor release; a patch release while 0.x): new kit layers and helpers;
//!     fixes inside the kit or the wrappers (each plugin carries its own copy, so it changes
//!     only when rebuilt); a field added *below* the last prefix field of [`abi::PluginLib`], or
//!     a method added below the last prefix method of a plugin-object trait (an older plugin
//!     then lacks it, and the host must cope with its absence).
//!   - *Breaking* (a new major version; a new minor while 0.x): adding, removing, reordering
//!     or retyping a field of any type that crosses ([`abi::TensorDesc`], [`abi::Manifest`],
//!     [`abi::ParamDesc`], [`abi::Metric`], [`abi::ObjectiveInput`], [`abi::ObjectiveOutput`],
//!     [`abi::Context`], [`abi::PluginError`]); adding a variant to a crossing enum
//!     ([`abi::ErrorKind`], [`abi::ParamRole`], [`abi::PluginKind`], [`abi::DeviceKind`]);
//!     changing a method's signature or the prefix fields of the root module; and changing
//!     the *meaning* of anything that crosses even with the same layout (shape conventions,
//!     the sign or scaling of gradients, what `target_momentum` means, accumulate-versus-
//!     overwrite of gradients).
//! - **Source (API)**: does a plugin's code keep compiling? The author traits, the prelude
//!   and the kit follow Cargo's semver: removing or changing a public item, or adding a
//!   required trait item, is breaking and waits for the next breaking version.
//!
//! After a breaking release, plugins must be rebuilt against the new SDK; the host says so by
//! name instead of loading them.

#![deny(missing_docs)]

/// The stable ABI (the `latent-abi` crate), re-exported: the types that cross.
pub use latent_abi as abi;
pub mod autodiff;
pub mod check;
pub mod kit;
pub mod metrics;
pub mod plugin;
pub mod schedule;
pub mod testing;

/// Everything a plugin file usually needs.
pub mod prelude {
    pub use crate::abi::{
        Collective, Context, DeviceBinding, DeviceParam, DeviceTensorDesc, EpochInfo, ParamRole,
    };
    pub use crate::autodiff::nn::{Activation, Block, DinoHead, Head};
    pub use crate::autodiff::ops::{cat_rows, cross_entropy};
    pub use crate::autodiff::{Graph, Var};
    pub use crate::kit::{BatchNorm, Init, Layer, Linear, Module, Param, Relu, Sequential, Tensor};
    pub use crate::plugin::{
        AugmentationPlugin, Encoder, EncoderPlugin, Loss, Objective, ObjectiveBatch,
        ObjectivePlugin, ObjectiveResult, Plugin, Taped, Views,
    };
    pub use anyhow::{bail, ensure, Context as _};
    pub use serde::{Deserialize, Serialize};
}

pub use anyhow;
pub use serde;
pub use serde_json;
