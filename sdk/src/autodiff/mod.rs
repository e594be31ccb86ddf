//! Automatic differentiation for plugin authors: write the forward maths, get the gradients.
//!
//! A [`Graph`] records every operation on its [`Var`]s on one dfdx tape (dfdx 0.13, runtime
//! shapes `(usize, usize)`, CPU). An objective's `forward` turns host tensors into traced leaves
//! ([`Graph::input`]), its named [`Param`]s into tensors on the same tape ([`Graph::param`]),
//! returns a scalar loss, and the SDK runs backward: d loss / d views go back to the host, and
//! each parameter's gradient is added to the `Param` of the same name
//! ([`Gradients::add_to_params`]).
//!
//! ```
//! use latent_sdk::autodiff::Graph;
//! use latent_sdk::kit::Tensor;
//!
//! let g = Graph::new(true);
//! let x = g.input(&Tensor::new([2, 3], vec![1., 2., 3., 4., 5., 6.])).unwrap();
//! let loss = x.square().mean();           // (1/6) Σ x²
//! let mut grads = g.backward(&loss).unwrap();
//! let dx = grads.of(&x);                  // x / 3
//! assert!((dx[5] - 2.0).abs() < 1e-6);
//! ```
//!
//! Every `Var` is 2-d, `[rows, cols]`: a scalar is `[1, 1]`, a parameter of shape `[C]` is the
//! row `[1, C]`, a per-row quantity is the column `[N, 1]`. Element-wise operations broadcast a
//! `[1, C]` row, an `[N, 1]` column or a `[1, 1]` scalar against `[N, C]`. Images are `[N, C·H·W]`
//! with the `[C, H, W]` passed beside them ([`ops::conv2d`]).
//!
//! # What the SDK absorbs, so authors never meet it
//! - dfdx panics, without shapes, on mismatched shapes (also in its `try_*` calls). Every
//!   operation here checks shapes first and fails with both shapes and the operation named; the
//!   plugin wrapper turns that into a `PluginError` naming the plugin and the call.
//! - An operation whose two operands are the same tensor (`u · uᵀ`, `x * x`) panics in dfdx's
//!   backward: the operands share one gradient slot. The SDK copies one side first.
//! - `Gradients::get` panics for a tensor that took no part in the graph: [`Gradients::of`]
//!   returns zeros instead.
//! - Reductions and broadcasts over runtime shapes need their axes named: done inside each op.
//! - A traced tensor must be dfdx's left operand: every operand here is traced.
//! - dfdx's `normalize` is mean/std; [`Var::l2_normalize`] is `F.normalize` and clamps the
//!   squared norm *before* the square root, so an all-zero row has a zero gradient, not NaN.

pub mod attention;
pub mod gradcheck;
pub mod nn;
pub mod ops;
#[cfg(test)]
mod tests;

use crate::kit::{Module, Param, Tensor};
use dfdx::prelude::{Backward, Cpu, NoneTape, OwnedTape, PutTape, SplitTape, SumTo, TensorFromVec};
use dfdx::shapes::HasShape;
use dfdx::tensor::{Merge, Tape};
use std::cell::RefCell;
use std::rc::Rc;

pub use attention::attention;
pub use ops::conv2d;

type Tp = OwnedTape<f32, Cpu>;
/// A runtime-shaped 2-d dfdx tensor without a tape.
pub(crate) type T2 = dfdx::tensor::Tensor<(usize, usize), f32, Cpu, NoneTape>;
/// The same with a tape.
pub(crate) type T2t = dfdx::tensor::Tensor<(usize, usize), f32, Cpu, Tp>;

