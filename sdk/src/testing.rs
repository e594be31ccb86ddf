//! Helpers for plugin tests against reference fixtures: reading the JSON a generator script
//! wrote (`floats`, `tensor`) and comparing with a tolerance relative to the reference's scale
//! (`assert_close`, `assert_scalar`). A failing comparison names the quantity and prints both.

use crate::kit::Tensor;
use serde_json::Value;

/// The numbers of a JSON array (panics, naming the value, when it is not one).
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array of numbers, got {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

/// A `[n, d]` tensor from a flat JSON array.
pub fn tensor(v: &Value, n: usize, d: usize) -> Tensor {
    let data: Vec<f32> = floats(v).iter().map(|&x| x as f32).collect();
    assert_eq!(
        data.len(),
        n * d,
        "a [{n}, {d}] tensor needs {} values, the fixture has {}",
        n * d,
        data.len()
    );
    Tensor::new(vec![n, d], data)
}

/// `max |got − want| / max |want|` below `tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_close_floor(what, got, want, tol, 1e-12)
}

/// As [`assert_close`], relative to at least `floor` (for values that are zero in exact
/// arithmetic, where f32 rounding leaves about 1e-7).
pub fn assert_close_floor(what: &str, got: &[f32], want: &[f64], tol: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max) / scale;
    assert!(err < tol, "{what}: relative error {err:.2e}\n got {got:?}\nwant {want:?}");
}

/// `|got − want| / |want|` below `tol`.
pub fn assert_scalar(what: &str, got: f64, want: f64, tol: f64) {
    let err = (got - want).abs() / want.abs().max(1e-12);
    assert!(err < tol, "{what}: got {got}, want {want} (relative error {err:.2e})");
}

/// Objective `P` built from a JSON config with initialisation seed `seed`, as the ABI object
/// the host calls (panics with the plugin's error when the config is refused).
pub fn objective<P: crate::plugin::ObjectivePlugin>(
    json: &str,
    seed: u64,
) -> crate::abi::ObjectiveBox {
    let ctx = crate::abi::Context { seed, ..Default::default() };
    match crate::plugin::new_objective::<P>(abi_stable::std_types::RStr::from_str(json), &ctx) {
        abi_stable::std_types::RResult::ROk(o) => o,
        abi_stable::std_types::RResult::RErr(e) => panic!("{}: {json}: {e}", P::NAME),
    }
}

/// Asserts that objective `P` refuses each config (JSON text) with an error that names the
/// plugin and contains the given text (the key, or serde's "unknown field `x`").
pub fn assert_refused<P: crate::plugin::ObjectivePlugin>(cases: &[(&str, &str)]) {
    for (json, want) in cases {
        let e = match crate::plugin::new_objective::<P>(
            abi_stable::std_types::RStr::from_str(json),
            &crate::abi::Context::default(),
        ) {
            abi_stable::std_types::RResult::RErr(e) => e.to_string(),
            _ => panic!("{} accepted {json}", P::NAME),
        };
        assert!(
            e.contains(want) && e.contains(P::NAME),
            "{json}: the error should name {want:?} and {}: {e}",
            P::NAME
        );
    }
}
