//! A generated `download_config_specs` payload in the v1 format the Statsig server
//! SDKs evaluate: N feature gates with a realistic mix of rules and conditions,
//! about 500 bytes per gate, so `--gates 400` is about 200 KB. The same N always
//! gives the same payload (ids and salts come from a seeded generator).
//!
//! Gate 0, `ftest_gate_0`, has one rule that passes everyone: `check_gate` returns
//! its `enabled` field, which [`flip`] toggles on each published version.

use serde_json::{json, Value};

/// Deterministic 64-bit numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A 22-character id like the ones Statsig gives rules and salts.
    fn id(&mut self) -> String {
        const ALPHABET: &[u8; 62] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut x = self.next();
        let mut y = self.next();
        (0..22)
            .map(|i| {
                let src = if i < 11 { &mut x } else { &mut y };
                let c = ALPHABET[(*src % 62) as usize];
                *src /= 62;
                c as char
            })
            .collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn condition(kind: u64, rng: &mut Rng) -> Value {
    let (ty, field, operator, target) = match kind {
        0 => (
            "user_field",
            json!("email"),
            json!("str_contains_any"),
            json!(["@example.com", "@ftest.dev"]),
        ),
        1 => (
            "environment_field",
            json!("tier"),
            json!("any"),
            json!(["production", "staging"]),
        ),
        2 => (
            "user_field",
            json!("country"),
            json!("any"),
            json!(["US", "CA", "GB", "DE"]),
        ),
        3 => (
            "user_bucket",
            json!(null),
            json!("lt"),
            json!(rng.below(1000)),
        ),
        _ => ("public", json!(null), json!(null), json!(null)),
    };
    let mut additional = json!({});
    if ty == "user_bucket" {
        additional = json!({"salt": rng.id()});
    }
    json!({
        "type": ty,
        "targetValue": target,
        "operator": operator,
        "field": field,
        "additionalValues": additional,
        "idType": "userID",
    })
}

fn rule(gate: usize, index: usize, kind: u64, rng: &mut Rng) -> Value {
    let id = rng.id();
    let pass = if kind == 4 { 100 } else { rng.below(101) };
    json!({
        "name": id,
        "id": id,
        "salt": rng.id(),
        "groupName": format!("group {gate}.{index}"),
        "passPercentage": pass,
        "returnValue": true,
        "idType": "userID",
        "conditions": [condition(kind, rng)],
    })
}

/// Gate `i`: one rule; gate 0's passes everyone, the others' have a random
/// condition and pass percentage.
fn gate(i: usize, rng: &mut Rng) -> Value {
    let kind = if i == 0 { 4 } else { rng.below(5) };
    let rules = vec![rule(i, 0, kind, rng)];
    json!({
        "name": format!("ftest_gate_{i}"),
        "type": "feature_gate",
        "entity": "feature_gate",
        "salt": rng.id(),
        "enabled": true,
        "defaultValue": false,
        "idType": "userID",
        "rules": rules,
    })
}

/// The payload with `gates` gates and update time `time`.
pub fn payload(gates: usize, time: u64) -> Value {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let feature_gates: Vec<Value> = (0..gates).map(|i| gate(i, &mut rng)).collect();
    json!({
        "has_updates": true,
        "time": time,
        "feature_gates": feature_gates,
        "dynamic_configs": [],
        "layer_configs": [],
        "layers": {},
        "sdkInfo": {"source": "ftest spec-upstream"},
    })
}

/// Makes the next version of a payload: `time` set to `lcut`, and the `enabled` field
/// of the first feature gate (v1 list or v2 map form) flipped. Returns the gate's
/// new state, if there was a gate to flip.
pub fn flip(doc: &mut Value, lcut: u64) -> Option<(String, bool)> {
    let obj = doc.as_object_mut()?;
    obj.insert("time".into(), json!(lcut));
    let first = match obj.get_mut("feature_gates")? {
        Value::Array(list) => list.first_mut()?,
        Value::Object(map) => map.values_mut().next()?,
        _ => return None,
    };
    let name = first
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let enabled = first.get_mut("enabled")?;
    let now = !enabled.as_bool()?;
    *enabled = Value::Bool(now);
    Some((name, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_half_a_kilobyte_per_gate_and_deterministic() {
        let p = payload(400, 7);
        let bytes = serde_json::to_vec(&p).unwrap();
        assert!((180_000..230_000).contains(&bytes.len()), "{}", bytes.len());
        assert_eq!(bytes, serde_json::to_vec(&payload(400, 7)).unwrap());
        assert_eq!(p["time"], 7);
        assert_eq!(p["feature_gates"][0]["name"], "ftest_gate_0");
        assert_eq!(p["feature_gates"][0]["rules"][0]["passPercentage"], 100);
    }

    #[test]
    fn flip_toggles_the_first_gate_and_sets_time() {
        let mut p = payload(3, 1);
        assert_eq!(flip(&mut p, 5), Some(("ftest_gate_0".into(), false)));
        assert_eq!(p["time"], 5);
        assert_eq!(flip(&mut p, 6), Some(("ftest_gate_0".into(), true)));
        let mut no_gates = json!({"time": 1});
        assert_eq!(flip(&mut no_gates, 2), None);
        assert_eq!(no_gates["time"], 2);
    }
}