thread_local! {
    /// How many [`catch_op_errors`] calls this thread is inside.
    static CATCHING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// An error in the forward maths (a shape mismatch): inside [`catch_op_errors`] (the plugin
/// wrapper runs every forward there) it unwinds to it without the panic hook, so nothing is
/// printed twice, and becomes an error naming the plugin and the call. Outside (a plugin's own
/// unit test calling its loss directly) it is an ordinary panic with the message.
pub(crate) fn fail(msg: String) -> ! {
    if CATCHING.with(|c| c.get()) > 0 {
        std::panic::resume_unwind(Box::new(OpError(msg)))
    }
    panic!("{msg}")
}

/// The unwind payload of a failed operation (see [`catch_op_errors`]).
#[derive(Debug)]
pub struct OpError(pub String);

/// Runs `f`; an operation that failed inside it (a shape mismatch, a backward run twice)
/// becomes an error with its message. Any other panic goes on unwinding.
pub fn catch_op_errors<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    match r {
        Ok(r) => r,
        Err(p) => match p.downcast::<OpError>() {
            Ok(e) => Err(anyhow::anyhow!("{}", e.0)),
            Err(p) => std::panic::resume_unwind(p),
        },
    }
}

struct Inner {
    dev: Cpu,
    tape: RefCell<Option<Tp>>,
    params: RefCell<Vec<(String, T2, u64)>>,
    train: bool,
    grad: bool,
}

/// One forward pass: the tape, the device and the parameters taken onto it.
///
/// Cheap to clone (a shared handle). Not `Send`: a graph lives inside one plugin call.
#[derive(Clone)]
pub struct Graph(Rc<Inner>);

/// A 2-d tensor on a [`Graph`]. Operations on it are recorded for backward.
#[derive(Clone)]
pub struct Var {
    pub(crate) t: T2,
    pub(crate) g: Graph,
    /// Equal for two Vars exactly when they share dfdx's tensor id (one gradient slot).
    pub(crate) id: u64,
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var{:?}", self.dims())
    }
}

impl Graph {
    /// A graph that records operations for backward; `train` is what layers read (batch-norm
    /// uses batch statistics and updates its running ones in training).
    pub fn new(train: bool) -> Graph {
        Graph::make(train, true)
    }

    /// A graph that records nothing (a target network, evaluation). Its `Var`s act as constants
    /// when combined with those of a recording graph.
    pub fn no_grad(train: bool) -> Graph {
        Graph::make(train, false)
    }

    fn make(train: bool, grad: bool) -> Graph {
        Graph(Rc::new(Inner {
            dev: Cpu::default(),
            tape: RefCell::new(Some(Tp::default())),
            params: RefCell::new(Vec::new()),
            train,
            grad,
        }))
    }

    /// Training mode.
    pub fn train(&self) -> bool {
        self.0.train
    }

    /// True when operations are recorded.
    pub fn records(&self) -> bool {
        self.0.grad
    }

    fn same(&self, other: &Graph) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// A `Var` from values; `what` names it in errors.
    pub fn from_vec(&self, rows: usize, cols: usize, data: Vec<f32>) -> Var {
        if rows * cols != data.len() {
            fail(format!(
                "a [{rows}, {cols}] tensor needs {} values, got {}",
                rows * cols,
                data.len()
            ));
        }
        Var { t: self.0.dev.tensor_from_vec(data, (rows, cols)), g: self.clone(), id: next_id() }
    }

    /// A host tensor as a traced leaf: `[N, ...]` becomes `[N, product of the rest]`. Its
    /// gradient is [`Gradients::of`] after backward.
    pub fn input(&self, t: &Tensor) -> anyhow::Result<Var> {
        let (r, c) = as_2d(&t.shape)?;
        Ok(self.from_vec(r, c, t.data.clone()))
    }

    /// A constant (no gradient is read from it): same as [`Graph::input`].
    pub fn constant(&self, t: &Tensor) -> anyhow::Result<Var> {
        self.input(t)
    }

    /// A `[1, 1]` constant.
    pub fn scalar(&self, v: f32) -> Var {
        self.from_vec(1, 1, vec![v])
    }

    /// A named parameter on the tape: `[out, in]` stays 2-d, `[C]` becomes the row `[1, C]`,
    /// higher ranks `[d0, d1·d2·…]`. Taking the same name twice gives the same tensor, so a
    /// head applied to two views sums both gradients into one parameter.
    pub fn param(&self, p: &Param) -> Var {
        if let Some((_, t, id)) = self.0.params.borrow().iter().find(|(n, _, _)| *n == p.name) {
            return Var { t: t.clone(), g: self.clone(), id: *id };
        }
        let (r, c) = match p.shape[..] {
            [c] => (1, c),
            _ => as_2d(&p.shape).unwrap_or_else(|e| fail(format!("parameter {}: {e}", p.name))),
        };
        let v = self.from_vec(r, c, p.value.clone());
        self.0.params.borrow_mut().push((p.name.clone(), v.t.clone(), v.id));
        v
    }

    /// Runs backward from the `[1, 1]` `loss`. The tape is consumed: a graph runs backward once.
    pub fn backward(&self, loss: &Var) -> anyhow::Result<Gradients> {
        anyhow::ensure!(self.records(), "backward on a graph made with Graph::no_grad");
        anyhow::ensure!(loss.g.same(self), "backward of a loss from another graph");
        anyhow::ensure!(
            loss.dims() == (1, 1),
            "the loss must be a scalar [1, 1], got {:?}",
            loss.dims()
        );
        let tape = self
            .0
            .tape
            .borrow_mut()
            .take()
            .ok_or_else(|| anyhow::anyhow!("backward ran twice on one graph"))?;
        let l = loss.t.clone().put_tape(tape).sum::<(), _>();
        let grads = l.backward();
        Ok(Gradients { grads, params: self.0.params.borrow().clone() })
    }

    /// Runs backward of `Σ y ⊙ dy` for a given `dy` (an encoder's backward from the host's
    /// d loss / d features).
    pub fn backward_from(&self, y: &Var, dy: &Tensor) -> anyhow::Result<Gradients> {
        let (r, c) = as_2d(&dy.shape)?;
        anyhow::ensure!(
            (r, c) == y.dims(),
            "gradient of shape {:?} for an output of shape {:?}",
            dy.shape,
            y.dims()
        );
        let d = self.from_vec(r, c, dy.data.clone());
        self.backward(&(y * &d).sum())
    }

    /// Records the tape of `y` on this graph and wraps it.
    pub(crate) fn record(&self, y: T2t) -> Var {
        let (t, tape) = y.split_tape();
        if self.0.grad {
            self.merge_tape(tape);
        }
        Var { t, g: self.clone(), id: next_id() }
    }

    /// Adds `tape`'s backward operations to this graph's tape.
    fn merge_tape(&self, tape: Tp) {
        let mut slot = self.0.tape.borrow_mut();
        match slot.take() {
            Some(old) => *slot = Some(old.merge(tape)),
            None => fail("an operation after backward on the same graph".into()),
        }
    }

    /// Adds a hand-written operation: `out` is computed from `inputs`' values by the caller,
    /// and `backward(dy, dxs)` adds d loss / d input `k` into `dxs[k]` (each the length of that
    /// input) given d loss / d out. This is how the kit's fast kernels enter the tape.
    pub fn custom<F>(
        &self,
        inputs: &[&Var],
        rows: usize,
        cols: usize,
        out: Vec<f32>,
        backward: F,
    ) -> Var
    where
        F: 'static + FnOnce(&[f32], &mut [Vec<f32>]),
    {
        let g = pick_graph(inputs).unwrap_or_else(|| self.clone());
        let y = g.from_vec(rows, cols, out);
        if !g.records() {
            return y;
        }
        let ghosts: Vec<_> = inputs.iter().map(|v| v.t.ghost()).collect();
        let lens: Vec<usize> = inputs.iter().map(|v| v.len()).collect();
        let yg = y.t.ghost();
        let mut tape = Tp::default();
        tape.add_backward_op(move |grads| {
            let dy = grads.get_or_alloc_mut(&yg)?.to_vec();
            let mut dxs: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n]).collect();
            backward(&dy, &mut dxs);
            for (gh, dx) in ghosts.iter().zip(&dxs) {
                let gx = grads.get_or_alloc_mut(gh)?;
                gx.iter_mut().zip(dx).for_each(|(a, b)| *a += b);
            }
            Ok(())
        });
        g.merge_tape(tape);
        y
    }
}

/// The graph an operation over `vars` records on: the recording one (all recording operands
/// must share it); with none recording, the first operand's.
pub(crate) fn pick_graph(vars: &[&Var]) -> Option<Graph> {
    let mut rec: Option<&Graph> = None;
    for v in vars {
        if v.g.records() {
            match rec {
                Some(g) if !g.same(&v.g) => {
                    fail("an operation on Vars of two different graphs".into())
                }
                _ => rec = Some(&v.g),
            }
        }
    }
    rec.cloned().or_else(|| vars.first().map(|v| v.g.clone()))
}

fn as_2d(shape: &[usize]) -> anyhow::Result<(usize, usize)> {
    match shape {
        [] => Ok((1, 1)),
        [r] => Ok((*r, 1)),
        [r, rest @ ..] => Ok((*r, rest.iter().product())),
    }
}

/// The gradients of one backward.
pub struct Gradients {
    grads: dfdx::tensor::Gradients<f32, Cpu>,
    params: Vec<(String, T2, u64)>,
}

impl Gradients {
    /// d loss / d `v` (zeros if `v` took no part in the loss), row-major.
    pub fn of(&mut self, v: &Var) -> Vec<f32> {
        match self.grads.get_or_alloc_mut(&v.t) {
            Ok(g) => g.to_vec(),
            Err(_) => vec![0.0; v.len()],
        }
    }

    /// d loss / d `v` as a kit tensor of `shape`.
    pub fn tensor(&mut self, v: &Var, shape: &[usize]) -> Tensor {
        Tensor::new(shape.to_vec(), self.of(v))
    }

    /// Adds each parameter's gradient into the `Param` of the same name in `m` (trainable ones
    /// only). Returns how many parameters received a gradient.
    pub fn add_to_params(&mut self, m: &mut (impl Module + ?Sized)) -> usize {
        let mut by_name: std::collections::HashMap<String, Vec<f32>> =
            std::collections::HashMap::new();
        let params = std::mem::take(&mut self.params);
        for (name, t, _) in &params {
            let g = self.grads.get_or_alloc_mut(t).map(|g| g.to_vec()).unwrap_or_default();
            by_name.insert(name.clone(), g);
        }
        let mut n = 0;
        m.visit_params(&mut |p| {
            if let Some(g) = by_name.get(&p.name) {
                if p.trainable() && g.len() == p.grad.len() {
                    p.grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                    n += 1;
                }
            }
        });
        self.params = params;
        n
    }
}

impl Var {
    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        *self.t.shape()
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.dims().0
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.dims().1
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.rows() * self.cols()
    }

    /// True when it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The graph it lives on.
    pub fn graph(&self) -> &Graph {
        &self.g
    }

    /// The values, row-major (off the tape: for metrics and tests).
    pub fn values(&self) -> Vec<f32> {
        // Every Var's tensor is contiguous, row-major and exactly its values (each op's output
        // is, and the ops keep it so: broadcasts and permutes are operands only), so its
        // storage is copied whole: dfdx's `as_vec` walks the strides one index at a time (13 %
        // of the SimCLR objective's samples).
        let mut v = vec![0.0; self.len()];
        self.t.copy_into(&mut v);
        debug_assert_eq!(v, self.t.as_vec(), "a Var whose tensor is not contiguous");
        v
    }

    /// The values as a kit tensor `[rows, cols]`.
    pub fn value(&self) -> Tensor {
        let (r, c) = self.dims();
        Tensor::new(vec![r, c], self.values())
    }

    /// The single value of a `[1, 1]` Var (a loss, a metric).
    pub fn item(&self) -> f64 {
        if self.dims() != (1, 1) {
            fail(format!("item() of a {:?} tensor: only [1, 1] has one value", self.dims()));
        }
        self.values()[0] as f64
    }

    /// The same values cut off from the tape (stop-gradient): nothing flows back through it.
    pub fn detach(&self) -> Var {
        let (r, c) = self.dims();
        self.g.from_vec(r, c, self.values())
    }

    /// The same values on a graph of their own that records nothing: for metrics, whose
    /// operations would otherwise join the tape, and run in its backward too, gradients that
    /// nothing reads (SimCLR's cosine matrix of 512 rows was a sixth of its objective's step).
    pub fn off_tape(&self) -> Var {
        let (r, c) = self.dims();
        Graph::no_grad(self.g.train()).from_vec(r, c, self.values())
    }

    /// With a tape, for a dfdx operation.
    pub(crate) fn traced(&self) -> T2t {
        self.t.retaped::<Tp>()
    }
}
